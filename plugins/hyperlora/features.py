"""Frozen question encoders for HyperLoRA: a sentence-transformers model, or a hashing encoder for tests."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import torch


class HashingEncoder:
    """Bag of hashed lower-case words, L2-normalised: no model, deterministic; for tests and quick trials."""

    def __init__(self, dims: int = 512):
        self.dims = dims

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        features = torch.zeros(len(texts), self.dims)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % self.dims
                features[row, bucket] += 1.0
        return torch.nn.functional.normalize(features, dim=-1)


class SentenceEncoder:
    """Mean-pooled sentence-transformers embeddings of the question, frozen."""

    def __init__(self, name_or_path: str, device: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(name_or_path, device=device)
        self.dims = (
            getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        )()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return (
                self.model.encode(list(texts), convert_to_tensor=True, batch_size=64, show_progress_bar=False)
                .float()
                .cpu()
            )


def build_encoder(encoder: str, device: str) -> Any:
    """``hashing``, ``minilm`` (the all-MiniLM-L6-v2 wheel), or any model the `dense` retriever resolves."""
    if encoder == "hashing":
        return HashingEncoder()
    from iagbench.lm.encoders import DEFAULT_MODEL, resolve_encoder

    _, folder = resolve_encoder(DEFAULT_MODEL if encoder == "minilm" else encoder)
    return SentenceEncoder(str(folder), device)
