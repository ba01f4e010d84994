"""Implicit imagination on WebQuestions: closed-book vs peft LoRA vs HyperLoRA with smollm2-135m.

    python benchmarks/webq_hyperlora.py --data-dir ../shared/data [--out runs/bench-webq] [--steps 300]

Trains on the 3,778 WebQuestions training questions (the same steps, batch and learning rate for
both trained methods, and the bare `qa` prompt), evaluates on the 2,032 test questions, and prints
one table: em, f1, subspan_em, trainable parameters and training time on this machine. Two
closed-book rows: the default 5-shot `short-answer` prompt (the strong baseline) and the `qa`
prompt the trained readers use. Every step goes through
the `iagbench` command line, so each row can be rerun (and resumes) on its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tabulate import tabulate

IAGBENCH = str(Path(sys.executable).parent / "iagbench")


def iagbench(*args: str) -> None:
    print("$ iagbench " + " ".join(args), flush=True)
    subprocess.run([IAGBENCH, *args], check=True)


def trained_parameters(train_out: Path) -> int:
    """Numbers in the saved trainable weights of the latest checkpoint (buffers such as the whitening included)."""
    from safetensors import safe_open

    folder = train_out / "checkpoints" / (train_out / "checkpoints" / "latest").read_text().strip()
    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as weights:
            total += sum(_numel(weights.get_slice(key).get_shape()) for key in weights.keys())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-webq"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=None, help="first N test questions (default: all 2,032)")
    args = parser.parse_args()

    data = ["--dataset", "webq", "--data-dir", args.data_dir]
    reader = "prompt=qa"
    hyper = f"rank={args.rank},hidden=64,feature_dims=255,encoder=minilm"
    train = [
        "--split",
        "train",
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--warmup-steps",
        str(args.steps // 10),
        "--save-every",
        str(max(args.steps // 3, 1)),
        "--no-progress",
    ]
    limit = ["--limit", str(args.test_limit)] if args.test_limit else []
    methods = {
        "closed-book (5-shot prompt)": (None, ["--imaginer", "none"]),
        "closed-book": (None, ["--imaginer", "none", "--reader-args", reader]),
        "peft LoRA": (
            ["--imaginer", "none", "--reader-args", f"{reader},lora_rank={args.rank}"],
            ["--imaginer", "none", "--reader-args", f"{reader},lora_rank={args.rank},checkpoint={{out}}"],
        ),
        "HyperLoRA": (
            ["--imaginer", "hyperlora", "--imaginer-args", hyper, "--reader-args", reader],
            ["--imaginer", "hyperlora", "--imaginer-args", f"{hyper},checkpoint={{out}}", "--reader-args", reader],
        ),
    }
    rows = []
    for name, (train_args, run_args) in methods.items():
        slug = name.lower().replace(" (5-shot prompt)", "-5-shot").replace(" ", "-")
        train_out = args.out / f"train-{slug}"
        seconds, parameters = 0.0, 0
        if train_args is not None:
            started = time.perf_counter()
            iagbench("train", *data, *train, *train_args, "--reader", "smollm2-135m", "--output", str(train_out))
            seconds = time.perf_counter() - started
            parameters = trained_parameters(train_out)
        run_out = args.out / f"run-{slug}"
        iagbench(
            "run",
            *data,
            "--split",
            "test",
            *limit,
            "--reader",
            "smollm2-135m",
            "--batch-size",
            "64",
            "--output",
            str(run_out),
            "--no-progress",
            *[a.replace("{out}", str(train_out)) for a in run_args],
        )
        metrics = json.loads((run_out / "results.json").read_text())["metrics"]
        rows.append(
            [
                name,
                round(metrics["em"], 2),
                round(metrics["f1"], 2),
                round(metrics["subspan_em"], 2),
                parameters,
                round(seconds),
            ]
        )
    print(
        f"\nsmollm2-135m on WebQuestions test; training: {args.steps} steps x {args.batch_size}, lr {args.lr}, rank {args.rank}"
    )
    print(
        tabulate(rows, headers=["method", "em", "f1", "subspan_em", "trainable params", "train s"], tablefmt="github")
    )


if __name__ == "__main__":
    main()
