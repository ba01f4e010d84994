"""The `hyperlora` imaginer: implicit imagination, question-specific LoRA weights for the reader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from iagbench import ConfigurationError, Context, Example, Imaginer
from iagbench.components import Trainable

from .adapters import LLAMA_TARGETS, LoRAAdapter, target_shapes
from .features import build_encoder
from .hypernetwork import HyperNetwork


def model_shapes(model: str, targets: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """Target shapes of a reader model, read from its configuration (the weights are not loaded)."""
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from iagbench_plugins.readers.models import resolve_model

    source = resolve_model(model)
    if source.kind == "random":
        config = LlamaConfig(vocab_size=259, **source.config)
    elif source.kind == "gguf":
        config = AutoConfig.from_pretrained(source.ref, gguf_file=source.gguf_file)
    else:
        config = AutoConfig.from_pretrained(source.ref)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return target_shapes(skeleton, targets)


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(t.strip() for t in targets.split(",")) if isinstance(targets, str) else tuple(targets)
    if not names or not all(names):
        raise ConfigurationError(f"hyperlora option targets={targets!r}: expected comma-separated module names")
    return names


class HyperLoRAImaginer(Imaginer, Trainable):
    """Encodes the question (frozen), whitens it, and maps it to a LoRA for every target layer of the reader."""

    provides = frozenset({"adapter"})

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        targets: str = ",".join(LLAMA_TARGETS),
        rank: int = 32,
        hidden: int = 256,
        feature_dims: int = 255,
        encoder: str = "minilm",
        checkpoint: str | None = None,
        device: str = "auto",
    ):
        for name, value in (("rank", rank), ("hidden", hidden), ("feature_dims", feature_dims)):
            if not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"hyperlora option {name}={value!r}: expected a positive integer")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.targets = parse_targets(targets)
        self.encoder_name = encoder
        self.encoder = build_encoder(encoder, self.device)
        self.shapes = model_shapes(model, self.targets)
        self.settings = {"model": model, "targets": list(self.targets), "rank": rank, "hidden": hidden,
                         "feature_dims": feature_dims, "encoder": encoder}
        self.network = HyperNetwork(self.encoder.dims, feature_dims, self.shapes, rank=rank, hidden=hidden).to(self.device)
        self.checkpoint = checkpoint
        if checkpoint:
            from iagbench.checkpoints import load_trainable

            load_trainable(self, checkpoint, "imaginer")
        self.network.eval()

    def trainable_module(self) -> torch.nn.Module:
        return self.network

    def describe(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.network.parameters())
        return {**self.settings, "parameters": parameters, "checkpoint": self.checkpoint,
                "whitening_fitted": bool(self.network.whitening.fitted)}

    def prepare(self, examples: Sequence[Example]) -> None:
        """Fit the PCA whitening on the questions of the whole training set (once, before training)."""
        encoded = torch.cat([self.encoder([e.question for e in examples[i : i + 256]]) for i in range(0, len(examples), 256)])
        self.network.whitening.fit(encoded.to(self.device))

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        if not bool(self.network.whitening.fitted):
            raise ConfigurationError(
                "hyperlora: the whitening is not fitted: train it first (iagbench train --imaginer hyperlora ...) "
                "and pass --imaginer-args checkpoint=DIR"
            )
        encoded = self.encoder([e.question for e in examples]).to(self.device)
        with torch.set_grad_enabled(self.network.training):  # gradients only while training
            weights = self.network(encoded)
        return [
            Context(adapter=LoRAAdapter({k: a[row] for k, (a, _) in weights.items()}, {k: b[row] for k, (_, b) in weights.items()}))
            for row in range(len(examples))
        ]
