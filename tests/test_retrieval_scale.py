"""benchmarks/retrieval_scale.py --quick: a 20k-passage synthetic corpus, bm25 and dense (hash stand-in) built,
measured and searched in child processes (about 15-20 s on 2 cores; MiniLM's rate skipped here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "retrieval_scale.py"


def test_quick_run_reports_every_index(tmp_path):
    out = tmp_path / "results.json"
    work = tmp_path / "work"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--questions", "50", "--minilm-sample", "0", "--faiss", "no"]
        + ["--work-dir", str(work), "--json", str(out), "--timeout", "120"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "bm25 (bm25s, mmap)" in done.stdout and "dense, hash stand-in 384-d" in done.stdout
    steps = json.loads(out.read_text())["sizes"]["20000"]["steps"]
    for step in ("store", "build-bm25", "query-bm25", "build-dense", "query-dense"):
        assert steps[step]["peak_rss_mib"] > 0 and steps[step]["wall_s"] > 0
    assert steps["build-bm25"]["status"] == "built" and steps["query-bm25"]["status"] == "reused"
    assert steps["query-bm25"]["queries_per_s"] > 0 and steps["query-dense"]["queries_per_s"] > 0
    # the corpus is deterministic: same ids, same text
    lines = (work / "synthetic-20000.tsv").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20001 and lines[1].startswith("s1\t")
    ids = [line.split("\t", 1)[0] for line in lines[1:]]
    assert len(set(ids)) == len(ids)
