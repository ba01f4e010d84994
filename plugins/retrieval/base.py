"""What every corpus retriever shares: options, the passage store, batching, ``describe()``."""

from __future__ import annotations

import os
import sys
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from iagbench import ConfigurationError, Context, Example, Imaginer

from .corpus import Corpus, PassageStore, open_corpus, passage_store

DEFAULT_K = 10

Hits = list[list[tuple[int, float]]]
"""Per query, (passage index in the store, score) pairs, best first."""


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name}={value!r}: expected a positive integer")
    return value


def check_number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigurationError(f"{name}={value!r}: expected a number of at least {minimum}")
    return float(value)


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name}={value!r}: expected true or false")
    return value


def show_progress(progress: bool | None) -> bool:
    """``None`` means: when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return check_flag(progress, "progress")


def top_k_arrays(scores: np.ndarray, k: int, indices: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best entries of one row of scores as (indices, scores), best first, ties in index order.

    ``indices`` names the entries of ``scores`` (default: their positions). Deterministic, also at
    the k-th place: among equal scores the lower index wins, whatever the partition did.
    """
    scores = np.asarray(scores)
    indices = np.arange(len(scores)) if indices is None else np.asarray(indices)
    k = max(0, min(k, len(scores)))
    if 0 < k < len(scores):
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= kth)
        scores, indices = scores[keep], indices[keep]
    order = np.lexsort((indices, -scores.astype(np.float64)))[:k]
    return indices[order], scores[order]


def top_k(scores: np.ndarray, k: int, indices: np.ndarray | None = None) -> list[tuple[int, float]]:
    """``top_k_arrays`` as a list of (index, score) pairs."""
    best, values = top_k_arrays(scores, k, indices)
    return [(int(i), float(v)) for i, v in zip(best, values)]


class CorpusRetriever(Imaginer):
    """An imaginer that returns, per question, the top-k passages of a corpus with their scores."""

    provides: ClassVar[frozenset[str]] = frozenset({"passages"})
    kind: ClassVar[str]

    def __init__(
        self,
        corpus: str | os.PathLike[str] | None = None,
        k: int = DEFAULT_K,
        format: str | None = None,
        progress: bool | None = None,
    ):
        self.k = check_positive_int(k, "k")
        self.progress = show_progress(progress)
        self.corpus: Corpus = open_corpus(corpus, format)
        self.store: PassageStore = passage_store(self.corpus)

    @abstractmethod
    def search(self, queries: Sequence[str], k: int) -> Hits:
        """The best ``k`` passages (store indices and scores) for each query, best first."""

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        if not examples:
            return []
        queries = [example.question for example in examples]
        hits = self.search(queries, min(self.k, len(self.store)))
        return [
            Context(passages=tuple(self.store.passage(i, score) for i, score in row), cost=cost)
            for row, cost in zip(hits, self.query_costs(queries))
        ]

    def query_costs(self, queries: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each query's ``Context.cost`` (docs/cost.md): none for a retriever without a model."""
        return [None] * len(queries)

    def settings(self) -> dict[str, Any]:
        """The options that change the ranking (recorded by ``describe()``)."""
        return {}

    def indexes(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {
            "retriever": self.kind,
            "corpus": {**self.corpus.describe(), "passages": len(self.store), "store": str(self.store.index.path)},
            "k": self.k,
            **self.settings(),
            "index": self.indexes(),
        }
