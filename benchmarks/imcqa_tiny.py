"""ImcQA end to end, tiny, on real NQ questions, in one command (issue 5).

    python benchmarks/imcqa_tiny.py --data-dir ../shared/data [--out runs/bench-imcqa-tiny]

Stages (each through the `iagbench` command line in a subprocess, each folder under --out, so any
stage can be rerun on its own and an interrupted one resumes; a finished one is skipped):

0. corpus: the nq-oracle gold passages + the wiki samples as a DPR TSV (`rag_nq_oracle.build_corpus`);
1. teacher: `iagbench train` a FiD reader (`fid-tiny`, fully trained) on the first --train-questions
   NQ training questions (`nq` train = DPR's held-out NQ dev) with the top-k bm25 passages;
2. compress: `iagbench compress` the top-k bm25 passages of the first --compress-questions training
   questions into compressed contexts (--compress-model, passage granularity: one LM forward per
   passage, ~64 tokens kept);
3. imagine: `iagbench train` the `imagine` model (--imagine-model, a peft LoRA) on those pairs;
4. student: `iagbench train` imagine+hyperlora (imagine frozen, the hypernetwork trained) with the
   teacher's reader frozen, distilled from the teacher (bm25 top-k + the trained FiD) with
   --alpha and --temperature;
5. score `iagbench run` on the first --test-questions NQ test questions: closed-book (the student's
   reader, the trained FiD, without any context and without the student's training), the FiD teacher
   with k passages, imagine only, and the ImcQA student; one table with em, f1, subspan_em and the
   training time of each stage.

The FiD models are tiny and random-initialised (`fid-tiny`: a 2-layer T5 of width 32 over bytes),
trained for minutes on 2 CPU cores: their answer scores are near zero, as expected; a second table
shows what each training stage learned (first and last logged loss; for the student also the KD
and cross-entropy terms). The imagine model is a real pretrained LM (SmolLM2-135M-Instruct) with a
LoRA trained on the compressed pairs, so the imagined contexts are text. The point is that the
whole pipeline (retrieval, teacher training, compression, imagination training, distillation,
evaluation) runs on real data in one command, under 15 minutes on this CPU. Nothing is written
outside --out; the data are read from --data-dir.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

from iagbench.training.folder import read_log

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rag_nq_oracle import build_corpus  # noqa: E402

IAGBENCH = str(Path(sys.executable).parent / "iagbench")


def iagbench(*args: str) -> float:
    """Run one `iagbench` command; its wall time in seconds."""
    print("$ iagbench " + " ".join(args), flush=True)
    started = time.perf_counter()
    subprocess.run([IAGBENCH, *args], check=True)
    return time.perf_counter() - started


def stage(times: Path, name: str, *args: str) -> float:
    """A training stage's time: as measured the first time it ran to the end (a rerun skips or resumes it)."""
    recorded = json.loads(times.read_text()) if times.exists() else {}
    seconds = iagbench(*args)
    if name not in recorded:
        recorded[name] = round(seconds, 1)
        times.write_text(json.dumps(recorded, indent=2))
    return recorded[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-imcqa-tiny"))
    parser.add_argument("--train-questions", type=int, default=300, help="NQ training questions (teacher, student)")
    parser.add_argument("--compress-questions", type=int, default=32, help="of those, compressed and imagined")
    parser.add_argument("--test-questions", type=int, default=100)
    parser.add_argument("--k", type=int, default=3, help="bm25 passages of the teacher")
    parser.add_argument("--teacher-steps", type=int, default=120)
    parser.add_argument(
        "--teacher-lr", type=float, default=1e-2, help="the random tiny T5 learns little at 1e-3 in minutes"
    )
    parser.add_argument("--imagine-steps", type=int, default=30)
    parser.add_argument("--student-steps", type=int, default=50)
    parser.add_argument("--student-lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compress-model", default="smollm2-135m")
    parser.add_argument("--imagine-model", default="smollm2-135m", help="a causal LM (peft LoRA trained)")
    parser.add_argument("--alpha", type=float, default=0.4)
    parser.add_argument("--temperature", type=float, default=3.0)
    args = parser.parse_args()

    out = args.out.resolve()
    total_started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "nq-oracle-plus-wiki.tsv"
    if not corpus.exists():
        print(f"corpus: {build_corpus(args.data_dir, corpus)} passages ({corpus})", flush=True)
    data = ["--dataset", "nq", "--data-dir", str(args.data_dir.resolve())]
    train_data = [*data, "--split", "train", "--limit", str(args.train_questions)]
    common = ["--batch-size", str(args.batch_size), "--log-every", "10", "--no-progress"]
    bm25 = f"corpus={corpus},k={args.k}"
    fid = "text_maxlength=320,max_new_tokens=16"
    teacher, pairs, imagined, student = (
        out / "train-teacher",
        out / "pairs.jsonl",
        out / "train-imagine",
        out / "train-student",
    )
    teacher_reader = f"{fid},train=none,checkpoint={teacher}"
    imagine = f"model={args.imagine_model},lora_rank=8,max_new_tokens=32"
    hyper = "model=fid-tiny,rank=4,hidden=64,feature_dims=32,encoder=hashing"
    seconds: dict[str, float] = {}
    times = out / "stage_seconds.json"  # each stage's time when it first ran to the end

    seconds["teacher"] = stage(
        times, "teacher", "train", *train_data, "--imaginer", "bm25", "--imaginer-args", bm25, "--reader", "fid-tiny", "--reader-args",
        f"{fid},train=full", "--steps", str(args.teacher_steps), "--lr", str(args.teacher_lr), "--warmup-steps", "10", *common,
        "--output", str(teacher),
    )  # fmt: skip
    seconds["compress"] = stage(
        times, "compress", "compress", *data, "--split", "train", "--limit", str(args.compress_questions), "--imaginer", "bm25",
        "--imaginer-args", bm25, "--model", args.compress_model, "--granularity", "passage", "--target-tokens", "64",
        "--output", str(pairs), "--no-progress",
    )  # fmt: skip
    seconds["imagine"] = stage(
        times, "imagine", "train", *data, "--split", "train", "--limit", str(args.compress_questions), "--imaginer", "imagine",
        "--imaginer-args", f"{imagine},pairs={pairs}", "--reader", "fid-tiny", "--reader-args", "train=none",
        "--steps", str(args.imagine_steps), "--lr", "1e-3", *common, "--output", str(imagined),
    )  # fmt: skip
    frozen_imagine = f"imagine.{imagine.replace(',', ',imagine.')},imagine.train=false,imagine.checkpoint={imagined}"
    student_imaginer = f"{frozen_imagine},hyperlora.{hyper.replace(',', ',hyperlora.')}"
    seconds["student"] = stage(
        times, "student", "train", *train_data, "--imaginer", "imagine+hyperlora", "--imaginer-args", student_imaginer, "--reader", "fid-tiny",
        "--reader-args", teacher_reader, "--teacher-imaginer", "bm25", "--teacher-imaginer-args", bm25,
        "--teacher-reader", "fid-tiny", "--teacher-reader-args", teacher_reader, "--alpha", str(args.alpha),
        "--temperature", str(args.temperature), "--steps", str(args.student_steps), "--lr", str(args.student_lr), *common,
        "--output", str(student),
    )  # fmt: skip

    rows = []
    settings = [
        ("closed-book (student reader, untrained student)", "none", "", None),
        (f"FiD teacher, bm25 top-{args.k}", "bm25", bm25, "teacher"),
        ("imagine only", "imagine", f"{imagine},checkpoint={imagined}", "imagine"),
        ("ImcQA student (imagine+hyperlora, distilled)", "imagine+hyperlora",
         f"{frozen_imagine},hyperlora.{hyper.replace(',', ',hyperlora.')},hyperlora.checkpoint={student}", "student"),
    ]  # fmt: skip
    for number, (name, imaginer, options, trained) in enumerate(settings):
        run_out = out / f"run-{number}-{imaginer.replace('+', '-')}"
        score_s = iagbench(
            "run", *data, "--split", "test", "--limit", str(args.test_questions), "--imaginer", imaginer, "--imaginer-args",
            options, "--reader", "fid-tiny", "--reader-args", teacher_reader, "--metrics", "em,f1,subspan_em",
            "--batch-size", "16", "--output", str(run_out), "--no-progress",
        )  # fmt: skip
        metrics = json.loads((run_out / "results.json").read_text())["metrics"]
        train_s = round(seconds[trained]) if trained else 0
        rows.append([name, round(metrics["em"], 1), round(metrics["f1"], 1), round(metrics["subspan_em"], 1), train_s,
                     round(score_s)])  # fmt: skip
    total = time.perf_counter() - total_started
    print(
        f"\nImcQA tiny on NQ: {args.train_questions} training questions ({args.compress_questions} compressed with "
        f"{args.compress_model}, {round(seconds['compress'])} s), {args.test_questions} test questions; total {total:.0f} s"
    )
    print(tabulate(rows, headers=["row", "em", "f1", "subspan_em", "train s", "score s"], tablefmt="github"))
    curves = [
        [name, *loss_curve(folder)]
        for name, folder in (("teacher", teacher), ("imagine", imagined), ("student", student))
    ]
    print("\ntraining: first and last logged values (every 10 steps)")
    print(tabulate(curves, headers=["stage", "steps", "loss", "kd", "ce"], tablefmt="github"))


def loss_curve(train_out: Path) -> list[str]:
    """Steps, then 'first -> last' of the logged loss (and kd, ce where logged) of a training folder."""
    records = [record for record in read_log(train_out) if "loss" in record]
    first, last = records[0], records[-1]
    values = [f"{first[key]:.3f} -> {last[key]:.3f}" if key in first else "" for key in ("loss", "kd", "ce")]
    return [str(last["step"]), *values]


if __name__ == "__main__":
    main()
