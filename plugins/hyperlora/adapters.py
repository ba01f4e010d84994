"""Per-example LoRA adapters and their batched application to a frozen model.

An adapter holds, for each target module type (``q_proj``, ``down_proj``...), a down matrix
``A`` of shape (layers, d_in, r) and an up matrix ``B`` of shape (layers, r, d_out). For a batch,
the adapters are stacked and every target ``nn.Linear`` gets ``y += (x @ A_b) @ B_b * scale`` for
each row b in two batched matrix products, never a loop over examples.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from iagbench import ConfigurationError

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?([A-Za-z_]+)$")


@dataclass
class LoRAAdapter:
    """One example's LoRA weights: ``a[target]`` (layers, d_in, r), ``b[target]`` (layers, r, d_out)."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    scale: float = 1.0

    def describe(self) -> dict[str, Any]:
        """A summary for predictions.jsonl (norms, not weights)."""
        return {
            "type": "lora",
            "rank": next(iter(self.a.values())).shape[-1],
            "targets": sorted(self.a),
            "delta_norm": round(float(sum((self.a[t] @ self.b[t]).norm() for t in self.a)) * self.scale, 6),
        }


def target_modules(model: torch.nn.Module, targets: Sequence[str]) -> dict[tuple[str, int], torch.nn.Linear]:
    """The ``nn.Linear`` modules to adapt, keyed by (module type, layer index)."""
    found: dict[tuple[str, int], torch.nn.Linear] = {}
    for name, module in model.named_modules():
        match = _LAYER.search(name)
        if match and match.group(2) in targets and isinstance(module, torch.nn.Linear):
            found[(match.group(2), int(match.group(1)))] = module
    missing = sorted(set(targets) - {kind for kind, _ in found})
    if missing:
        raise ConfigurationError(f"model has no layers.N.*.{missing[0]} linear modules to adapt (targets: {list(targets)})")
    return found


def target_shapes(model: torch.nn.Module, targets: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """(layers, d_in, d_out) per target type."""
    modules = target_modules(model, targets)
    shapes = {}
    for kind in targets:
        layers = sorted(layer for k, layer in modules if k == kind)
        linear = modules[(kind, layers[0])]
        shapes[kind] = (len(layers), linear.in_features, linear.out_features)
    return shapes


class BatchedLoRA:
    """Forward hooks that add a different LoRA to every row of a batch while active."""

    def __init__(self, model: torch.nn.Module, targets: Sequence[str]):
        self.modules = target_modules(model, targets)
        self.shapes = target_shapes(model, targets)
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._scale = 1.0
        self._handles = [module.register_forward_hook(self._hook(kind, layer)) for (kind, layer), module in self.modules.items()]

    def _hook(self, kind: str, layer: int):
        def add_lora(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            a = self._a.get(kind)
            if a is None:
                return output
            x = inputs[0]
            delta = torch.matmul(torch.matmul(x.to(a.dtype), a[layer]), self._b[kind][layer])
            return output + (delta * self._scale).to(output.dtype)

        return add_lora

    @contextmanager
    def active(self, adapters: Sequence[LoRAAdapter], dtype: torch.dtype, device: Any) -> Iterator["BatchedLoRA"]:
        """Apply ``adapters`` (one per batch row) inside the block."""
        self._check(adapters)
        # Layer-major (layers, batch, d_in, r): each hook reads one contiguous (batch, d_in, r) block.
        self._a = {kind: self._stack([ad.a[kind] for ad in adapters], dtype, device) for kind in self.shapes}
        self._b = {kind: self._stack([ad.b[kind] for ad in adapters], dtype, device) for kind in self.shapes}
        self._scale = adapters[0].scale
        try:
            yield self
        finally:
            self._a, self._b = {}, {}

    @staticmethod
    def _stack(matrices: list[torch.Tensor], dtype: torch.dtype, device: Any) -> torch.Tensor:
        return torch.stack(matrices, dim=1).to(device=device, dtype=dtype).contiguous()

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the active batch (rows that finished decoding are dropped)."""
        self._a = {kind: a.index_select(1, rows) for kind, a in self._a.items()}
        self._b = {kind: b.index_select(1, rows) for kind, b in self._b.items()}

    def _check(self, adapters: Sequence[LoRAAdapter]) -> None:
        for adapter in adapters:
            for kind, (layers, d_in, d_out) in self.shapes.items():
                a, b = adapter.a.get(kind), adapter.b.get(kind)
                if a is None or b is None or a.shape[0] != layers or a.shape[1] != d_in or b.shape[2] != d_out:
                    got = None if a is None or b is None else (tuple(a.shape), tuple(b.shape))
                    raise ConfigurationError(
                        f"adapter for '{kind}' has shapes {got}, the reader's model needs ({layers}, {d_in}, r) and "
                        f"({layers}, r, {d_out}): was it made for another model? (hyperlora option model=...)"
                    )
            if {round(a.scale, 12) for a in adapters} != {round(adapters[0].scale, 12)}:
                raise ConfigurationError("adapters of one batch must share their scale")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
