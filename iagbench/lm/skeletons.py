"""A reader model built on the meta device from its configuration: adapter shapes without loading weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.lora import architecture_of, target_shapes


def reader_skeleton(model: str) -> torch.nn.Module:
    """The reader's model built on the meta device from its configuration (no weights are loaded).

    ``model`` is what the reader's ``model=`` takes: a T5/FiD preset (``fid-tiny``, ``fid-t5-base``...),
    a causal-LM preset (``tiny-llama``, ``smollm2-135m``...), a folder (a FiD checkpoint folder too)
    or a hub id; encoder-decoder configurations give a T5 skeleton, the others a causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, LlamaConfig, T5Config

    from iagbench.lm.models import resolve_model
    from iagbench.lm.t5_models import T5_PRESETS, resolve_t5

    source = resolve_t5(model) if model in T5_PRESETS else resolve_model(model)
    try:
        if source.kind == "random":
            config_class = T5Config if model in T5_PRESETS else LlamaConfig
            config = config_class(vocab_size=259, **source.config)  # the byte tokenizer's; no target depends on it
        elif source.kind == "gguf":
            config = AutoConfig.from_pretrained(source.ref, gguf_file=source.gguf_file)
        else:
            config = AutoConfig.from_pretrained(source.ref)
    except OSError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigurationError(f"model={model!r}: cannot read its configuration: {first_line}") from None
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def model_shapes(model: str, targets: Sequence[str] | None = None) -> dict[str, tuple[int, int, int]]:
    """Target shapes of a reader model (its architecture's default targets if none are given)."""
    skeleton = reader_skeleton(model)
    return target_shapes(skeleton, targets or architecture_of(skeleton).default_targets)
