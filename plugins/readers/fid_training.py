"""What of the `fid-t5` reader trains (``train_parts``: layer norms, embeddings, FFNs; ``lora_rank``: a peft LoRA)
and how checkpoints load into it.

``train_parts=norms,embeddings,ffn`` is the ImcQA reference's ``hyperlora_ffn`` student (model/model.py:451-476):
every parameter whose name holds ``norm``, ``emb`` (the shared embedding; the LM head where tied, as in t5-base)
or ``wi``/``wo`` (the FFNs) trains; the rest of the T5 stays frozen. ``lora_rank=R train_parts=norms,embeddings``
is the reference's LoRA baseline (model/Imagemodel.py:37-50): the parts train next to the LoRA, and a checkpoint
holds both, the LoRA's tensors under their names and the parts' under the T5's.
"""

from __future__ import annotations

from typing import Any

from iagbench import ConfigurationError

PARTS = {"norms": ("norm",), "embeddings": ("emb", "shared"), "ffn": ("wi", "wo")}


def parse_train_parts(value: str | None, train: str | None, lora_rank: int) -> tuple[tuple[str, ...], str | None]:
    """The parts named by ``train_parts`` (a comma list) and the train mode they imply (``parts`` unless ``none``)."""
    if value is None:
        if train == "parts":
            raise ConfigurationError("reader option train=parts: name the parts with train_parts=norms,embeddings,ffn")
        return (), train
    parts = tuple(dict.fromkeys(part.strip() for part in str(value).split(",") if part.strip()))
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise ConfigurationError(f"reader option train_parts={value!r}: expected a comma list of {', '.join(PARTS)}")
    if train not in (None, "lora" if lora_rank else "parts", "none"):
        raise ConfigurationError(
            f"reader option train_parts={value}: trains parts of the T5, alone (train=parts) or next to the LoRA of "
            f"lora_rank=R (train=lora), or keeps them frozen (train=none); not with train={train}"
            + (f" and lora_rank={lora_rank}" if lora_rank else "")
        )
    return parts, train or ("lora" if lora_rank else "parts")


def part_names(model: Any, parts: tuple[str, ...]) -> list[str]:
    """Names of the T5's parameters in ``parts`` (each tensor once: a tied LM head is the shared embedding)."""
    keys = [key for part in parts for key in PARTS[part]]
    return [
        name
        for name, _ in model.named_parameters()
        if any(key in segment for key in keys for segment in name.split("."))
    ]


def mirror(model: Any, names: list[str]) -> Any:
    """A module holding exactly the named parameters of ``model`` (the same tensors) under the same names, so its
    ``state_dict`` is those parameters as the T5 names them."""
    import torch

    root = torch.nn.Module()
    params = dict(model.named_parameters())
    for name in names:
        *path, leaf = name.split(".")
        node = root
        for segment in path:
            if segment not in node._modules:
                node.add_module(segment, torch.nn.Module())
            node = node._modules[segment]
        node.register_parameter(leaf, params[name])
    return root


def set_up_parts(model: Any, parts: tuple[str, ...], trainable: bool) -> Any:
    """The module of ``parts`` (None without them); its parameters require grad when ``trainable``."""
    if not parts:
        return None
    module = mirror(model, part_names(model, parts))
    module.requires_grad_(trainable)
    return module


def set_up_lora(reader: Any, rank: int, train: str) -> Any:
    """The LoRA baseline: a peft LoRA on q and v of every attention block (``reader.model`` stays the T5, its LoRA
    layers in place). Returns what trains: the LoRA weights and, with train_parts, the parts next to them (the
    reference trains every layer norm and embedding with its LoRA, model/Imagemodel.py:47-50)."""
    from iagbench.lm.peft_lora import add_peft_lora

    weights = add_peft_lora(reader, rank, **reader._lora_options)
    reader.model = reader.model.get_base_model()
    if reader._parts is not None:  # the LoRA's entries hold "__" in their names, the parts' top modules do not
        weights = type(weights)({**dict(weights.items()), **dict(reader._parts.named_children())})
    weights.requires_grad_(train == "lora")  # after peft, which froze every parameter but the LoRA's
    return weights


def load_reader_checkpoint(reader: Any, checkpoint: str) -> str:
    """Load a checkpoint into the reader; return what ``describe`` records of it. A checkpoint of the trained parts
    loads into them; otherwise the whole T5 (train=full) or, with lora_rank, the LoRA weights (and the parts, if
    train_parts is given too)."""
    from iagbench.lm.checkpoints import load_trainable

    if reader._parts is not None and reader._peft is None:
        try:
            return str(load_trainable(_Parts(reader), checkpoint, "reader"))
        except ConfigurationError as error:
            if "does not fit" not in str(error):
                raise
    return str(load_trainable(_WholeModel(reader), checkpoint, "reader"))


class _WholeModel:
    """What ``load_trainable`` loads a checkpoint into: the whole T5 (or its peft LoRA weights)."""

    def __init__(self, reader: Any):
        self.reader = reader

    def trainable_module(self) -> Any:
        return self.reader._peft if self.reader._peft is not None else self.reader.model


class _Parts(_WholeModel):
    def trainable_module(self) -> Any:
        return self.reader._parts


for _cls in (_WholeModel, _Parts):
    _cls.__name__ = _cls.__qualname__ = "FiDReader"  # error messages name the reader
