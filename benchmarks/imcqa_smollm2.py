"""ImcQA on a real model, in one command (issue 14, item 4): SmolLM2-135M as teacher and student.

    python benchmarks/imcqa_smollm2.py --data-dir ../shared/data [--out runs/bench-imcqa-smollm2]

Data: the 2,655 nq-oracle questions (NQ-open test questions, each with its one gold Wikipedia
passage), split by --seed into disjoint train and test parts (2,155 / 500 by default), written as
FiD-style JSON lines under --out. These are NQ *test* questions used for training: the numbers are
not comparable with NQ-open results.

Rows, all scored on the same held-out questions (every step through the `iagbench` command line, in
a subprocess, with its folder under --out: a rerun skips finished runs and resumes trainings):

- closed book (the default 5-shot `short-answer` prompt);
- bm25 RAG, k=1, over the nq-oracle gold passages + the wiki samples (default prompt);
- the teacher: the gold passage, read with the default prompt (what the students are distilled from;
  its shared few-shot prefix is encoded once per batch);
- peft LoRA (`qa` prompt, cross-entropy);
- HyperLoRA (`qa` prompt, cross-entropy only);
- ImcQA-0: HyperLoRA distilled from the teacher (KL at --temperature weighted --alpha, plus CE);
- ImcQA-1: imagine + HyperLoRA, distilled: the imagine model (SmolLM2 + LoRA) is first trained on
  `iagbench compress` pairs (question -> the gold passage compressed to --target-tokens with
  SmolLM2, sentence granularity) of the first --compress-questions training questions, then frozen;
  the student reads its imagined document.

Each row has em, f1, subspan_em, the paired bootstrap 95% interval of its difference to HyperLoRA
and McNemar's exact p on em (`iagbench compare`'s statistics), the training seconds (the
first time each ran to the end) and the per-question cost each run recorded (s/q, tokens, GFLOP). Nothing is written outside --out; data are read from --data-dir.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
import time
from pathlib import Path

from tabulate import tabulate

from iagbench.analysis.compare import compare
from iagbench.analysis.cost import cost_columns

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imcqa_tiny import iagbench, loss_curve, stage  # noqa: E402
from rag_nq_oracle import build_corpus  # noqa: E402
from webq_hyperlora import trained_parameters  # noqa: E402

READER = "smollm2-135m"


def split(data_dir: Path, out: Path, *, test: int, seed: int) -> tuple[Path, Path]:
    """Write train.jsonl and test.jsonl (file order within each part): the nq-oracle questions with their gold passage."""
    with gzip.open(data_dir / "nq-oracle" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    parts = {"test": sorted(order[:test]), "train": sorted(order[test:])}
    paths = {}
    for name, numbers in parts.items():
        paths[name] = out / f"{name}.jsonl"
        tmp = paths[name].with_name(f"{name}.jsonl.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            for number in numbers:
                record = records[number]
                gold = [{"title": c["title"], "text": c["text"]} for c in record["ctxs"] if c.get("isgold")]
                row = {"id": f"nq-oracle-{number}", "question": record["question"], "answers": record["answers"]}
                handle.write(json.dumps({**row, "ctxs": gold}, ensure_ascii=False) + "\n")
        os.replace(tmp, paths[name])
    return paths["train"], paths["test"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-imcqa-smollm2"))
    parser.add_argument("--seed", type=int, default=0, help="of the train/test split")
    parser.add_argument("--test-questions", type=int, default=500)
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps of every trained row")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.4, help="weight of the KL term (the reference's 0.4)")
    parser.add_argument("--temperature", type=float, default=3.0, help="the reference's T0 3.0")
    parser.add_argument("--compress-questions", type=int, default=160, help="training questions compressed")
    parser.add_argument("--target-tokens", type=int, default=48, help="of a compressed context")
    parser.add_argument("--imagine-steps", type=int, default=40)
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    train_file, test_file = split(args.data_dir, out, test=args.test_questions, seed=args.seed)
    corpus = out / "nq-oracle-plus-wiki.tsv"
    if not corpus.exists():
        build_corpus(args.data_dir, corpus)
    train_data = ["--dataset", "fid-json", "--dataset-args", f"path={train_file}", "--split", "train"]
    test_data = ["--dataset", "fid-json", "--dataset-args", f"path={test_file}", "--split", "test"]
    times = out / "stage_seconds.json"
    train = [
        *train_data, "--reader", READER, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--lr", str(args.lr), "--warmup-steps", str(args.steps // 10), "--save-every", str(max(args.steps // 3, 1)),
        "--log-every", "10", "--no-progress",
    ]  # fmt: skip
    distil = [
        "--teacher-imaginer", "given", "--teacher-reader", READER,
        "--alpha", str(args.alpha), "--temperature", str(args.temperature),
    ]  # fmt: skip
    hyper = f"rank={args.rank},hidden=64,feature_dims=255,encoder=minilm"
    folders = {name: out / f"train-{name}" for name in ("lora", "hyperlora", "imcqa-0", "imagine", "imcqa-1")}
    pairs = out / "pairs.jsonl"
    imagine = f"model={READER},lora_rank=8,max_new_tokens={args.target_tokens}"
    frozen_imagine = (
        f"imagine.{imagine.replace(',', ',imagine.')},imagine.train=false,imagine.checkpoint={folders['imagine']}"
    )
    student_one = f"{frozen_imagine},hyperlora.{hyper.replace(',', ',hyperlora.')}"

    seconds = {
        "lora": stage(
            times, "lora", "train", *train, "--imaginer", "none", "--reader-args", f"prompt=qa,lora_rank={args.rank}",
            "--output", str(folders["lora"]),
        ),
        "hyperlora": stage(
            times, "hyperlora", "train", *train, "--imaginer", "hyperlora", "--imaginer-args", hyper,
            "--reader-args", "prompt=qa", "--output", str(folders["hyperlora"]),
        ),
        "imcqa-0": stage(
            times, "imcqa-0", "train", *train, "--imaginer", "hyperlora", "--imaginer-args", hyper,
            "--reader-args", "prompt=qa", *distil, "--output", str(folders["imcqa-0"]),
        ),
        "compress": stage(
            times, "compress", "compress", *train_data, "--limit", str(args.compress_questions), "--imaginer", "given",
            "--model", READER, "--granularity", "sentence", "--target-tokens", str(args.target_tokens),
            "--output", str(pairs), "--no-progress",
        ),
        "imagine": stage(
            times, "imagine", "train", *train_data, "--limit", str(args.compress_questions), "--imaginer", "imagine",
            "--imaginer-args", f"{imagine},pairs={pairs}", "--reader", READER, "--steps", str(args.imagine_steps),
            "--batch-size", str(args.batch_size), "--lr", "1e-3", "--log-every", "10", "--no-progress",
            "--output", str(folders["imagine"]),
        ),
        "imcqa-1": stage(
            times, "imcqa-1", "train", *train, "--imaginer", "imagine+hyperlora", "--imaginer-args", student_one,
            "--reader-args", "prompt=qa", *distil, "--output", str(folders["imcqa-1"]),
        ),
    }  # fmt: skip
    seconds["imcqa-1 (with imagine)"] = seconds["compress"] + seconds["imagine"] + seconds["imcqa-1"]

    rows = {
        "closed book (5-shot prompt)": (None, ["--imaginer", "none"]),
        "bm25 RAG, k=1 (default prompt)": (None, ["--imaginer", "bm25", "--imaginer-args", f"corpus={corpus},k=1"]),
        "teacher: gold passage (5-shot prompt)": (None, ["--imaginer", "given"]),
        "peft LoRA": ("lora", ["--imaginer", "none", "--reader-args", f"prompt=qa,lora_rank={args.rank},checkpoint={folders['lora']}"]),
        "HyperLoRA (CE)": ("hyperlora", ["--imaginer", "hyperlora", "--imaginer-args", f"{hyper},checkpoint={folders['hyperlora']}", "--reader-args", "prompt=qa"]),
        "ImcQA-0 (HyperLoRA, distilled)": ("imcqa-0", ["--imaginer", "hyperlora", "--imaginer-args", f"{hyper},checkpoint={folders['imcqa-0']}", "--reader-args", "prompt=qa"]),
        "ImcQA-1 (imagine + HyperLoRA, distilled)": ("imcqa-1 (with imagine)", ["--imaginer", "imagine+hyperlora", "--imaginer-args",
            f"{frozen_imagine},hyperlora.{hyper.replace(',', ',hyperlora.')},hyperlora.checkpoint={folders['imcqa-1']}", "--reader-args", "prompt=qa"]),
    }  # fmt: skip
    run_folders = {}
    for number, (name, (_, options)) in enumerate(rows.items()):
        run_folders[name] = out / f"run-{number}"
        iagbench("run", *test_data, "--reader", READER, *options, "--output", str(run_folders[name]), "--no-progress")
    print_tables(args, rows, run_folders, seconds, folders, time.perf_counter() - started)


def print_tables(args, rows, run_folders, seconds, folders, total: float) -> None:
    """The scores table (differences to HyperLoRA with paired intervals and McNemar) and what each training learned."""
    baseline = run_folders["HyperLoRA (CE)"]
    results = [json.loads((run_folders[name] / "results.json").read_text()) for name in rows]
    cost_headers, cost_rows = cost_columns(results)
    table = []
    for (name, (trained, _)), result, cost in zip(rows.items(), results, cost_rows):
        m = result["metrics"]
        versus = ["", "", ""] if run_folders[name] == baseline else interval_and_p(baseline, run_folders[name])
        parts = ("imcqa-1", "imagine") if trained == "imcqa-1 (with imagine)" else (trained,)  # hypernetwork + LoRA
        parameters = sum(trained_parameters(folders[part]) for part in parts if part in folders)
        train_s = round(seconds[trained]) if trained else ""
        table.append([name, *(round(m[k], 1) for k in ("em", "f1", "subspan_em")), *versus,
                      parameters, train_s, *cost])  # fmt: skip
    headers = ["row", "em", "f1", "subspan_em", "em - HyperLoRA [95% CI]", "subspan_em - HyperLoRA [95% CI]",
               "McNemar p (em)", "trained params", "train s", *cost_headers]  # fmt: skip
    print(
        f"\nImcQA with {READER} on nq-oracle (split seed {args.seed}: train / {args.test_questions} test); "
        f"training {args.steps} steps x {args.batch_size}, lr {args.lr}, rank {args.rank}; "
        f"KD alpha {args.alpha}, T {args.temperature}; total {total:.0f} s"
    )
    print(tabulate(table, headers=headers, tablefmt="github"))
    curves = [[name, *loss_curve(folders[name])] for name in ("lora", "hyperlora", "imcqa-0", "imagine", "imcqa-1")]
    print("\ntraining: first and last logged values (every 10 steps)")
    print(tabulate(curves, headers=["training", "steps", "loss", "kd", "ce"], tablefmt="github"))


def interval_and_p(baseline: Path, other: Path) -> list[str]:
    """em and subspan_em of ``other`` minus the baseline's with the paired bootstrap interval; McNemar's p on em."""
    report = compare(baseline, other, metrics=["em", "subspan_em"])
    cells = {row["metric"]: f"{row['diff']:+.1f} [{row['low']:+.1f}, {row['high']:+.1f}]" for row in report["metrics"]}
    return [cells["em"], cells["subspan_em"], f"{report['mcnemar']['p_value']:.2g}"]


if __name__ == "__main__":
    main()
