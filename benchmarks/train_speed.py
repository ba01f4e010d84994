"""Training speed and memory: `iagbench train` plain (accelerate) against DeepSpeed ZeRO-2, same job.

    python benchmarks/train_speed.py --steps 6 --batch-size 4                      # CPU dry run (tiny-llama)
    python benchmarks/train_speed.py --reader-args model=llama-7b-random,dtype=bf16,lora_rank=8 \\
        --steps 30 --batch-size 8 --setups plain,zero2,zero2-checkpointing       # the GPU check of issue 7

Each setup trains the reader's peft LoRA (the LoRA baseline of the paper's tables) on the `sample`
dataset for `--steps` optimizer steps, logging every step, in its own subprocess and output
folder: `plain` is `iagbench train` alone (accelerate; bf16 mixed precision on CUDA), `zero2`
runs it under `deepspeed --num_gpus 1` with configs/deepspeed/zero2.json, and
`zero2-checkpointing` adds `--gradient-checkpointing`. The table shows examples/s over the steps
after the first `--skip` (start-up and the first step's allocations left out), the peak GPU
memory the log records, the final loss (the same job must reach about the same loss) and the
wall time of the whole command (model build and checkpoint saving included).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]
ZERO2 = REPO / "configs" / "deepspeed" / "zero2.json"
SETUPS = ("plain", "zero2", "zero2-checkpointing")


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def program(name: str) -> str:
    """A console script: next to this Python's (a virtual environment), else on PATH (a --target install)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise SystemExit(f"train_speed.py: '{name}' is neither next to {sys.executable} nor on PATH")
    return found


def command(setup: str, args: argparse.Namespace, output: Path) -> list[str]:
    train = [
        "train", "--dataset", "sample", "--split", "train", "--reader", "causal-lm", "--reader-args", args.reader_args,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", "1e-4", "--log-every", "1",
        "--save-every", str(args.steps), "--output", str(output), "--no-progress",
    ]  # fmt: skip
    if setup == "plain":
        return [program("iagbench"), *train]
    extra = ["--deepspeed", str(ZERO2), *(["--gradient-checkpointing"] if setup == "zero2-checkpointing" else [])]
    launcher = [program("deepspeed"), "--num_gpus", "1", "--master_port", str(free_port())]
    return [*launcher, program("iagbench"), *train, *extra]


def measure(setup: str, args: argparse.Namespace, folder: Path) -> list:
    output = folder / setup
    started = time.perf_counter()
    done = subprocess.run(command(setup, args, output), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        print(f"{setup}: exit {done.returncode}\n" + "\n".join(tail), flush=True)
        return [setup, "failed", "", "", "", round(wall, 1)]
    log = [json.loads(line) for line in (output / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    steady = [r["examples_per_s"] for r in log if r.get("step", 0) > args.skip and r.get("examples_per_s")]
    peak = max((r["gpu_peak_gib"] for r in log if "gpu_peak_gib" in r), default=None)
    row = [setup, round(mean(steady), 2) if steady else "", round(args.batch_size / mean(steady), 3) if steady else "",
           peak if peak is not None else "-", round(log[-1]["loss"], 4), round(wall, 1)]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reader-args", default="model=tiny-llama,lora_rank=2", help="causal-lm options (a peft LoRA)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--skip", type=int, default=1, help="steps left out of the mean at the start")
    parser.add_argument("--setups", default="plain,zero2", help=f"comma-separated: {', '.join(SETUPS)}")
    parser.add_argument("--keep", type=Path, help="keep the training folders here (default: a temporary folder)")
    args = parser.parse_args()
    setups = args.setups.split(",")
    if set(setups) - set(SETUPS):
        parser.error(f"--setups: unknown {sorted(set(setups) - set(SETUPS))}; expected some of {', '.join(SETUPS)}")
    if args.steps <= args.skip:
        parser.error(f"--steps {args.steps} must exceed --skip {args.skip}")

    import torch

    where = (
        torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} torch threads)"
    )
    print(f"causal-lm {args.reader_args}; sample train; {args.steps} steps of {args.batch_size} examples; on {where}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="iagbench-train-speed-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        rows = [measure(setup, args, folder) for setup in setups]
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    headers = ["setup", f"examples/s (steps {args.skip + 1}+)", "s/step", "peak GPU GiB", "final loss", "wall s"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
