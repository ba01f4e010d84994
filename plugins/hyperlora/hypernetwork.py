"""The HyperLoRA hypernetwork: question features -> per-layer LoRA matrices for each target module type."""

from __future__ import annotations

import math

import torch
from torch import nn


class Whitening(nn.Module):
    """PCA whitening fitted once over the whole training set, kept as buffers (saved with checkpoints)."""

    def __init__(self, in_dims: int, out_dims: int):
        super().__init__()
        if out_dims > in_dims:
            raise ValueError(f"cannot whiten {in_dims}-dimensional features to {out_dims} dimensions")
        self.register_buffer("mean", torch.zeros(in_dims))
        self.register_buffer("projection", torch.eye(in_dims)[:, :out_dims].clone())
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, features: torch.Tensor, eps: float = 1e-6) -> None:
        """Fit on all training features at once (n x in_dims), not per chunk."""
        features = features.double()
        out_dims = self.projection.shape[1]
        if features.shape[0] <= out_dims:
            raise ValueError(
                f"whitening to {out_dims} dimensions needs more than {out_dims} examples, got {features.shape[0]}"
            )
        mean = features.mean(0)
        covariance = torch.cov((features - mean).T)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        order = eigenvalues.argsort(descending=True)[:out_dims]
        projection = eigenvectors[:, order] / torch.sqrt(eigenvalues[order].clamp(min=0) + eps)
        self.mean.copy_(mean.float())
        self.projection.copy_(projection.float())
        self.fitted.fill_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        whitened = (features - self.mean) @ self.projection
        return nn.functional.normalize(whitened, dim=-1)


class LoRAHead(nn.Module):
    """For one target type: an MLP from [features; layer embedding] to A (d_in x r) and B (r x d_out)."""

    def __init__(self, features: int, layers: int, d_in: int, d_out: int, rank: int, hidden: int, layer_dims: int):
        super().__init__()
        self.layers, self.d_in, self.d_out, self.rank = layers, d_in, d_out, rank
        self.layer_embedding = nn.Embedding(layers, layer_dims)
        self.body = nn.Sequential(nn.Linear(features + layer_dims, hidden), nn.LayerNorm(hidden), nn.GELU())
        self.to_a = nn.Linear(hidden, d_in * rank)
        self.to_b = nn.Linear(hidden, rank * d_out)
        # Start from the unchanged reader: B is zero, A small, so the LoRA product starts at zero.
        nn.init.normal_(self.to_a.weight, std=1.0 / math.sqrt(hidden * d_in))
        nn.init.zeros_(self.to_a.bias)
        nn.init.zeros_(self.to_b.weight)
        nn.init.zeros_(self.to_b.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, features) -> A (batch, layers, d_in, r), B (batch, layers, r, d_out)."""
        batch = features.shape[0]
        layer_ids = torch.arange(self.layers, device=features.device)
        inputs = torch.cat(
            [
                features[:, None, :].expand(batch, self.layers, features.shape[-1]),
                self.layer_embedding(layer_ids)[None].expand(batch, self.layers, -1),
            ],
            dim=-1,
        )
        hidden = self.body(inputs)
        a = self.to_a(hidden).view(batch, self.layers, self.d_in, self.rank)
        b = self.to_b(hidden).view(batch, self.layers, self.rank, self.d_out) / math.sqrt(self.rank)
        return a, b


class HyperNetwork(nn.Module):
    """Whitening plus one LoRA head per target module type."""

    def __init__(
        self,
        encoder_dims: int,
        feature_dims: int,
        shapes: dict[str, tuple[int, int, int]],
        rank: int = 32,
        hidden: int = 256,
        layer_dims: int = 16,
    ):
        super().__init__()
        self.whitening = Whitening(encoder_dims, feature_dims)
        self.heads = nn.ModuleDict(
            {
                kind: LoRAHead(feature_dims, layers, d_in, d_out, rank, hidden, layer_dims)
                for kind, (layers, d_in, d_out) in shapes.items()
            }
        )

    def forward(self, encoded: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        features = self.whitening(encoded)
        return {kind: head(features) for kind, head in self.heads.items()}
