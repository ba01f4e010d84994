"""Which device a component's ``device=`` option means."""

from __future__ import annotations

import importlib.util
import os

from iagbench.contract.errors import ConfigurationError

# packages through which DeepSpeed would find an accelerator other than CUDA (its auto-detection order)
_OTHER_ACCELERATORS = ("intel_extension_for_pytorch", "torch_npu", "torch_sdaa", "habana_frameworks", "torch_mlu",
                       "torch_supa", "torch_xmlir")  # fmt: skip


def pick_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU, else the CPU; anything else as given (``cuda:1``, ``cpu``) once checked."""
    import torch

    if not torch.cuda.is_available():
        settle_deepspeed_on_cpu()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)
    return device


def check_device(device: str) -> None:
    """Refuse, in one line naming ``device=``, a device torch cannot parse or this machine does not have."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigurationError(
            f"device={device}: not a device name torch knows; available here: {', '.join(available_devices())}"
        ) from None
    problem = None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            problem = (
                f"torch sees no CUDA GPU (CUDA_VISIBLE_DEVICES={visible})"
                if torch.version.cuda
                else f"this torch {torch.__version__} is built without CUDA"
            )
        elif parsed.index is not None and parsed.index >= count:
            problem = f"torch sees {count} CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
    elif parsed.type not in ("cpu", "meta") and not _available(parsed.type):
        problem = f"torch has no {parsed.type} device here"
    if problem:
        raise ConfigurationError(f"device={device}: {problem}; available here: {', '.join(available_devices())}")


def available_devices() -> list[str]:
    """The ``device=`` values this machine can take."""
    import torch

    devices = ["auto", "cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices += ["cuda"] + [f"cuda:{index}" for index in range(count)] if count else []
    devices += [kind for kind in ("mps", "xpu") if _available(kind)]
    return devices


def _available(kind: str) -> bool:
    """Whether torch reports a device of this kind (mps, xpu, ...); a kind with no availability check passes."""
    import torch

    module = getattr(torch.backends, kind, None) or getattr(torch, kind, None)
    is_available = getattr(module, "is_available", None)
    return bool(is_available()) if callable(is_available) else kind not in ("mps", "xpu")


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
