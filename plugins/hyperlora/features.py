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

    def cost(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """Per text, (tokens, FLOPs): its words, and no model."""
        return [(len(re.findall(r"\w+", text.lower())), 0) for text in texts]


class SentenceEncoder:
    """Mean-pooled sentence-transformers embeddings of the question, frozen."""

    def __init__(self, name_or_path: str, device: str):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(name_or_path, device=device)
        self.dims = (
            getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        )()

    def cost(self, texts: Sequence[str]) -> list[tuple[int, int]]:
        """Per text, (tokens, forward FLOPs): its tokens as encoded (cut to the model's max_seq_length), each
        attending to all of them, by the formula of docs/cost.md (pooling not counted)."""
        from iagbench.lm.flops import encoder_only_shape, sentence_encoder_costs

        if not hasattr(self, "_shape"):
            self._shape = encoder_only_shape(self.model[0].auto_model)
        return sentence_encoder_costs(self.model, texts, self._shape)

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


# What the hypernetwork's features are made from, and how they are whitened (the first choice the default).
FEATURE_OPTIONS = {"features": ("question", "question+context"), "whitening": ("global", "chunk")}
CHUNK = 256  # the reference whitens its features 256 examples at a time (data/get_features.py:104-128)


def check_feature_options(**options: str) -> dict[str, str]:
    """Refuse an unknown choice; return the options not at their default."""
    from iagbench import ConfigurationError

    for name, value in options.items():
        if value not in FEATURE_OPTIONS[name]:
            raise ConfigurationError(
                f"hyperlora option {name}={value!r}: expected one of {', '.join(FEATURE_OPTIONS[name])}"
            )
    return {name: value for name, value in options.items() if value != FEATURE_OPTIONS[name][0]}


def feature_text(question: str, passages: Sequence[Any] | None) -> str:
    """``features=question+context``: the reference's encoder text, the question and its (compressed) context
    (data/get_features.py:114-116, its passages' texts joined by spaces)."""
    context = " ".join(p.text for p in passages or ())
    return "Question: " + question + (" " + context if context else "") + "\nAnswer:"


def whiten_chunk(features: torch.Tensor, dims: int, eps: float = 1e-10) -> torch.Tensor:
    """The reference's whitening of one chunk, fitted on the chunk itself (``compute_kernel_bias`` and
    ``transform_and_normalize``, data/get_features.py:55-70): SVD of the covariance, W = U / sqrt(s), the first
    ``dims`` columns, ``(x - mean) @ W``, L2-normalised. Directions of (near) zero variance, which a chunk of
    ``dims`` examples or fewer has, are zeroed where the reference divides by ~0."""
    x = features.double()
    centred = x - x.mean(0, keepdim=True)
    covariance = torch.cov(x.T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
    u, s, _ = torch.linalg.svd(covariance)
    keep = s > eps * s.max().clamp(min=eps)
    kernel = (u / s.clamp(min=eps).sqrt()) * keep
    whitened = centred @ kernel[:, :dims]
    return torch.nn.functional.normalize(whitened, dim=-1).float()
