"""The peft LoRA baseline: one trainable LoRA shared by every question, on a reader's model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench.contract.errors import ConfigurationError


def peft_targets(model: Any) -> list[str]:
    """The peft LoRA baseline's default target modules, by architecture: the seven Llama projections, or
    T5's ``q`` and ``v`` in every attention block (encoder and decoder self-attention, cross-attention)."""
    from iagbench.lm.lora import LLAMA_TARGETS, architecture_of

    return ["q", "v"] if architecture_of(model).name == "t5" else list(LLAMA_TARGETS)


def check_lora_options(rank: int, alpha: Any, dropout: Any) -> dict[str, Any]:
    """Check the reader options ``lora_alpha`` (default 2r) and ``lora_dropout`` (default 0); return those set
    (what ``describe`` records, so configurations without them keep their identity)."""
    if alpha is None and dropout is None:
        return {}
    if not rank:
        name = "lora_alpha" if alpha is not None else "lora_dropout"
        raise ConfigurationError(f"reader option {name} needs lora_rank=R (the peft LoRA baseline)")
    chosen: dict[str, Any] = {}
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ConfigurationError(f"reader option lora_alpha={alpha!r}: expected a positive number")
        chosen["lora_alpha"] = alpha
    if dropout is not None:
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigurationError(f"reader option lora_dropout={dropout!r}: expected a number in [0, 1)")
        chosen["lora_dropout"] = dropout
    return chosen


def add_peft_lora(
    reader: Any,
    rank: int,
    targets: Sequence[str] | None = None,
    *,
    lora_alpha: float | None = None,
    lora_dropout: float | None = None,
) -> Any:
    """Wrap ``reader.model`` with a trainable peft LoRA (targets: ``peft_targets`` of its architecture; scale
    ``lora_alpha / rank``, alpha 2r by default; ``lora_dropout`` on the LoRA input, 0 by default); return its LoRA weights (what trains and
    what a checkpoint holds; with dropout, its dropout layers too, which hold no tensors, so ``train()`` reaches them)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigurationError(f"reader option lora_rank={rank!r}: expected a positive integer")
    modules = list(targets) if targets else peft_targets(reader.model)
    alpha = 2 * rank if lora_alpha is None else lora_alpha
    dropout = float(lora_dropout or 0.0)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules)
    training = reader.model.training
    reader.model = get_peft_model(reader.model, config)
    reader.model.train(training)  # peft leaves its new layers in training mode: the LoRA dropout was on in runs
    reader.peft_model = reader.model  # what iagbench.lm.export.export_peft_adapter saves (readers may unwrap it)
    weights = torch.nn.ModuleDict()
    for name, module in reader.model.named_modules():
        if hasattr(module, "lora_A") and len(module.lora_A):
            parts = {"A": module.lora_A, "B": module.lora_B}
            if dropout:
                parts["dropout"] = module.lora_dropout
            weights[name.replace(".", "__")] = torch.nn.ModuleDict(parts)
    return weights
