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


def add_peft_lora(reader: Any, rank: int, targets: Sequence[str] | None = None) -> Any:
    """Wrap ``reader.model`` with a trainable peft LoRA (targets: ``peft_targets`` of its architecture);
    return its LoRA weights (what trains and what a checkpoint holds)."""
    import torch
    from peft import LoraConfig, get_peft_model

    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigurationError(f"reader option lora_rank={rank!r}: expected a positive integer")
    modules = list(targets) if targets else peft_targets(reader.model)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=modules)
    reader.model = get_peft_model(reader.model, config)
    reader.peft_model = reader.model  # what iagbench.lm.export.export_peft_adapter saves (readers may unwrap it)
    weights = torch.nn.ModuleDict()
    for name, module in reader.model.named_modules():
        if hasattr(module, "lora_A") and len(module.lora_A):
            weights[name.replace(".", "__")] = torch.nn.ModuleDict({"A": module.lora_A, "B": module.lora_B})
    return weights
