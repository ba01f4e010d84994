"""The processes of `iagbench train`: the DeepSpeed config, mixed precision, the Accelerator for any launcher
(plain python, torchrun, accelerate launch, deepspeed) and its release. DeepSpeed is imported only when used."""

from __future__ import annotations

import copy
import json
import os
import socket
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.training.spec import TrainSpec
from iagbench.training.tracking import check_tracker

_LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def read_deepspeed_config(path: Path | None) -> dict[str, Any] | None:
    """The DeepSpeed config: ``--deepspeed``, else the one ``accelerate launch --deepspeed_config_file`` names."""
    if path is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        named = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if not named:
            raise ConfigurationError(
                "accelerate launch --use_deepspeed: give a DeepSpeed config file (--deepspeed_config_file, or "
                "iagbench train --deepspeed configs/deepspeed/zero2.json)"
            )
        path = Path(named)
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigurationError(f"--deepspeed {path}: no such file")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{path}: expected a JSON object")
    _check_deepspeed_config(path, config)
    return config


def _check_deepspeed_config(path: Path, config: dict[str, Any]) -> None:
    """No optimizer or scheduler of DeepSpeed's own; ZeRO-3 gathers the weights for saving."""
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigurationError(
                f"{path}: remove the '{section}' section: iagbench train sets the optimizer (AdamW, --lr, "
                "--weight-decay) and the schedule (--schedule, --warmup-steps) itself"
            )
    zero = config.get("zero_optimization") or {}
    if zero_stage(config) == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigurationError(
            f'{path}: ZeRO-3 needs "stage3_gather_16bit_weights_on_model_save": true in zero_optimization '
            "(checkpoints hold the whole trainable weights, gathered from every process)"
        )


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage of a DeepSpeed config (0 without one)."""
    if not config:
        return 0
    try:
        return int((config.get("zero_optimization") or {}).get("stage", 0))
    except (TypeError, ValueError):
        raise ConfigurationError("DeepSpeed config: zero_optimization.stage must be 0, 1, 2 or 3") from None


def resolve_mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(spec: TrainSpec, deepspeed_config: dict[str, Any] | None, mixed_precision: str) -> Any:
    """An Accelerator for plain python, torchrun, accelerate launch or the deepspeed launcher, CPU or CUDA."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    options: dict[str, Any] = {
        "gradient_accumulation_steps": spec.grad_accum,
        "mixed_precision": mixed_precision,
        "step_scheduler_with_optimizer": False,
    }
    if deepspeed_config is not None:
        if "LOCAL_RANK" not in os.environ:  # no launcher: DeepSpeed still wants a (one-process) process group
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        options["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=copy.deepcopy(deepspeed_config),
            gradient_accumulation_steps=spec.grad_accum,
            gradient_clipping=spec.max_grad_norm,
        )
        if not cuda:  # accelerate picks no backend for DeepSpeed on the CPU and would see one process per rank
            options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    elif not cuda:
        options["cpu"] = True  # torchrun on the CPU: gloo, data-parallel over processes
    log_with = check_tracker(spec.report_to)  # --report-to: accelerate's tracker, its package checked first
    if log_with is not None:
        options["log_with"] = log_with
        options["project_dir"] = str(spec.output or spec.train_dir)  # the output folder, once known: start_trackers
    accelerator = Accelerator(**options)
    _fit_micro_batch(accelerator, spec)
    return accelerator


def _fit_micro_batch(accelerator: Any, spec: TrainSpec) -> None:
    """DeepSpeed's micro-batch is ``--batch-size``: set where "auto", refused where it differs."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        config = plugin.deepspeed_config
        micro = config.get("train_micro_batch_size_per_gpu", "auto")
        if micro == "auto":
            config["train_micro_batch_size_per_gpu"] = spec.batch_size
        elif micro != spec.batch_size:
            raise ConfigurationError(
                f"DeepSpeed config: train_micro_batch_size_per_gpu={micro} but --batch-size {spec.batch_size}; "
                'set it to "auto"'
            )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_env() -> dict[str, str | None]:
    """The launcher's variables as they are now, for `_release` to put back (`make_accelerator` may set them)."""
    return {key: os.environ.get(key) for key in _LAUNCH_ENV}


def _release(accelerator: Any, saved_env: dict[str, str | None]) -> None:
    """End the process group and forget accelerate's process-wide state, so a later train() starts afresh."""
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedType

    accelerator.end_training()
    if accelerator.device.type == "cpu" and accelerator.distributed_type == DistributedType.DEEPSPEED:
        _remove_cpu_allreduce_buffers()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _remove_cpu_allreduce_buffers() -> None:
    """Unlink DeepSpeed's CPU all-reduce buffers of this launch (66 MiB in /dev/shm per process, left behind at exit).

    Every process of the launch mapped them all at start-up and keeps its mappings until it exits, so the
    first process to finish may unlink them for all.
    """
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address and port:
        for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_*"):
            path.unlink(missing_ok=True)
