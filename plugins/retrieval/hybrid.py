"""Hybrid retrieval: reciprocal-rank fusion (Cormack et al., 2009) of the bm25 and dense rankings.

Each retriever ranks its ``depth`` best passages; a passage scores ``sum 1 / (rrf_c + rank)`` over
the rankings it appears in (ranks from 1, ``rrf_c=60`` as in the paper), and the ``k`` best by that
score are returned, ties broken by the better single rank, then by corpus order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from iagbench import ConfigurationError
from iagbench.lm.encoders import DEFAULT_MODEL

from .base import DEFAULT_K, CorpusRetriever, Hits, check_number, check_positive_int
from .bm25 import BM25Index
from .dense import DenseIndex, Encoder

RRF_C = 60
DEFAULT_DEPTH = 100


def rrf(rankings: Sequence[Sequence[int]], k: int, c: float = RRF_C) -> list[tuple[int, float]]:
    """Fuse rankings (lists of ids, best first) into the k best (id, fused score) pairs."""
    scores: dict[int, float] = {}
    best_rank: dict[int, int] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (c + rank)
            best_rank[doc] = min(best_rank.get(doc, rank), rank)
    fused = sorted(scores, key=lambda doc: (-scores[doc], best_rank[doc], doc))
    return [(doc, scores[doc]) for doc in fused[:k]]


class HybridRetriever(CorpusRetriever):
    """hybrid: bm25 and dense rankings of ``corpus=`` fused by reciprocal rank."""

    kind: ClassVar[str] = "hybrid"

    def __init__(
        self,
        corpus: str | os.PathLike[str] | None = None,
        k: int = DEFAULT_K,
        rrf_c: float = RRF_C,
        depth: int = DEFAULT_DEPTH,
        model: str = DEFAULT_MODEL,
        k1: float = 0.9,
        b: float = 0.4,
        device: str = "auto",
        format: str | None = None,
        progress: bool | None = None,
    ):
        super().__init__(corpus, k, format, progress)
        self.rrf_c = check_number(rrf_c, "rrf_c")
        self.depth = check_positive_int(depth, "depth")
        if self.depth < self.k:
            raise ConfigurationError(f"depth={depth} is below k={k}: each ranking must reach at least k passages")
        self.bm25 = BM25Index(self.store, k1=check_number(k1, "k1"), b=check_number(b, "b"), progress=self.progress)
        self.encoder = Encoder(model, device=device)
        self.dense = DenseIndex(self.store, self.encoder, progress=self.progress)

    def search(self, queries: Sequence[str], k: int) -> Hits:
        depth = max(self.depth, k)
        lexical = self.bm25.search(queries, depth)
        semantic = self.dense.search(queries, depth)
        return [rrf([[i for i, _ in a], [i for i, _ in b]], k, self.rrf_c) for a, b in zip(lexical, semantic)]

    def query_costs(self, queries: Sequence[str]) -> list[dict[str, Any]]:
        """The dense part's (bm25 adds none)."""
        return self.dense.query_costs(queries)

    def settings(self) -> dict[str, Any]:
        return {
            "rrf_c": self.rrf_c,
            "depth": self.depth,
            "bm25": self.bm25.settings,
            "dense": {**self.dense.settings, "device": self.encoder.device},
        }

    def indexes(self) -> dict[str, Any]:
        return {"bm25": self.bm25.index.describe(), "dense": self.dense.index.describe()}
