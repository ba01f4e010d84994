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


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}
NORMS = ("layernorm", "none")
LAYER_INPUTS = ("embedding", "index")
SHARES = ("target", "stack")
BODIES = ("shared", "separate")
INITS = ("default", "reference")
REFERENCE_STD = 1e-7  # the ImcQA reference's HyperNet.init_layer (model/model.py:366-372)


class LoRAHead(nn.Module):
    """An MLP from [features; layer input] to A (d_in x r) and B (r x d_out), for ``slots`` layer inputs.

    ``layer_input="embedding"``: a learned embedding per slot; ``"index"``: the raw slot number appended to the features
    (the reference). ``body="separate"``: A and B each from their own hidden layer (the reference's pre_down/pre_up).
    """

    def __init__(self, features: int, slots: int, d_in: int, d_out: int, rank: int, hidden: int, layer_dims: int,
                 **options: str):  # fmt: skip
        super().__init__()
        self.d_in, self.d_out, self.rank = d_in, d_out, rank
        self.index_input = options.get("layer_input", "embedding") == "index"
        if not self.index_input:
            self.layer_embedding = nn.Embedding(slots, layer_dims)
        width = features + (1 if self.index_input else layer_dims)
        if options.get("body", "shared") == "separate":
            self.body_a, self.body_b = _body(width, hidden, options), _body(width, hidden, options)
        else:
            self.body = _body(width, hidden, options)
        self.to_a = nn.Linear(hidden, d_in * rank)
        self.to_b = nn.Linear(hidden, rank * d_out)
        if options.get("init", "default") == "reference":  # every weight N(0, 1e-7), every bias 0
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=REFERENCE_STD)
                    nn.init.zeros_(layer.bias)
            return
        # Start from the unchanged reader: B is zero, A small, so the LoRA product starts at zero.
        nn.init.normal_(self.to_a.weight, std=1.0 / math.sqrt(hidden * d_in))
        nn.init.zeros_(self.to_a.bias)
        nn.init.zeros_(self.to_b.weight)
        nn.init.zeros_(self.to_b.bias)

    def forward(self, features: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, features), slot numbers (layers,) -> A (batch, layers, d_in, r), B (batch, layers, r, d_out)."""
        batch, layers = features.shape[0], slots.shape[0]
        layer = slots.to(features.dtype)[:, None] if self.index_input else self.layer_embedding(slots)
        inputs = torch.cat(
            [features[:, None, :].expand(batch, layers, -1), layer[None].expand(batch, layers, -1)], dim=-1
        )
        if hasattr(self, "body"):
            hidden_a = hidden_b = self.body(inputs)
        else:
            hidden_a, hidden_b = self.body_a(inputs), self.body_b(inputs)
        a = self.to_a(hidden_a).view(batch, layers, self.d_in, self.rank)
        b = self.to_b(hidden_b).view(batch, layers, self.rank, self.d_out) / math.sqrt(self.rank)
        return a, b


def _body(width: int, hidden: int, options: dict[str, str]) -> nn.Sequential:
    norm = [nn.LayerNorm(hidden)] if options.get("norm", "layernorm") == "layernorm" else []
    return nn.Sequential(nn.Linear(width, hidden), *norm, ACTIVATIONS[options.get("activation", "gelu")]())


def share_groups(shapes: dict[str, tuple[int, int, int]], share: str) -> dict[str, list[str]]:
    """The targets each head serves: one per target, or (``share="stack"``) one per stack (T5's enc/dec/cross; a
    decoder-only model's one stack) and shape, as the reference shares one HyperNet by q and v."""
    if share == "target":
        return {kind: [kind] for kind in shapes}
    groups: dict[tuple[str, tuple[int, int, int]], list[str]] = {}
    for kind, shape in shapes.items():
        prefix = kind.split("_")[0]
        groups.setdefault((prefix if prefix in ("enc", "dec", "cross") else "decoder", shape), []).append(kind)
    stacks = [stack for stack, _ in groups]
    return {
        stack if stacks.count(stack) == 1 else f"{stack}_{shape[1]}x{shape[2]}": kinds
        for (stack, shape), kinds in groups.items()
    }


class HyperNetwork(nn.Module):
    """Whitening plus one LoRA head per target module type (or per stack, ``share="stack"``).

    A head shared by ``n`` targets sees layer ``i`` of its ``j``-th target as slot ``n * i + j`` (the reference's
    ``2*i`` for q and ``2*i+1`` for v, model/model.py:615-626).
    """

    def __init__(
        self,
        encoder_dims: int,
        feature_dims: int,
        shapes: dict[str, tuple[int, int, int]],
        rank: int = 32,
        hidden: int = 256,
        layer_dims: int = 16,
        **options: str,
    ):
        super().__init__()
        self.whitening = Whitening(encoder_dims, feature_dims)
        self.groups = share_groups(shapes, options.get("share", "target"))
        self.heads = nn.ModuleDict()
        self.slots: dict[str, tuple[str, int, int]] = {}  # target -> (head, position in its group, group size)
        for name, kinds in self.groups.items():
            layers, d_in, d_out = shapes[kinds[0]]
            self.heads[name] = LoRAHead(
                feature_dims, layers * len(kinds), d_in, d_out, rank, hidden, layer_dims, **options
            )
            self.slots.update({kind: (name, j, len(kinds)) for j, kind in enumerate(kinds)})
        self.layers = {kind: shape[0] for kind, shape in shapes.items()}

    def macs(self) -> int:
        """Multiply-accumulates of one example's forward (docs/cost.md): the whitening projection, then for every
        target layer its head's hidden layer(s) and its A and B outputs (biases, norms and activations not counted)."""
        total = int(self.whitening.projection.numel())
        for kind, (name, _, _) in self.slots.items():
            head = self.heads[name]
            bodies = [head.body] if hasattr(head, "body") else [head.body_a, head.body_b]
            per_layer = sum(body[0].weight.numel() for body in bodies)
            total += self.layers[kind] * int(per_layer + head.to_a.weight.numel() + head.to_b.weight.numel())
        return total

    def forward(
        self, encoded: torch.Tensor, whitened: torch.Tensor | None = None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``whitened``: features whitened already (``whitening=chunk``), in place of ``self.whitening(encoded)``."""
        features = self.whitening(encoded) if whitened is None else whitened
        out = {}
        for kind, (name, j, n) in self.slots.items():
            slots = torch.arange(self.layers[kind], device=features.device) * n + j
            out[kind] = self.heads[name](features, slots)
        return out
