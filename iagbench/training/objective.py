"""What `iagbench train` minimises: the loss of a batch (a module DDP and DeepSpeed wrap), AdamW over the
trainable parts, and the learning-rate schedule."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

from iagbench.contract.components import Imaginer, Reader, Trainable
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context, Example
from iagbench.training.distill import _Distiller
from iagbench.training.spec import NO_DECAY


def _trainable(component: Any) -> Any:
    return component.trainable_module() if isinstance(component, Trainable) else None


def _has_loss(component: Imaginer | Reader) -> bool:
    return isinstance(component, Trainable) and component.has_loss()


class _Batch:
    """Examples passed through DDP/DeepSpeed forward untouched (they move no tensors)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)


def _objective(imaginer: Imaginer, reader: Reader, parts: Any, distiller: _Distiller | None = None) -> Any:
    """A module over the trainable parts whose forward is the training loss (what DDP and DeepSpeed wrap)."""
    import torch

    class Objective(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = parts
            # not submodules: their frozen parts (and the teacher) stay out of DDP / DeepSpeed
            self.__dict__["_components"] = (imaginer, reader, distiller)

        def forward(self, batch: _Batch) -> Any:
            imaginer, reader, distiller = self.__dict__["_components"]
            if _has_loss(imaginer):  # an imaginer with its own objective (e.g. `imagine`) trains alone
                return imaginer.loss(batch.examples, [Context() for _ in batch.examples])
            contexts = imaginer.imagine(batch.examples)
            if len(contexts) != len(batch.examples):
                raise ConfigurationError(
                    f"imaginer returned {len(contexts)} contexts for {len(batch.examples)} examples"
                )
            if distiller is not None:
                return distiller.loss(reader, batch.examples, contexts)
            return reader.loss(batch.examples, contexts)

    return Objective()


# the ImcQA reference's no_decay list (model/Imagemodel.py:514), matched as substrings of the parameters' names
REFERENCE_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def _optimizer(parts: Any, lr: float, weight_decay: float, no_decay: str) -> Any:
    """AdamW; ``weight_decay`` on all trainable parameters but those ``no_decay`` exempts: ``norms``, the parameters
    of fewer than 2 dimensions (biases and norms); ``reference``, those whose name in ``parts.named_parameters()``
    contains one of `REFERENCE_NO_DECAY` (case-sensitive), as the ImcQA reference (model/Imagemodel.py:513-526), which
    leaves T5's ``layer_norm`` weights and the embedding decayed. Empty groups are left out."""
    import torch

    named = [(name, p) for name, p in parts.named_parameters() if p.requires_grad]
    if no_decay == "norms":
        exempt = [p.ndim < 2 for _, p in named]
    elif no_decay == "reference":
        exempt = [any(key in name for key in REFERENCE_NO_DECAY) for name, _ in named]
    else:
        raise ConfigurationError(f"--no-decay {no_decay}: expected one of {', '.join(NO_DECAY)}")
    decay = [p for (_, p), out in zip(named, exempt) if not out]
    rest = [p for (_, p), out in zip(named, exempt) if out]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The learning-rate multiplier after ``step`` steps: transformers' linear, cosine and constant_with_warmup."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_scheduler(optimizer: Any, schedule: str, warmup: int, total: int) -> Any:
    """The schedules of ``transformers.get_scheduler``, without importing transformers (seconds per process)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, schedule=schedule, warmup=warmup, total=total)
    )
