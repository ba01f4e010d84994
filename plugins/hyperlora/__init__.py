"""HyperLoRA: a hypernetwork turns each question into LoRA weights for the reader (implicit imagination)."""

from __future__ import annotations

from iagbench import hookimpl


@hookimpl
def register_imaginers(register) -> None:
    register(
        "hyperlora",
        "iagbench_plugins.hyperlora.imaginer:HyperLoRAImaginer",
        description="question -> LoRA weights for the reader (train with iagbench train; checkpoint=DIR)",
    )
