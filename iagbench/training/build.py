"""The components of a training run, built with the seed set: their trainable parts (checked to train something),
the layers that recompute activations (``--gradient-checkpointing``), and the distillation teacher."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench.contract.components import Imaginer, Reader
from iagbench.contract.errors import ConfigurationError
from iagbench.lm.models import library_progress_bars
from iagbench.runs import collector
from iagbench.training.distill import _check_distillable, _Distiller
from iagbench.training.objective import _has_loss, _trainable
from iagbench.training.spec import TrainSpec, _Setup


def _build(
    spec: TrainSpec, setup: _Setup, progress: bool = True
) -> tuple[Imaginer, Reader, Any, list[Any], _Distiller | None]:
    """The components, built with the seed set, a ModuleDict of their trainable modules, the layers to checkpoint,
    and the teacher (built after the student, so the student's initialisation does not depend on it). Without
    ``progress`` the libraries' own bars ("Loading weights") are off while they load, as in ``iagbench run``."""
    with collector.sparse(), library_progress_bars(progress):  # start-up: imports and weights
        return _build_components(spec, setup)


def _build_components(spec: TrainSpec, setup: _Setup) -> tuple[Imaginer, Reader, Any, list[Any], _Distiller | None]:
    import torch
    from accelerate.utils import set_seed

    set_seed(spec.seed)
    imaginer: Imaginer = setup.imaginer.build(**spec.imaginer_args)
    reader: Reader = setup.reader.build(**spec.reader_args)
    modules = {role: _trainable(component) for role, component in (("imaginer", imaginer), ("reader", reader))}
    modules = {role: module for role, module in modules.items() if module is not None}
    names = f"imaginer '{setup.imaginer.name}' nor reader '{setup.reader.name}'"
    if not modules:
        raise ConfigurationError(
            f"nothing to train: neither {names} has trainable parts (Trainable.trainable_module())"
        )
    _check_objective(setup, imaginer, reader, modules)
    parts = torch.nn.ModuleDict(modules)
    if not any(p.requires_grad for p in parts.parameters()):
        raise ConfigurationError(
            f"nothing to train: the trainable modules of neither {names} have parameters that require grad"
        )
    layers = enable_gradient_checkpointing((imaginer, reader), names) if spec.gradient_checkpointing else []
    distiller = _teacher(spec, setup, reader) if setup.teacher_reader is not None else None
    return imaginer, reader, parts, layers, distiller


def _check_objective(setup: _Setup, imaginer: Imaginer, reader: Reader, modules: dict[str, Any]) -> None:
    """Something computes a loss that reaches the trainable modules: the imaginer's own loss (then the reader trains
    nothing and there is no teacher), the reader's loss, or the distillation loss."""
    if _has_loss(imaginer):
        if setup.teacher_reader is not None:
            raise ConfigurationError(
                f"--teacher-reader: imaginer '{setup.imaginer.name}' trains on its own loss, not through the reader's "
                "answer logits; distillation trains a reader's answers (e.g. imagine+hyperlora with imagine train=false)"
            )
        if "reader" in modules:
            raise ConfigurationError(
                f"imaginer '{setup.imaginer.name}' trains on its own loss, which gives reader '{setup.reader.name}' no "
                "gradient: give a reader without trainable parts (it then only serves evaluation)"
            )
    elif setup.teacher_reader is None and not _has_loss(reader):
        raise ConfigurationError(
            f"reader '{setup.reader.name}' cannot compute a training loss (it does not implement Trainable.loss)"
        )


def _teacher(spec: TrainSpec, setup: _Setup, reader: Reader) -> _Distiller:
    """The distillation teacher: its reader (checked against the student's), then its imaginer, frozen."""
    assert setup.teacher_imaginer is not None and setup.teacher_reader is not None
    teacher_reader: Reader = setup.teacher_reader.build(**spec.teacher_reader_args)
    _check_distillable(reader, teacher_reader, setup.reader.name, setup.teacher_reader.name)
    teacher_imaginer: Imaginer = setup.teacher_imaginer.build(**spec.teacher_imaginer_args)
    return _Distiller(spec, teacher_imaginer, teacher_reader)  # type: ignore[arg-type]


def enable_gradient_checkpointing(components: Sequence[Any], names: str = "the components") -> list[Any]:
    """Turn on activation checkpointing in each component's transformers model (its ``model``).

    Non-reentrant checkpointing (``use_reentrant=False``): it needs no inputs that require grad (the
    reentrant kind does, hence ``enable_input_require_grads`` for frozen models) and lets gradients
    reach tensors a layer reads from outside its inputs. Returns the modules that now checkpoint:
    transformers checkpoints a layer only while it is in training mode, and a frozen model stays in
    evaluation mode, so the trainer switches these modules' own ``training`` flag (not their
    children's: dropout stays as the component set it).
    """
    layers: list[Any] = []
    for component in components:
        model = getattr(component, "model", None)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if callable(enable):  # transformers 5
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif callable(getattr(model, "gradient_checkpointing_enable", None)):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            continue
        layers += [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not layers:
        raise ConfigurationError(
            f"--gradient-checkpointing: neither {names} has a transformers model (a 'model' attribute that "
            "supports gradient checkpointing) to checkpoint"
        )
    return layers
