"""Accuracy against cost, one command (issue 17, item 5): SmolLM2-135M on the first 200 nq-oracle questions.

    python benchmarks/pareto_smollm2.py --data-dir ../shared/data [--out runs/bench-pareto]

Rows, each an `iagbench run` of `smollm2-135m` over the same questions (the nq-oracle file read as
`fid-json`, so the gold passages are not used by any row), in a subprocess with its folder under --out
(a rerun skips what is finished):

- closed book (the default 5-shot prompt);
- bm25 k=1 and k=5, dense (all-MiniLM-L6-v2) k=1, over the nq-oracle gold passages + the wiki samples;
- hyperlora: a HyperLoRA trained here (--steps on the NQ training questions, i.e. DPR's held-out NQ
  dev, bare `qa` prompt), or --hyperlora-checkpoint DIR;
- generate: GenRead, SmolLM2 writes a background document (its default options), the reader reads it;
- imagine: SmolLM2 + LoRA trained here on `iagbench compress` pairs (bm25 top-3 of the first
  --compress-questions NQ training questions, compressed to 48 tokens), or --imagine-checkpoint DIR.

Then `iagbench report` of all rows (metrics with bootstrap half-widths, the cost columns each run
recorded) and two Pareto plots (em against GFLOP/q and against seconds/q) under --out. Training
time is not in the per-question cost; the table after the report gives it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imcqa_tiny import iagbench, stage  # noqa: E402
from rag_nq_oracle import build_corpus  # noqa: E402

READER = "smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pareto"))
    parser.add_argument("--questions", type=int, default=200, help="the first N nq-oracle questions")
    parser.add_argument("--steps", type=int, default=120, help="HyperLoRA training steps (x 8 questions)")
    parser.add_argument("--hyperlora-checkpoint", type=Path, help="use this trained HyperLoRA instead of training one")
    parser.add_argument("--compress-questions", type=int, default=64)
    parser.add_argument("--imagine-steps", type=int, default=40)
    parser.add_argument("--imagine-checkpoint", type=Path, help="use this trained imagine model instead")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "nq-oracle-plus-wiki.tsv"
    if not corpus.exists():
        build_corpus(args.data_dir, corpus)
    data_dir = str(args.data_dir.resolve())
    nq_train = ["--dataset", "nq", "--data-dir", data_dir, "--split", "train"]
    times = out / "stage_seconds.json"
    hyper = "rank=8,hidden=64,feature_dims=255,encoder=minilm"
    imagine = f"model={READER},lora_rank=8,max_new_tokens=48"
    bm25 = f"corpus={corpus}"
    seconds: dict[str, float] = {}

    hyperlora = args.hyperlora_checkpoint or out / "train-hyperlora"
    if args.hyperlora_checkpoint is None:
        seconds["hyperlora"] = stage(
            times, "hyperlora", "train", *nq_train, "--imaginer", "hyperlora", "--imaginer-args", hyper,
            "--reader", READER, "--reader-args", "prompt=qa", "--steps", str(args.steps), "--batch-size", "8",
            "--lr", "3e-4", "--warmup-steps", str(args.steps // 10), "--log-every", "10", "--no-progress",
            "--output", str(hyperlora),
        )  # fmt: skip
    imagined = args.imagine_checkpoint or out / "train-imagine"
    if args.imagine_checkpoint is None:
        pairs = out / "pairs.jsonl"
        seconds["imagine"] = stage(
            times, "compress", "compress", *nq_train, "--limit", str(args.compress_questions), "--imaginer", "bm25",
            "--imaginer-args", f"{bm25},k=3", "--model", READER, "--granularity", "sentence", "--target-tokens", "48",
            "--output", str(pairs), "--no-progress",
        ) + stage(
            times, "imagine", "train", *nq_train, "--limit", str(args.compress_questions), "--imaginer", "imagine",
            "--imaginer-args", f"{imagine},pairs={pairs}", "--reader", READER, "--steps", str(args.imagine_steps),
            "--batch-size", "8", "--lr", "1e-3", "--log-every", "10", "--no-progress", "--output", str(imagined),
        )  # fmt: skip

    rows = {
        "closed book": ["--imaginer", "none"],
        "bm25 k=1": ["--imaginer", "bm25", "--imaginer-args", f"{bm25},k=1"],
        "bm25 k=5": ["--imaginer", "bm25", "--imaginer-args", f"{bm25},k=5"],
        "dense k=1": ["--imaginer", "dense", "--imaginer-args", f"{bm25},k=1"],
        "hyperlora": ["--imaginer", "hyperlora", "--imaginer-args", f"{hyper},checkpoint={hyperlora}",
                      "--reader-args", "prompt=qa"],
        "generate": ["--imaginer", "generate"],
        "imagine": ["--imaginer", "imagine", "--imaginer-args", f"{imagine},checkpoint={imagined}"],
    }  # fmt: skip
    oracle = args.data_dir.resolve() / "nq-oracle" / "nq-open-oracle.jsonl.gz"
    folders = []
    for number, (name, options) in enumerate(rows.items()):
        folders.append(out / f"run-{number}-{name.replace(' ', '-').replace('=', '')}")
        iagbench(
            "run", "--dataset", "fid-json", "--dataset-args", f"path={oracle}", "--split", "test", "--limit",
            str(args.questions), "--reader", READER, *options, "--output", str(folders[-1]), "--no-progress",
        )  # fmt: skip
    labels = ",".join(rows)
    report = ["report", *map(str, folders), "--label", labels, "--ci", "--metrics", "em,subspan_em"]
    iagbench(*report, "--pareto", str(out / "pareto-gflop.png"))
    iagbench(*report, "--format", "csv", "--pareto", str(out / "pareto-seconds.png"), "--pareto-cost", "seconds")
    print("\ntraining time (not in the per-question cost)")
    print(tabulate(sorted(seconds.items()), headers=["row", "train s"], tablefmt="github"))


if __name__ == "__main__":
    main()
