"""Per-example LoRA adapters and their batched application to a frozen model (Llama-style or T5).

Design notes: docs/internals.md#iagbenchlmlorapy
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from iagbench.contract.adapters import LoRAAdapter
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
T5_TARGETS = tuple(f"{part}_{name}" for part in ("enc", "dec", "cross") for name in ("q", "k", "v", "o")) + (
    "enc_wi",
    "enc_wo",
    "dec_wi",
    "dec_wo",
)
T5_DEFAULT_TARGETS = ("enc_q", "enc_v", "dec_q", "dec_v", "cross_q", "cross_v")

_LLAMA_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?([A-Za-z_]+)$")
_T5_LAYER = re.compile(
    r"(?:^|\.)(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.(SelfAttention|EncDecAttention|DenseReluDense)\.(\w+)$"
)
_T5_PREFIX = {
    ("encoder", "SelfAttention"): "enc",
    ("encoder", "DenseReluDense"): "enc",
    ("decoder", "SelfAttention"): "dec",
    ("decoder", "DenseReluDense"): "dec",
    ("decoder", "EncDecAttention"): "cross",
}


@dataclass(frozen=True)
class Architecture:
    """How a model family names its adaptable layers."""

    name: str
    default_targets: tuple[str, ...]
    known_targets: tuple[str, ...]
    layout: str  # the module names, for error messages

    def target_of(self, module_name: str) -> tuple[str, int] | None:
        """(target type, layer index) of a module name, or None if it is not an adaptable layer."""
        if self.name == "t5":
            match = _T5_LAYER.search(module_name)
            if not match:
                return None
            stack, layer, block, proj = match.groups()
            prefix = _T5_PREFIX.get((stack, block))
            return (f"{prefix}_{proj}", int(layer)) if prefix else None
        match = _LLAMA_LAYER.search(module_name)
        return (match.group(2), int(match.group(1))) if match else None

    def stack_of(self, target: str) -> str:
        """``encoder`` or ``decoder``: which of the model's stacks the target's layers are in."""
        return "encoder" if self.name == "t5" and target.startswith("enc_") else "decoder"


LLAMA = Architecture("llama", LLAMA_TARGETS, LLAMA_TARGETS, "layers.N.*.<target>")
T5 = Architecture(
    "t5",
    T5_DEFAULT_TARGETS,
    T5_TARGETS,
    "encoder/decoder.block.N.layer.M.<SelfAttention|EncDecAttention|DenseReluDense>.<q|k|v|o|wi|wo>",
)


def architecture_of(model: torch.nn.Module) -> Architecture:
    """T5 for encoder-decoder models (T5 and its relatives share its module names), else Llama-style."""
    config = getattr(model, "config", None)
    return T5 if getattr(config, "is_encoder_decoder", False) else LLAMA


def batch_adapters(contexts: Sequence[Context]) -> list[LoRAAdapter] | None:
    """The batch's adapters, one per context, or None when no context has one (a mix is refused)."""
    adapters = [context.adapter for context in contexts]
    if all(adapter is None for adapter in adapters):
        return None
    if any(adapter is None for adapter in adapters):
        raise ConfigurationError("a batch mixes examples with and without adapters")
    for adapter in adapters:
        if not isinstance(adapter, LoRAAdapter):
            raise ConfigurationError(
                f"adapter of type {type(adapter).__name__}: the reader applies LoRAAdapter weights only"
            )
    return adapters


def target_modules(model: torch.nn.Module, targets: Sequence[str]) -> dict[tuple[str, int], torch.nn.Linear]:
    """The ``nn.Linear`` modules to adapt, keyed by (target type, layer index)."""
    architecture = architecture_of(model)
    found: dict[tuple[str, int], torch.nn.Linear] = {}
    for name, module in model.named_modules():
        target = architecture.target_of(name)
        if target and target[0] in targets and isinstance(module, torch.nn.Linear):
            found[target] = module
    missing = sorted(set(targets) - {kind for kind, _ in found})
    if missing:
        raise ConfigurationError(
            f"model has no {architecture.layout} linear modules for target '{missing[0]}' (targets: {list(targets)}; "
            f"{architecture.name} targets: {', '.join(architecture.known_targets)})"
        )
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
        self.architecture = architecture_of(model)
        self.modules = target_modules(model, targets)
        self.shapes = target_shapes(model, targets)
        self.stacks = {kind: self.architecture.stack_of(kind) for kind in self.shapes}
        self._a: dict[str, torch.Tensor] = {}
        self._b: dict[str, torch.Tensor] = {}
        self._rows: dict[str, torch.Tensor | None] = {}
        self._scale = 1.0
        self._dropout = 0.0
        self._handles = [
            module.register_forward_hook(self._hook(kind, layer)) for (kind, layer), module in self.modules.items()
        ]

    def _hook(self, kind: str, layer: int):
        stack = self.stacks[kind]

        def add_lora(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            a = self._a.get(kind)
            if a is None:
                return output
            a, b = a[layer], self._b[kind][layer]  # (adapters, d_in, r), (adapters, r, d_out)
            rows = self._rows.get(stack)
            if rows is not None:  # row i of the input belongs to adapter rows[i]
                a, b = a.index_select(0, rows), b.index_select(0, rows)
            x = inputs[0]
            if x.shape[0] != a.shape[0]:
                raise RuntimeError(
                    f"LoRA for '{kind}' holds {a.shape[0]} rows but its input has {x.shape[0]}: "
                    f"give the {stack} a row map (BatchedLoRA.route)"
                )
            delta = torch.matmul(torch.matmul(x.to(a.dtype), a), b)
            if self._dropout:  # out = dropout(linear(x)) + x A B (model/model.py:336)
                output = torch.nn.functional.dropout(output, self._dropout, training=True)
            return output + (delta * self._scale).to(output.dtype)

        return add_lora

    @contextmanager
    def active(
        self,
        adapters: Sequence[LoRAAdapter],
        dtype: torch.dtype,
        device: Any,
        rows: Mapping[str, torch.Tensor] | None = None,
    ) -> Iterator[BatchedLoRA]:
        """Apply ``adapters`` (one per batch row, or per ``rows[stack]`` entry, see ``route``) inside the block."""
        self._check(adapters)
        # Layer-major (layers, batch, d_in, r): each hook reads one contiguous (batch, d_in, r) block.
        self._a = {kind: self._stack([ad.a[kind] for ad in adapters], dtype, device) for kind in self.shapes}
        self._b = {kind: self._stack([ad.b[kind] for ad in adapters], dtype, device) for kind in self.shapes}
        self._scale = adapters[0].scale
        self._dropout = adapters[0].base_dropout
        self._rows = {}
        for stack, index in (rows or {}).items():
            self.route(stack, index)
        try:
            yield self
        finally:
            self._a, self._b, self._rows = {}, {}, {}

    @staticmethod
    def _stack(matrices: list[torch.Tensor], dtype: torch.dtype, device: Any) -> torch.Tensor:
        return torch.stack(matrices, dim=1).to(device=device, dtype=dtype).contiguous()

    def route(self, stack: str, rows: torch.Tensor | Sequence[int] | None) -> None:
        """From now on row i of ``stack``'s input gets adapter ``rows[i]`` (None: row i gets adapter i).

        A FiD encoder runs one row per passage: its map is the example of each row (``Encoded.rows``),
        so an example's passages all get its adapter without copying the matrices per passage.
        """
        if stack not in ("encoder", "decoder"):
            raise ValueError(f"stack {stack!r}: expected 'encoder' or 'decoder'")
        if rows is not None:
            device = next(iter(self._a.values())).device if self._a else None
            rows = torch.as_tensor(rows, dtype=torch.long, device=device)
        self._rows[stack] = rows

    def select(self, rows: torch.Tensor, stack: str = "decoder") -> None:
        """Keep only ``rows`` of ``stack``'s current batch (rows that finished decoding are dropped)."""
        routed = self._rows.get(stack)
        if routed is not None:
            self._rows[stack] = routed.index_select(0, rows.to(routed.device))
            return
        for kind in self.shapes:
            if self.stacks[kind] == stack:
                self._a[kind] = self._a[kind].index_select(1, rows)
                self._b[kind] = self._b[kind].index_select(1, rows)

    def _check(self, adapters: Sequence[LoRAAdapter]) -> None:
        for adapter in adapters:
            for kind, (layers, d_in, d_out) in self.shapes.items():
                a, b = adapter.a.get(kind), adapter.b.get(kind)
                if a is None or b is None or a.shape[0] != layers or a.shape[1] != d_in or b.shape[2] != d_out:
                    got = None if a is None or b is None else (tuple(a.shape), tuple(b.shape))
                    raise ConfigurationError(
                        f"adapter for '{kind}' has shapes {got}, the reader's model needs ({layers}, {d_in}, r) and "
                        f"({layers}, r, {d_out}): was it made for another model? (the imaginer's model= option)"
                    )
            if {round(a.scale, 12) for a in adapters} != {round(adapters[0].scale, 12)}:
                raise ConfigurationError("adapters of one batch must share their scale")
            if adapter.base_dropout != adapters[0].base_dropout:
                raise ConfigurationError("adapters of one batch must share their base_dropout")

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
