"""Which device a component's ``device=`` option means."""

from __future__ import annotations


def pick_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; anything else as given (``cuda:1``, ``cpu``)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
