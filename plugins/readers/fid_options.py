"""Checks of the `fid-t5` reader's options, made before any model loads."""

from __future__ import annotations

from typing import Any

from iagbench import ConfigurationError
from iagbench.lm.decoding import check_decoding_options

TRAIN_MODES = ("full", "lora", "none", "parts")  # parts: with train_parts (fid_training)
TRAIN_ANSWERS = ("random", "first")


def check_fid_options(
    *,
    text_maxlength: int,
    max_new_tokens: int,
    num_beams: int,
    encoder_batch_size: int | None,
    train: str | None,
    lora_rank: int,
    train_answer: str,
    cache: str,
    compile: bool,
) -> str:
    """Refuse options that do not fit together; return the train mode (default: ``lora`` with a ``lora_rank``, else ``full``)."""
    check_decoding_options(cache, compile, lora_rank)
    if cache == "static" and num_beams != 1:
        raise ConfigurationError(
            f"reader option cache=static decodes greedily: num_beams={num_beams} needs cache=dynamic"
        )
    for name, value in (
        ("text_maxlength", text_maxlength),
        ("max_new_tokens", max_new_tokens),
        ("num_beams", num_beams),
    ):
        check_positive(name, value)
    if text_maxlength < 2:
        raise ConfigurationError(
            f"reader option text_maxlength={text_maxlength}: needs room for a token and the end token"
        )
    if encoder_batch_size is not None:
        check_positive("encoder_batch_size", encoder_batch_size)
    if lora_rank:
        check_positive("lora_rank", lora_rank)
    train = train if train is not None else "lora" if lora_rank else "full"
    if train not in TRAIN_MODES:
        raise ConfigurationError(f"reader option train={train!r}: expected one of {', '.join(TRAIN_MODES)}")
    if (train == "lora") != bool(lora_rank) and train != "none":
        raise ConfigurationError(
            f"reader option train={train} with lora_rank={lora_rank}: lora_rank=R trains the LoRA only (train=lora, "
            "or train=none to keep it frozen); train=full fine-tunes the whole T5 (no lora_rank)"
        )
    if train_answer not in TRAIN_ANSWERS:
        raise ConfigurationError(
            f"reader option train_answer={train_answer!r}: expected one of {', '.join(TRAIN_ANSWERS)}"
        )
    return train


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"reader option {name}={value!r}: expected a positive integer")
