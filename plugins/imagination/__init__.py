"""Explicit imagination: `generate` (GenRead-style zero-shot background documents) and `imagine` (an LM
fine-tuned on question -> compressed-context pairs that `iagbench compress` writes, see `.compress`).

Factories are lazy ``"module:attribute"`` strings: listing plugins never imports torch.
"""

from __future__ import annotations

from iagbench import hookimpl

_PACKAGE = "iagbench_plugins.imagination"


@hookimpl
def register_imaginers(register) -> None:
    register(
        "generate",
        f"{_PACKAGE}.generate:GenerateImaginer",
        description="GenRead-style zero-shot: a prompted causal LM writes a background document (model=smollm2-135m)",
    )
    register(
        "imagine",
        f"{_PACKAGE}.imagine:ImagineImaginer",
        description="a causal LM trained on iagbench compress pairs writes a compressed context (pairs=, checkpoint=)",
    )


@hookimpl
def register_commands(register) -> None:
    register(
        "compress",
        f"{_PACKAGE}.commands",
        description="write question -> compressed retrieved context pairs as JSON lines (resumable; for imagine)",
    )
