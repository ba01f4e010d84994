"""Random per-example LoRA weights for the adapter tests of both reader families."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iagbench.lm.lora import LoRAAdapter, target_modules


def random_lora_adapter(
    model: torch.nn.Module,
    targets: Sequence[str],
    seed: int,
    *,
    rank: int = 4,
    weight_scale: float = 0.3,
    scale: float = 1.0,
) -> LoRAAdapter:
    """A seeded LoRA for every layer of ``targets`` in ``model``: N(0, weight_scale^2) A and B, applied with ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    modules = target_modules(model, targets)
    a, b = {}, {}
    for kind in targets:
        layers = sorted(layer for k, layer in modules if k == kind)
        linear = modules[(kind, layers[0])]
        a[kind] = torch.randn(len(layers), linear.in_features, rank, generator=generator) * weight_scale
        b[kind] = torch.randn(len(layers), rank, linear.out_features, generator=generator) * weight_scale
    return LoRAAdapter(a, b, scale=scale)
