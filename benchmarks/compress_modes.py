"""`iagbench compress` modes side by side on real questions: tokens kept, gold answers kept, seconds.

    python benchmarks/compress_modes.py --data-dir ../shared/data --out /tmp/bench-compress [--questions 100 --k 5]

Questions: the first --questions nq-oracle questions (NQ-open test questions with a gold passage). Passages: the
bm25 top --k of each over the nq-oracle gold passages plus the `wiki/` samples (the corpus of rag_nq_oracle.py,
written under --out), so some questions get their gold passage and some do not. Each mode compresses them to
--target-tokens with SmolLM2-135M as the scoring model, through `iagbench compress` (pairs files under --out; a
rerun skips what is written):

- `none`, sentence granularity (the default): the question-aware coarse ranking alone;
- `tokens`, passage granularity: the coarse selection to target + 100 tokens, then the target's best tokens by
  contrastive log-probability;
- `llmlingua`, passage granularity: the port of LLMLingua 0.2.2's compress_prompt with the ImcQA reference's
  arguments (docs/fidelity.md).

Columns (means over the questions): SmolLM2 tokens after the coarse selection (the pruning modes) and of the
compressed context, DPR has_answer (a normalised gold answer occurs in the text) of the k passages and of the
compressed context, and the wall seconds of the whole `compress` command per question (model load included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tabulate import tabulate

from iagbench_plugins.metrics.dpr_tokenizer import has_answer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imcqa_tiny import iagbench  # noqa: E402
from rag_nq_oracle import build_corpus  # noqa: E402

MODES = {
    "none (sentence, default)": ["--granularity", "sentence"],
    "tokens (passage)": ["--granularity", "passage", "--prune", "tokens"],
    "llmlingua (passage, reference)": ["--granularity", "passage", "--prune", "llmlingua"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="corpus, index and pairs files (never committed)")
    parser.add_argument("--questions", type=int, default=100)
    parser.add_argument("--k", type=int, default=5, help="bm25 passages per question")
    parser.add_argument("--target-tokens", type=int, default=64)
    args = parser.parse_args()

    out = args.out.resolve()
    corpus = out / "corpus.tsv"
    if not corpus.exists():
        build_corpus(args.data_dir.resolve(), corpus)
    oracle = args.data_dir.resolve() / "nq-oracle" / "nq-open-oracle.jsonl.gz"
    data = ["--dataset", "fid-json", "--dataset-args", f"path={oracle}", "--split", "test", "--limit",
            str(args.questions), "--imaginer", "bm25", "--imaginer-args", f"corpus={corpus},k={args.k}", "--no-progress"]  # fmt: skip
    retrieved = out / "retrieved.jsonl"
    if not retrieved.exists():
        iagbench("retrieve", *data, "--output", str(retrieved), "-q")
    passages = {r["id"]: r["ctxs"] for r in map(json.loads, retrieved.read_text().splitlines())}

    rows = []
    for name, options in MODES.items():
        pairs = out / f"pairs-{name.split()[0]}.jsonl"
        seconds = iagbench("compress", *data, "--target-tokens", str(args.target_tokens), *options, "--output",
                           str(pairs), "-q")  # fmt: skip
        records = [json.loads(line) for line in pairs.read_text().splitlines()]
        given = [any(has_answer(r["answers"], p["text"]) for p in passages[r["id"]]) for r in records]
        kept = [has_answer(r["answers"], r["compressed"]) for r in records]
        coarse = [r["tokens_before_pruning"] for r in records if "tokens_before_pruning" in r]
        rows.append([name, len(records), round(statistics.mean(coarse), 1) if coarse else "",
                     round(statistics.mean(r["tokens"] for r in records), 1), round(100 * statistics.mean(given), 1),
                     round(100 * statistics.mean(kept), 1), round(seconds / len(records), 2)])  # fmt: skip
        print(rows[-1], flush=True)
    headers = ["mode", "questions", "tokens after the coarse selection", "tokens kept",
               "has_answer of the k passages %", "has_answer kept %", "s/question (whole command)"]  # fmt: skip
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
