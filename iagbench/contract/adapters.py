"""The adapter a `Context` may carry: one question's LoRA weights, made by an imaginer and read by a reader.

`iagbench.lm.lora.BatchedLoRA` applies a batch of them to a frozen model in two batched matrix products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class LoRAAdapter:
    """One example's LoRA weights: ``a[target]`` (layers, d_in, r), ``b[target]`` (layers, r, d_out)."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    scale: float = 1.0
    base_dropout: float = 0.0  # dropout on the frozen layer's output while the adapter applies (the ImcQA reference)

    def describe(self) -> dict[str, Any]:
        """A summary for predictions.jsonl (norms, not weights)."""
        return {
            "type": "lora",
            "rank": next(iter(self.a.values())).shape[-1],
            "targets": sorted(self.a),
            "delta_norm": round(float(sum((self.a[t] @ self.b[t]).norm() for t in self.a)) * self.scale, 6),
        }
