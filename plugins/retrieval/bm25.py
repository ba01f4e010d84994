"""BM25 over a passage corpus with ``bm25s``: an index built once, memory-mapped on load.

Passages are indexed as ``title + "\\n" + text``. Tokens are bm25s's: lower-cased runs of two or
more word characters, English stop words removed (``stopwords=none`` keeps them), no stemming.
The defaults ``k1=0.9``, ``b=0.4`` are Lucene/Pyserini's, the BM25 of the DPR paper's baseline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import bm25s

from iagbench import ConfigurationError

from .base import DEFAULT_K, CorpusRetriever, Hits, check_number, top_k
from .corpus import PassageStore, passage_text
from .index_cache import Index, ensure_index, log

TOKEN_PATTERN = r"(?u)\b\w\w+\b"
STOPWORDS = ("en", "none")
METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
INDEX_VERSION = 1


class BM25Index:
    """A bm25s index of one passage store, built or reused from the cache."""

    def __init__(
        self,
        store: PassageStore,
        *,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stopwords: str = "en",
        progress: bool = False,
    ):
        if method not in METHODS:
            raise ConfigurationError(f"method={method!r}: expected one of {', '.join(METHODS)}")
        if stopwords not in STOPWORDS:
            raise ConfigurationError(f"stopwords={stopwords!r}: expected one of {', '.join(STOPWORDS)}")
        self.store = store
        self.k1, self.b, self.method, self.stopwords = k1, b, method, stopwords
        self.settings = {
            "tokenizer": {"pattern": TOKEN_PATTERN, "lower": True, "stopwords": stopwords, "stemmer": None},
            "k1": k1,
            "b": b,
            "method": method,
            "text": "title\\ntext",
            "bm25s": bm25s.__version__,
            "version": INDEX_VERSION,
        }
        corpus = store.corpus
        self.index: Index = ensure_index(
            "bm25",
            corpus.path,
            corpus.sha256,
            {**self.settings, "format": corpus.format},
            lambda folder: self._build(folder, progress),
        )
        started = time.perf_counter()
        self.retriever = bm25s.BM25.load(str(self.index.path), mmap=True, load_corpus=False, show_progress=False)
        loaded = time.perf_counter() - started
        if self.index.status == "built":
            log(f"bm25 index built: {self.index.path} ({len(store)} passages in {self.index.seconds:.1f} s)")
        else:
            log(f"bm25 index reused: {self.index.path} (loaded in {loaded:.2f} s)")

    def _tokenizer(self) -> bm25s.tokenization.Tokenizer:
        stopwords = "en" if self.stopwords == "en" else None
        return bm25s.tokenization.Tokenizer(lower=True, splitter=TOKEN_PATTERN, stopwords=stopwords, stemmer=None)

    def _build(self, folder: Path, progress: bool) -> dict[str, Any]:
        tokenizer = self._tokenizer()
        texts = (passage_text(passage) for passage in self.store)
        ids = tokenizer.tokenize(
            texts, update_vocab=True, return_as="ids", show_progress=progress, length=len(self.store)
        )
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index((ids, tokenizer.get_vocab_dict()), show_progress=progress)
        retriever.save(str(folder), show_progress=False)
        return {"passages": len(self.store), "vocabulary": len(retriever.vocab_dict)}

    def search(self, queries: Sequence[str], k: int, threads: int = 0) -> Hits:
        """Top-k passages of each query (the batch tokenized at once, scored query by query as bm25s's
        own ``retrieve`` does, optionally on threads); ties in corpus order."""
        tokens = self._tokenizer().tokenize(list(queries), update_vocab=True, return_as="string", show_progress=False)

        def one(query_tokens: list[str]) -> list[tuple[int, float]]:
            return top_k(self.retriever.get_scores(query_tokens), k)

        if threads == 0 or len(tokens) == 1:
            return [one(query_tokens) for query_tokens in tokens]
        with ThreadPoolExecutor(max_workers=os.cpu_count() if threads == -1 else threads) as pool:
            return list(pool.map(one, tokens))


class BM25Retriever(CorpusRetriever):
    """bm25: the k passages of ``corpus=`` that BM25 ranks highest for the question."""

    kind: ClassVar[str] = "bm25"

    def __init__(
        self,
        corpus: str | os.PathLike[str] | None = None,
        k: int = DEFAULT_K,
        k1: float = 0.9,
        b: float = 0.4,
        method: str = "lucene",
        stopwords: str = "en",
        threads: int = 0,
        format: str | None = None,
        progress: bool | None = None,
    ):
        super().__init__(corpus, k, format, progress)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < -1:
            raise ConfigurationError(f"threads={threads!r}: expected 0 (no threads), a count, or -1 (all CPUs)")
        self.threads = threads
        self.bm25 = BM25Index(
            self.store,
            k1=check_number(k1, "k1"),
            b=check_number(b, "b"),
            method=method,
            stopwords=stopwords,
            progress=self.progress,
        )

    def search(self, queries: Sequence[str], k: int) -> Hits:
        return self.bm25.search(queries, k, self.threads)

    def settings(self) -> dict[str, Any]:
        return {"bm25": self.bm25.settings}

    def indexes(self) -> dict[str, Any]:
        return {"bm25": self.bm25.index.describe()}
