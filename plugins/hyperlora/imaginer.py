"""The `hyperlora` imaginer: implicit imagination, question-specific LoRA weights for the reader."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from iagbench import ConfigurationError, Context, Example, Imaginer
from iagbench.contract.components import Exportable, Trainable
from iagbench.lm.devices import pick_device
from iagbench.lm.lora import LoRAAdapter, architecture_of, target_shapes
from iagbench.lm.skeletons import reader_skeleton

from .features import CHUNK, build_encoder, check_feature_options, feature_text, whiten_chunk
from .hypernetwork import HyperNetwork
from .preflight import check_dropout, check_network_options, check_pairing, check_sizes, parse_targets


class HyperLoRAImaginer(Imaginer, Trainable, Exportable):
    """Encodes the question (frozen), whitens it, and maps it to a LoRA for every target layer of the reader."""

    provides = frozenset({"adapter"})

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        targets: str | None = None,
        rank: int = 32,
        hidden: int = 256,
        feature_dims: int = 255,
        encoder: str = "minilm",
        checkpoint: str | None = None,
        device: str = "auto",
        activation: str = "gelu",
        norm: str = "layernorm",
        layer_input: str = "embedding",
        share: str = "target",
        body: str = "shared",
        init: str = "default",
        base_dropout: float = 0.0,
        features: str = "question",
        whitening: str = "global",
    ):
        check_sizes({"rank": rank, "hidden": hidden, "feature_dims": feature_dims})
        # the ImcQA reference's hypernetwork (docs/fidelity.md): activation=relu norm=none layer_input=index
        # share=stack body=separate init=reference base_dropout=0.1 hidden=8
        options = check_network_options(
            activation=activation, norm=norm, layer_input=layer_input, share=share, body=body, init=init
        )
        self.base_dropout = check_dropout(base_dropout)
        feature_options = check_feature_options(features=features, whitening=whitening)
        self.reads_passages = features == "question+context"  # the reference's (data/get_features.py:104-128)
        self.chunked, self._chunk_features = whitening == "chunk", {}
        self.device = pick_device(device)
        self._read_shapes(model, targets)
        self.encoder_name = encoder
        self.encoder = build_encoder(encoder, self.device)
        if feature_dims > self.encoder.dims:
            raise ConfigurationError(
                f"hyperlora option feature_dims={feature_dims}: above the {self.encoder.dims} dimensions of encoder "
                f"'{encoder}' (the whitening keeps at most as many)"
            )
        self.settings = {
            "model": model,
            "architecture": self.architecture,
            "targets": list(self.targets),
            "rank": rank,
            "hidden": hidden,
            "feature_dims": feature_dims,
            "encoder": encoder,
            **options,  # only those not at their default: earlier runs keep their record
            **({"base_dropout": base_dropout} if base_dropout else {}),
            **feature_options,
        }
        network = HyperNetwork(self.encoder.dims, feature_dims, self.shapes, rank=rank, hidden=hidden, **options)
        self.network = network.to(self.device)
        self.checkpoint = checkpoint
        if checkpoint:
            from iagbench.lm.checkpoints import load_trainable

            load_trainable(self, checkpoint, "imaginer")
        self.network.eval()

    def _read_shapes(self, model: str, targets: str | None) -> None:
        """The reader model's architecture, the LoRA targets and their shapes (from its configuration alone)."""
        skeleton = reader_skeleton(model)
        self.architecture = architecture_of(skeleton).name
        self.targets = parse_targets(targets) if targets else architecture_of(skeleton).default_targets
        self.shapes = target_shapes(skeleton, self.targets)

    @staticmethod
    def preflight(pairing: Any) -> None:
        """Before anything loads (`iagbench.contract.preflight`): weights for a run, fitting the checkpoint and reader."""
        defaults = {name: p.default for name, p in inspect.signature(HyperLoRAImaginer).parameters.items()}
        check_pairing(pairing, defaults)

    def trainable_module(self) -> torch.nn.Module:
        return self.network

    def export(self, folder: Any) -> dict[str, Any]:
        """`iagbench export`: ``hypernetwork.safetensors`` and ``hypernetwork.json`` (settings, encoder and target
        shapes: what rebuilds `HyperNetwork`)."""
        from iagbench.lm.export import export_safetensors

        config = {
            **self.settings,
            "encoder_dims": self.encoder.dims,
            "shapes": {k: list(v) for k, v in self.shapes.items()},
        }
        return export_safetensors(self.network.state_dict(), config, folder, "hypernetwork")

    def describe(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.network.parameters())
        return {
            **self.settings,
            "parameters": parameters,
            "checkpoint": self.checkpoint,
            "whitening_fitted": bool(self.network.whitening.fitted),
        }

    def prepare(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None = None) -> None:
        """Fit the PCA whitening on the questions (``features=question+context``: and ``passages``) of the whole
        training set, once before training; ``whitening=chunk``: whiten them per chunk of 256, kept per example."""
        dims = self.settings["feature_dims"]
        if self.chunked:
            features = self._chunked(self._encode(examples, passages))
            self._chunk_features = {(e.id, e.question): row for e, row in zip(examples, features)}
            return
        if len(examples) <= dims:
            raise ConfigurationError(
                f"hyperlora option feature_dims={dims}: the whitening needs more training questions than that, got "
                f"{len(examples)} training questions: lower feature_dims below {len(examples)} or train on more"
            )
        self.network.whitening.fit(self._encode(examples, passages).to(self.device))

    def prepare_on_resume(self) -> bool:
        """whitening=chunk: the training features whitened per chunk are not in checkpoints, so a resumed training
        whitens them again, as its first start did (the same examples in the same order, the same chunks)."""
        return self.chunked

    def _texts(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None) -> list[str]:
        """What the encoder reads: the questions (with their passages: features=question+context)."""
        if self.reads_passages:
            return [feature_text(e.question, passages[i] if passages else ()) for i, e in enumerate(examples)]
        return [e.question for e in examples]

    def _encode(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None) -> torch.Tensor:
        """The frozen encoder's features of the examples' questions (with their passages: features=question+context)."""
        texts = self._texts(examples, passages)
        return torch.cat([self.encoder(texts[i : i + CHUNK]) for i in range(0, len(texts), CHUNK)])

    def _chunked(self, encoded: torch.Tensor) -> torch.Tensor:
        dims = self.settings["feature_dims"]
        return torch.cat([whiten_chunk(encoded[i : i + CHUNK], dims) for i in range(0, len(encoded), CHUNK)])

    def _features(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None) -> dict[str, Any]:
        """The network's inputs: the encoded examples, and with whitening=chunk their whitened features (those of
        the training set as prepare whitened them, the others per chunk of this call)."""
        encoded = self._encode(examples, passages).to(self.device)
        if not self.chunked:
            return {"encoded": encoded}
        whitened = self._chunked(encoded.cpu())
        rows = [self._chunk_features.get((e.id, e.question), whitened[i]) for i, e in enumerate(examples)]
        return {"encoded": encoded, "whitened": torch.stack(rows).to(self.device)}

    def imagine(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None = None) -> list[Context]:
        """``passages``: each example's passages from the composite's earlier parts (features=question+context)."""
        if not self.chunked and not bool(self.network.whitening.fitted):
            raise ConfigurationError(
                "hyperlora: the whitening is not fitted: train it first (iagbench train --imaginer hyperlora ...) "
                "and pass --imaginer-args checkpoint=DIR"
            )
        inputs = self._features(examples, passages)
        with torch.set_grad_enabled(self.network.training):  # gradients only while training
            weights = self.network(**inputs)
        # base_dropout: while training, as the reference's HyperLora.dropout (nn.Dropout in training mode only)
        extra = {"base_dropout": self.base_dropout} if self.base_dropout and self.network.training else {}
        costs = self.costs(examples, passages) if not self.network.training else [None] * len(examples)
        return [
            Context(
                adapter=LoRAAdapter(
                    {k: a[row] for k, (a, _) in weights.items()}, {k: b[row] for k, (_, b) in weights.items()}, **extra
                ),
                cost=costs[row],
            )
            for row in range(len(examples))
        ]

    def costs(self, examples: Sequence[Example], passages: Sequence[Sequence[Any]] | None) -> list[dict[str, Any]]:
        """Each example's ``Context.cost`` (docs/cost.md): the encoder's tokens and FLOPs, plus 2 x the
        hypernetwork's multiply-accumulates."""
        counted = getattr(self.encoder, "cost", None)
        network = 2 * self.network.macs()
        if not callable(counted):  # an encoder that does not count: the hypernetwork's alone
            return [{"flops": network} for _ in examples]
        return [
            {"flops": flops + network, "tokens": {"encoder": n}}
            for n, flops in counted(self._texts(examples, passages))
        ]
