"""RAG on real questions: retrieval recall, reader scores with and without passages, index reuse, BM25 speed.

    python benchmarks/rag_nq_oracle.py --data-dir ../shared/data [--out runs/bench-rag] [--questions 200]

Corpus: the gold passages of `nq-oracle` (one per question, deduplicated) plus the Wikipedia
passages of `wiki/` (DPR TSV and FlashRAG JSON lines), written by this script as a DPR passages
TSV under --out (never committed). Questions: the nq-oracle questions. Prints:
1. has_answer@1/5/20 of bm25, dense and hybrid over all questions (DPR has_answer, passage text);
2. em / subspan_em of `smollm2-135m` closed-book against each retriever with k=1 and k=5 on the
   first --questions questions (through `iagbench run`, folders under --out/runs);
3. the start-up time of each retriever with its index built and then reused;
4. BM25 queries/s of iagbench's bm25 against `rank_bm25` (same tokens, same top-k), if installed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import time
from pathlib import Path

from tabulate import tabulate

from iagbench.contract.plugins import load_plugins
from iagbench.runs.runner import RunSpec, run
from iagbench_plugins.metrics.dpr_tokenizer import has_answer_at_k

KS = (1, 5, 20)


def build_corpus(data_dir: Path, path: Path) -> int:
    """Write the DPR TSV (atomically): nq-oracle gold passages, deduplicated, then the wiki samples; return the count."""
    seen: set[tuple[str, str]] = set()
    rows: list[tuple[str, str]] = []
    with gzip.open(data_dir / "nq-oracle" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            for ctx in json.loads(line)["ctxs"]:
                key = (ctx["title"], ctx["text"])
                if key not in seen:
                    seen.add(key)
                    rows.append((ctx["text"], ctx["title"]))
    with open(data_dir / "wiki" / "psgs_w100.first_1000.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        rows += [(text, title) for _, text, title in reader]
    with open(data_dir / "wiki" / "flashrag_sample_data.jsonl", encoding="utf-8") as handle:
        for line in handle:
            title, _, text = json.loads(line)["contents"].partition("\n")
            rows.append((text, title.strip('"')))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(["id", "text", "title"])
        writer.writerows([f"p{number}", text, title] for number, (text, title) in enumerate(rows, start=1))
    os.replace(tmp, path)
    return len(rows)


def timed(build):
    started = time.perf_counter()
    value = build()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-rag"))
    parser.add_argument("--questions", type=int, default=200, help="questions for the reader runs")
    parser.add_argument("--skip-reader", action="store_true")
    args = parser.parse_args()

    plugins = load_plugins(builtins_only=True)
    corpus = args.out / "nq-oracle-plus-wiki.tsv"
    passages = build_corpus(args.data_dir, corpus)
    oracle = str(args.data_dir / "nq-oracle" / "nq-open-oracle.jsonl.gz")
    questions = list(plugins["datasets"].get("fid-json").build(path=oracle).load("test"))
    print(f"corpus: {passages} passages ({corpus}); questions: {len(questions)}")

    recall_rows, startup_rows = [], []
    retrievers = {}
    for kind in ("bm25", "dense", "hybrid"):
        entry = plugins["imaginers"].get(kind)
        first, first_s = timed(lambda entry=entry: entry.build(corpus=str(corpus), k=max(KS)))
        _, again_s = timed(lambda entry=entry: entry.build(corpus=str(corpus), k=max(KS)))
        startup_rows.append([kind, round(first_s, 2), round(again_s, 2), f"{first_s / again_s:.1f}x"])
        retrievers[kind] = first
        hits = {k: 0 for k in KS}
        started = time.perf_counter()
        for start in range(0, len(questions), 256):
            batch = questions[start : start + 256]
            for example, context in zip(batch, first.imagine(batch)):
                for k, hit in has_answer_at_k(example.answers, context.passages, KS).items():
                    hits[k] += hit
        seconds = time.perf_counter() - started
        recall_rows.append(
            [kind, *(round(100 * hits[k] / len(questions), 1) for k in KS), round(len(questions) / seconds, 1)]
        )
        print(recall_rows[-1], flush=True)
    print("\nRetrieval over all questions (DPR has_answer on passage text)")
    print(
        tabulate(recall_rows, headers=["retriever", *(f"has_answer@{k}" for k in KS), "queries/s"], tablefmt="github")
    )
    print("\nStart-up (index built, then reused from the cache)")
    print(
        tabulate(startup_rows, headers=["retriever", "first start s", "second start s", "speed-up"], tablefmt="github")
    )

    bm25_speed(retrievers["bm25"], questions)

    if args.skip_reader:
        return
    reader_rows = []
    settings = [("none", {})] + [
        (kind, {"corpus": str(corpus.resolve()), "k": k}) for kind in ("bm25", "dense", "hybrid") for k in (1, 5)
    ]
    for imaginer, options in settings:
        spec = RunSpec(
            "fid-json",
            "test",
            imaginer,
            "smollm2-135m",
            dataset_args={"path": oracle},
            imaginer_args=options,
            limit=args.questions,
            runs_dir=args.out / "runs",
        )
        folder, results = run(spec, plugins, progress=False, log=lambda message: None)
        m = results["metrics"]
        reader_rows.append(
            [
                imaginer,
                options.get("k", 0),
                round(m["em"], 1),
                round(m["subspan_em"], 1),
                round(m.get("has_answer@1", float("nan")), 1),
                folder.path.name,
            ]
        )
        print(reader_rows[-1], flush=True)
    print(f"\nsmollm2-135m on the first {args.questions} questions")
    print(
        tabulate(reader_rows, headers=["imaginer", "k", "em", "subspan_em", "has_answer@1", "run"], tablefmt="github")
    )


def bm25_speed(retriever, questions) -> None:
    """Queries/s of iagbench's bm25 and of rank_bm25's BM25Okapi on the same tokens and top-k."""
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        print("\nrank_bm25 not installed: pip install rank_bm25 to compare BM25 throughput")
        return
    import numpy as np

    index = retriever.bm25
    tokenizer = index._tokenizer()
    texts = [f"{p.title}\n{p.text}" for p in index.store]
    corpus_tokens = tokenizer.tokenize(texts, update_vocab=True, return_as="string", show_progress=False)
    reference = BM25Okapi(corpus_tokens)
    queries = [e.question for e in questions[:500]]
    query_tokens = tokenizer.tokenize(queries, update_vocab=True, return_as="string", show_progress=False)
    _, ours_s = timed(lambda: index.search(queries, 20))
    _, theirs_s = timed(lambda: [np.argsort(-reference.get_scores(q))[:20] for q in query_tokens])
    rows = [
        ["iagbench bm25 (bm25s, memory-mapped index)", round(len(queries) / ours_s, 1)],
        ["rank_bm25 BM25Okapi", round(len(queries) / theirs_s, 1)],
    ]
    print(f"\nBM25 throughput, {len(queries)} queries, top-20: {theirs_s / ours_s:.1f}x")
    print(tabulate(rows, headers=["implementation", "queries/s"], tablefmt="github"))


if __name__ == "__main__":
    main()
