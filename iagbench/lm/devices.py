"""Which device a component's ``device=`` option means."""

from __future__ import annotations

import importlib.util
import os

# packages through which DeepSpeed would find an accelerator other than CUDA (its auto-detection order)
_OTHER_ACCELERATORS = ("intel_extension_for_pytorch", "torch_npu", "torch_sdaa", "habana_frameworks", "torch_mlu",
                       "torch_supa", "torch_xmlir")  # fmt: skip


def pick_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; anything else as given (``cuda:1``, ``cpu``)."""
    import torch

    if not torch.cuda.is_available():
        settle_deepspeed_on_cpu()
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def settle_deepspeed_on_cpu() -> None:
    """Tell DeepSpeed it is on the CPU where its auto-detection would conclude so anyway.

    transformers imports DeepSpeed whenever it is installed, and DeepSpeed's detection then logs "Setting
    accelerator to CPU" into every model load; ``DS_ACCELERATOR=cpu`` gives the same choice without that line.
    Nothing is set where CUDA, MPS or another accelerator package is there, or where the user set it.
    """
    import torch

    if "DS_ACCELERATOR" in os.environ or torch.cuda.is_available():
        return
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return
    if any(importlib.util.find_spec(name) is not None for name in _OTHER_ACCELERATORS):
        return
    os.environ["DS_ACCELERATOR"] = "cpu"
