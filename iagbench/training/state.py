"""The resume state in a checkpoint's ``state/``, written and read back as safetensors and JSON only: nothing a
resume reads is unpickled, so no file in a training folder can run code.

``resume.json`` holds the schedule, the gradient scaler and the optimizer's hyper-parameters (main process);
``optimizer.safetensors`` AdamW's state without DeepSpeed (under DeepSpeed, `training.zero`'s
``optimizer_full.safetensors``); ``rng_<rank>.safetensors`` each process's torch RNG states, with Python's and
numpy's as JSON in its metadata. DeepSpeed's own shards (``pytorch_model/``, pickles) are written for its tools
and never read. Checkpoints of older versions (accelerate's ``*.pkl``/``*.bin``) are read with
``torch.load(weights_only=True)``, which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.lm.checkpoints import read_weights, save_weights
from iagbench.runs.folder import write_json_atomic

RESUME = "resume.json"
OPTIMIZER = "optimizer.safetensors"
FORMAT = 1


def rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


class Unloadable(Exception):
    """A checkpoint's state cannot be loaded; the message names the file and says why, in one line."""


@dataclass
class Saved:
    """What a checkpoint holds for resuming, read and checked before anything is changed."""

    step: int
    processes: int
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None  # torch's optimizer state dict (without DeepSpeed)
    moments: dict[str, Any] | None = None  # under DeepSpeed: the whole AdamW moments (None: not saved)
    weights: dict[str, Any] = field(default_factory=dict)  # "parts.<role>.<key>" -> tensor
    rng: dict[str, Any] | None = None  # this process's RNG states (None: its process did not exist then)


def save_state(folder: Path, accelerator: Any, optimizer: Any, scheduler: Any, deepspeed: bool) -> None:
    """Write this process's part of ``folder``: every process its RNG states, the main process the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    _save_rng(folder / rng_file(accelerator.process_index))
    if not accelerator.is_main_process:
        return
    scaler = getattr(accelerator, "scaler", None)
    resume: dict[str, Any] = {
        "format": FORMAT,
        "scheduler": scheduler.state_dict(),
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "optimizer": None,
    }
    if not deepspeed:  # under DeepSpeed the moments are zero.OPTIMIZER_FULL, gathered by the trainer
        resume["optimizer"] = _save_optimizer(optimizer.state_dict(), folder / OPTIMIZER)
    write_json_atomic(folder / RESUME, resume)


def _save_optimizer(state_dict: dict[str, Any], file: Path) -> dict[str, Any]:
    """The optimizer's tensors into ``file`` (``<index>.<key>``); its hyper-parameters and other values, returned."""
    import torch

    tensors, values = {}, {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value
            else:
                values.setdefault(str(index), {})[key] = value
    save_weights(tensors, file)
    return {"param_groups": state_dict["param_groups"], "values": values}


def _save_rng(file: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    metadata = {
        "python": json.dumps([version, list(internal), gauss]),
        "numpy": json.dumps([name, keys.tolist(), int(position), int(has_gauss), float(cached)]),
    }
    save_file({key: value.contiguous() for key, value in tensors.items()}, str(file), metadata=metadata)


def read_state(checkpoint: Path, saved: Saved, rank: int, deepspeed: bool) -> None:
    """Fill ``saved`` from ``checkpoint/state`` (Unloadable if a file is missing, cut short or not what it should be)."""
    state = checkpoint / "state"
    if (state / RESUME).is_file():
        resume = _json(state / RESUME)
        if not isinstance(resume, dict) or resume.get("format") != FORMAT:
            raise Unloadable(f"state/{RESUME}: not a resume state of format {FORMAT}")
        saved.scheduler, saved.scaler = resume.get("scheduler"), resume.get("grad_scaler")
        if not deepspeed:
            meta = resume.get("optimizer") or {}
            saved.optimizer = _optimizer_from(meta, _tensors(state / OPTIMIZER, f"state/{OPTIMIZER}"))
        file = state / rng_file(rank)
        saved.rng = _read_rng(file) if file.is_file() else None
    elif (state / "custom_checkpoint_0.pkl").is_file():
        _read_accelerate_state(state, saved, rank, deepspeed)
    else:
        raise Unloadable(f"state/{RESUME}: missing")


def _json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise Unloadable(f"state/{file.name}: {_first_line(error)}") from None


def _tensors(file: Path, name: str) -> dict[str, Any]:
    try:
        return read_weights(file)
    except Exception as error:  # ConfigurationError naming the file and why
        raise Unloadable(f"{name}: {_first_line(error).split(': ', 1)[-1]}") from None


def _optimizer_from(meta: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
    """torch's optimizer state dict from ``resume.json``'s part and ``optimizer.safetensors``."""
    try:
        state: dict[int, dict[str, Any]] = {}
        for name, tensor in tensors.items():
            index, key = name.split(".", 1)
            state.setdefault(int(index), {})[key] = tensor
        for index, values in meta["values"].items():
            state.setdefault(int(index), {}).update(values)
        return {"state": state, "param_groups": list(meta["param_groups"])}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise Unloadable(f"state/{OPTIMIZER}: does not hold an optimizer state ({_first_line(error)})") from None


def _read_rng(file: Path) -> dict[str, Any]:
    import numpy as np
    from safetensors import safe_open

    tensors = _tensors(file, f"state/{file.name}")
    try:
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata() or {}
        version, internal, gauss = json.loads(metadata["python"])
        name, keys, position, has_gauss, cached = json.loads(metadata["numpy"])
        rng = {
            "python": (version, tuple(internal), gauss),
            "numpy": (name, np.array(keys, dtype=np.uint32), position, has_gauss, cached),
            "torch": tensors["torch"],
            "cuda": [tensors[f"cuda.{i}"] for i in range(sum(key.startswith("cuda.") for key in tensors))],
        }
    except Exception as error:  # a missing key, bad JSON
        raise Unloadable(f"state/{file.name}: not RNG states ({_first_line(error)})") from None
    return _checked_rng(rng, file.name)


def _checked_rng(rng: dict[str, Any], name: str) -> dict[str, Any]:
    """``rng`` if every state sets on a scratch generator of its kind."""
    import numpy as np
    import torch

    try:
        random.Random().setstate(rng["python"])
        np.random.RandomState().set_state(rng["numpy"])
        torch.Generator().set_state(rng["torch"])
        if not all(torch.is_tensor(state) and state.dtype == torch.uint8 for state in rng["cuda"]):
            raise ValueError("CUDA RNG states must be byte tensors")
    except Exception as error:  # wrong sizes, types, versions
        raise Unloadable(f"state/{name}: not RNG states ({_first_line(error)})") from None
    return rng


def _read_accelerate_state(state: Path, saved: Saved, rank: int, deepspeed: bool) -> None:
    """A checkpoint of an older iagbench: accelerate's files, read with ``weights_only=True`` (tensors, numbers,
    containers, numpy arrays: no code runs; a pickle that asks for more is refused)."""
    from accelerate.utils import load  # torch.load(weights_only=True), numpy arrays allowed (RNG states)

    def read(name: str) -> Any:
        try:
            return load(str(state / name), map_location="cpu")
        except Exception as error:  # refused (UnpicklingError), cut short, missing
            raise Unloadable(f"state/{name}: {_first_line(error)}") from None

    saved.scheduler = read("custom_checkpoint_0.pkl")
    saved.scaler = read("scaler.pt") if (state / "scaler.pt").is_file() else None
    saved.optimizer = None if deepspeed else read("optimizer.bin")
    if (state / f"random_states_{rank}.pkl").is_file():
        states = read(f"random_states_{rank}.pkl")
        try:
            rng = {
                "python": states["random_state"],
                "numpy": states["numpy_random_seed"],
                "torch": states["torch_manual_seed"],
                "cuda": list(states.get("torch_cuda_manual_seed") or []),
            }
        except (KeyError, TypeError, AttributeError) as error:
            raise Unloadable(f"state/random_states_{rank}.pkl: not RNG states ({_first_line(error)})") from None
        saved.rng = _checked_rng(rng, f"random_states_{rank}.pkl")


def check_state(saved: Saved, optimizer: Any, scheduler: Any) -> None:
    """Unloadable if the saved schedule or optimizer state does not fit this run's (``optimizer`` before prepare)."""
    live = scheduler.state_dict()
    schedule = saved.scheduler
    if not (
        isinstance(schedule, dict)
        and isinstance(schedule.get("last_epoch"), int)
        and all(len(schedule.get(key) or []) == len(live[key]) for key in ("base_lrs", "_last_lr"))
    ):
        raise Unloadable(f"state/{RESUME}: its learning-rate schedule does not fit this run's")
    if saved.optimizer is not None:
        _check_optimizer(saved.optimizer, optimizer)


def _check_optimizer(saved: dict[str, Any], optimizer: Any) -> None:
    """The saved optimizer state has this optimizer's groups, and each moment its parameter's shape."""
    import torch

    groups, live = saved["param_groups"], optimizer.state_dict()["param_groups"]
    if len(groups) != len(live) or any(
        not isinstance(group, dict) or group.get("params") != mine["params"] for group, mine in zip(groups, live)
    ):
        raise Unloadable(f"state/{OPTIMIZER}: its parameter groups do not fit this run's optimizer")
    for group, mine in zip(groups, live):  # JSON made tuples (betas) lists
        group.update({key: tuple(value) for key, value in group.items() if isinstance(mine.get(key), tuple)})
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for index, values in saved["state"].items():
        if not (isinstance(index, int) and 0 <= index < len(params) and isinstance(values, dict)):
            raise Unloadable(f"state/{OPTIMIZER}: state of parameter {index}, which this run's optimizer has not")
        for key, value in values.items():
            if torch.is_tensor(value) and key != "step" and value.shape != params[index].shape:
                raise Unloadable(
                    f"state/{OPTIMIZER}: {index}.{key} has shape {list(value.shape)}, its parameter "
                    f"{list(params[index].shape)}"
                )


def apply_state(saved: Saved, accelerator: Any, optimizer: Any, scheduler: Any) -> None:
    """Load the checked state into the prepared optimizer, the schedule, the gradient scaler and the RNGs."""
    import numpy as np
    import torch

    if saved.optimizer is not None:
        optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    scaler = getattr(accelerator, "scaler", None)
    if saved.scaler and scaler is not None:
        scaler.load_state_dict(saved.scaler)
    if saved.rng is not None:  # a process the saving session did not have keeps its seeded RNGs
        random.setstate(saved.rng["python"])
        np.random.set_state(saved.rng["numpy"])
        torch.set_rng_state(saved.rng["torch"])
        if torch.cuda.is_available():
            for device, state in enumerate(saved.rng["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(state, device)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
