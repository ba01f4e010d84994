"""Dense retrieval: passages embedded once with a sentence-transformers model, exact inner-product search.

Design notes: docs/internals.md#pluginsretrievaldensepy
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from iagbench import ConfigurationError
from iagbench.files.cache import folder_sha256
from iagbench.lm.devices import pick_device
from iagbench.lm.encoders import DEFAULT_MODEL, resolve_encoder
from iagbench.lm.models import loading

from .base import DEFAULT_K, CorpusRetriever, Hits, check_flag, check_positive_int, top_k, top_k_arrays
from .corpus import PassageStore, passage_text
from .index_cache import Index, ensure_index, log

SEARCHES = ("auto", "numpy", "torch", "faiss")
FAISS_FROM = 1_000_000
CHUNK_ROWS = 1 << 16
INDEX_VERSION = 1
EMBEDDINGS = "embeddings.npy"


class Encoder:
    """A sentence-transformers model with the settings that make its embeddings what they are."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        normalize: bool = True,
        max_length: int | None = None,
        device: str = "auto",
        batch_size: int = 64,
    ):
        from sentence_transformers import SentenceTransformer

        self.model_id, self.folder = resolve_encoder(model)
        self.fingerprint = folder_sha256(self.folder)
        self.normalize = check_flag(normalize, "normalize")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.device = pick_device(device)
        started = time.perf_counter()
        with loading("local", str(self.folder)):  # custom code (auto_map, own module classes) is refused, never run
            self.model = SentenceTransformer(
                str(self.folder), device=self.device, local_files_only=True, trust_remote_code=False
            )
        if max_length is not None:
            self.model.max_seq_length = check_positive_int(max_length, "max_length")
        self.max_length = int(self.model.max_seq_length)
        self.load_seconds = time.perf_counter() - started

    def settings(self) -> dict[str, Any]:
        return {
            "model": self.model_id,
            "model_sha256": self.fingerprint,
            "normalize": self.normalize,
            "max_length": self.max_length,
        }

    def cost(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """Per text, (tokens, forward FLOPs) of encoding it (docs/cost.md)."""
        from iagbench.lm.flops import encoder_only_shape, sentence_encoder_costs

        if not hasattr(self, "_shape"):
            self._shape = encoder_only_shape(self.model[0].auto_model)
        return sentence_encoder_costs(self.model, texts, self._shape)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        embeddings = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)


class DenseIndex:
    """The embeddings of one passage store, built or reused, and exact inner-product search over them."""

    def __init__(
        self,
        store: PassageStore,
        encoder: Encoder,
        *,
        passage_prefix: str = "",
        query_prefix: str = "",
        search: str = "auto",
        progress: bool = False,
    ):
        if search not in SEARCHES:
            raise ConfigurationError(f"search={search!r}: expected one of {', '.join(SEARCHES)}")
        if not isinstance(passage_prefix, str) or not isinstance(query_prefix, str):
            raise ConfigurationError("passage_prefix= and query_prefix= must be text")
        self.store, self.encoder = store, encoder
        self.query_prefix = query_prefix
        self.settings = {
            **encoder.settings(),
            "passage_prefix": passage_prefix,
            "text": "title\\ntext",
            "dtype": "float32",
            "version": INDEX_VERSION,
        }
        corpus = store.corpus
        self.index: Index = ensure_index(
            "dense",
            corpus.path,
            corpus.sha256,
            {**self.settings, "format": corpus.format},
            lambda folder: self._build(folder, passage_prefix, progress),
        )
        started = time.perf_counter()
        self.embeddings = np.load(self.index.path / EMBEDDINGS, mmap_mode="r")
        if self.embeddings.shape[0] != len(store):
            raise ConfigurationError(
                f"{self.index.path}: {self.embeddings.shape[0]} embeddings for {len(store)} passages; delete the folder"
            )
        self.search_kind = self._pick_search(search)
        self._on_device: Any = None  # the matrix on the torch device, made on the first torch search
        self._faiss: Any = None  # the faiss index, made on the first faiss search
        if self.index.status == "built":
            log(
                f"dense index built: {self.index.path} ({len(store)} passages in {self.index.seconds:.1f} s; model in {encoder.load_seconds:.1f} s)"
            )
        else:
            log(
                f"dense index reused: {self.index.path} (loaded in {time.perf_counter() - started:.2f} s; model in {encoder.load_seconds:.1f} s)"
            )

    def _build(self, folder: Path, passage_prefix: str, progress: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        n = len(self.store)
        model = self.encoder.model
        dimension = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
        out = np.lib.format.open_memmap(folder / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(n, dimension))
        started = time.perf_counter()
        row = 0
        texts = (passage_prefix + passage_text(passage) for passage in self.store)
        with tqdm(total=n, desc="encoding passages", unit="psg", disable=not progress) as bar:
            for batch in _chunks(texts, self.encoder.batch_size * 8):
                out[row : row + len(batch)] = self.encoder.encode(batch)
                row += len(batch)
                bar.update(len(batch))
        out.flush()
        del out
        return {
            "passages": n,
            "dimension": dimension,
            "encode_seconds": round(time.perf_counter() - started, 3),
            "device": self.encoder.device,
        }

    def _pick_search(self, search: str) -> str:
        if search == "faiss" and importlib.util.find_spec("faiss") is None:
            raise ConfigurationError("search=faiss: the faiss package is not installed (pip install faiss-cpu)")
        if search != "auto":
            return search
        if len(self.store) >= FAISS_FROM and importlib.util.find_spec("faiss") is not None:
            return "faiss"
        return "torch" if self.encoder.device.startswith("cuda") else "numpy"

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode([self.query_prefix + query for query in queries])

    def query_costs(self, queries: Sequence[str]) -> list[dict[str, Any]]:
        """Per query: its tokens and the FLOPs of encoding it, plus 2 x dimension x passages for the exhaustive
        inner-product search (every search kind here is exact)."""
        search = 2 * self.embeddings.shape[1] * self.embeddings.shape[0]
        return [
            {"flops": flops + search, "tokens": {"query": tokens}}
            for tokens, flops in self.encoder.cost([self.query_prefix + query for query in queries])
        ]

    def search(self, queries: Sequence[str], k: int) -> Hits:
        vectors = self.encode_queries(queries)
        k = min(k, len(self.store))
        return {"numpy": numpy_search, "torch": self._torch_search, "faiss": self._faiss_search}[self.search_kind](
            vectors, self.embeddings, k
        )

    def _torch_search(self, vectors: np.ndarray, embeddings: np.ndarray, k: int) -> Hits:
        import torch

        if self._on_device is None:
            self._on_device = torch.from_numpy(np.array(embeddings, dtype=np.float32)).to(self.encoder.device)
        scores = torch.from_numpy(vectors).to(self._on_device.device) @ self._on_device.T
        kth = torch.topk(scores, k, dim=1).values[:, -1:]
        hits = []
        for row, threshold in zip(scores, kth):  # everything tied with the k-th score, then ties by index
            candidates = torch.nonzero(row >= threshold).flatten()
            hits.append(top_k(row[candidates].cpu().numpy(), k, candidates.cpu().numpy()))
        return hits

    def _faiss_search(self, vectors: np.ndarray, embeddings: np.ndarray, k: int) -> Hits:
        import faiss

        if self._faiss is None:
            self._faiss = faiss.IndexFlatIP(embeddings.shape[1])
            for start in range(0, len(embeddings), CHUNK_ROWS):
                self._faiss.add(np.ascontiguousarray(embeddings[start : start + CHUNK_ROWS]))
        scores, indices = self._faiss.search(np.ascontiguousarray(vectors), k)
        return [top_k(row_scores, k, row_indices) for row_scores, row_indices in zip(scores, indices)]


def numpy_search(vectors: np.ndarray, embeddings: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS) -> Hits:
    """Exact top-k inner products of each query vector over the rows of ``embeddings``, chunk by chunk."""
    best: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(vectors)
    for start in range(0, len(embeddings), chunk_rows):
        block = np.asarray(embeddings[start : start + chunk_rows], dtype=np.float32)
        scores = vectors @ block.T
        positions = np.arange(start, start + len(block))
        for q, row in enumerate(scores):
            chunk_best = top_k_arrays(row, k, positions)
            best[q] = top_k_arrays(
                np.concatenate([best[q][1], chunk_best[1]]), k, np.concatenate([best[q][0], chunk_best[0]])
            )
    return [[(int(i), float(s)) for i, s in zip(indices, scores)] for indices, scores in best]


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(items, size)):
        yield batch


class DenseRetriever(CorpusRetriever):
    """dense: the k passages of ``corpus=`` whose embeddings have the largest inner product with the question's."""

    kind: ClassVar[str] = "dense"

    def __init__(
        self,
        corpus: str | os.PathLike[str] | None = None,
        k: int = DEFAULT_K,
        model: str = DEFAULT_MODEL,
        normalize: bool = True,
        max_length: int | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        search: str = "auto",
        device: str = "auto",
        batch_size: int = 64,
        format: str | None = None,
        progress: bool | None = None,
    ):
        resolve_encoder(model)  # a model that cannot be had fails before the passage store is built
        super().__init__(corpus, k, format, progress)
        self.encoder = Encoder(model, normalize=normalize, max_length=max_length, device=device, batch_size=batch_size)
        self.dense = DenseIndex(
            self.store,
            self.encoder,
            passage_prefix=passage_prefix,
            query_prefix=query_prefix,
            search=search,
            progress=self.progress,
        )

    def search(self, queries: Sequence[str], k: int) -> Hits:
        return self.dense.search(queries, k)

    def query_costs(self, queries: Sequence[str]) -> list[dict[str, Any]]:
        return self.dense.query_costs(queries)

    def settings(self) -> dict[str, Any]:
        return {
            "dense": {
                **self.dense.settings,
                "query_prefix": self.dense.query_prefix,
                "search": self.dense.search_kind,
                "device": self.encoder.device,
                "model_folder": str(self.encoder.folder),
            }
        }

    def indexes(self) -> dict[str, Any]:
        return {"dense": self.dense.index.describe()}
