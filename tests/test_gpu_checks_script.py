"""scripts/gpu_checks.sh --tiny: the GPU checks' scripts, at tiny shapes on the CPU, so they stay runnable for the
session that gets a GPU (its real-shape commands differ only in sizes, dtype and device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEEPSPEED = Path(sys.executable).parent / "deepspeed"


@pytest.mark.skipif(not DEEPSPEED.is_file(), reason="deepspeed is not installed")
def test_gpu_checks_script_runs_every_check_at_tiny_shapes(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_checks.sh"), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("exit 0 after") == 4, summary
    reader = (tmp_path / "reader.txt").read_text()
    assert "plain generate loop (batch 16, 8 new tokens)" in reader and "compiled (batch 32)" in reader
    table = [line for line in reader.splitlines() if line.startswith("| fp32")]
    assert len(table) == 7 and all("|                  100 |" in line for line in table)  # same answers everywhere
    assert "per-example LoRA, batched (iagbench)" in (tmp_path / "prefill.txt").read_text()
    train = (tmp_path / "train.txt").read_text()
    assert all(f"| {setup} " in train for setup in ("plain", "zero2", "zero2-checkpointing")) and "failed" not in train
    assert "torch" in (tmp_path / "env.txt").read_text()
    bad = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_checks.sh"), "readers"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "unknown argument 'readers'" in bad.stderr
