"""Retrieval imaginers: bm25 (bm25s), dense (sentence-transformers) and hybrid (reciprocal-rank fusion).

Each takes ``corpus=`` (a DPR passages TSV, ``{id,title,text}`` JSON lines, or FlashRAG
``{id,contents}`` JSON lines) and ``k=``, builds its index once into the cache
(``iagbench.files.cache.cache_root()/indexes``) and reuses it. Factories are lazy ``"module:attribute"``
strings: listing plugins imports neither bm25s nor torch.
"""

from __future__ import annotations

from iagbench.contract.hookspecs import Register, hookimpl

_PACKAGE = "iagbench_plugins.retrieval"


@hookimpl
def register_imaginers(register: Register) -> None:
    """Register the retrieval imaginers."""
    register(
        "bm25", f"{_PACKAGE}.bm25:BM25Retriever", description="top-k passages of corpus= by BM25 (bm25s; k1=0.9, b=0.4)"
    )
    register(
        "dense",
        f"{_PACKAGE}.dense:DenseRetriever",
        description="top-k passages of corpus= by exact inner product of sentence-transformers embeddings (model=all-MiniLM-L6-v2)",
    )
    register(
        "hybrid",
        f"{_PACKAGE}.hybrid:HybridRetriever",
        description="bm25 and dense rankings of corpus= fused by reciprocal rank (rrf_c=60)",
    )
