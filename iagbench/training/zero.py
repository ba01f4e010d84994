"""DeepSpeed ZeRO in `iagbench train`: the whole fp32 weights and AdamW moments gathered from the shards into
every checkpoint, and re-sharded from there when a run resumes with another number of processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iagbench.lm.checkpoints import ROLES, weights_file
from iagbench.training.folder import STATE

OPTIMIZER_FULL = "optimizer_full.safetensors"  # under DeepSpeed: AdamW moments of every trainable parameter, whole
MOMENTS = ("exp_avg", "exp_avg_sq")


def _gather_zero(engine: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The fp32 weights and AdamW moments of every trainable parameter, whole, from DeepSpeed's shards.

    Collective: every process calls it, and gets the whole tensors (``step``: AdamW's step count).
    None where DeepSpeed keeps no fp32 shards (ZeRO stage 0 without bf16: the optimizer is ours, whole).
    """
    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _link_zero_views(engine.optimizer)
    weights, moments = {}, {}
    for name, param in engine.module.named_parameters():  # the same order on every process
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:
            return None
        weights[name] = full.detach().float().cpu()
        for key in MOMENTS:
            moments[f"{name}.{key}"] = safe_get_full_optimizer_state(param, key).detach().float().cpu()
    steps = [float(state["step"]) for state in engine.optimizer.optimizer.state.values() if "step" in state]
    moments["step"] = torch.tensor(max(steps, default=0.0), dtype=torch.float64)
    return weights, moments


def _link_zero_views(zero: Any) -> None:
    """(Re)link ZeRO-1/2's per-parameter views of AdamW's state, which ``safe_*_full_optimizer_state`` read and write.

    DeepSpeed links them once, after stepping the first parameter group, when the other groups have
    no state yet (0.19): their views stay empty. Linking again once every group has state fixes that
    (AdamW updates its state in place, so the views stay valid). ZeRO-3 needs no views.
    """
    link = getattr(zero, "_lazy_init_hp_params_optimizer_state", None)
    if callable(link) and hasattr(zero, "_hp_optimizer_states_linked"):
        zero._hp_optimizer_states_linked = False
        link()


def _reshard(engine: Any, checkpoint: Path) -> bool:
    """Load a checkpoint's whole fp32 weights and AdamW moments into this world size's ZeRO shards.

    Without DeepSpeed the optimizer state is whole on every process and loads as it is. DeepSpeed ZeRO
    shards it by process, so under DeepSpeed every checkpoint also holds the gathered AdamW moments
    (``state/optimizer_full.safetensors``) and fp32 weights (the ``*.safetensors`` weights), from which
    a different number of processes re-shards it. The module already holds the checkpoint's weights
    (loaded before ``prepare``); this restores the fp32 master copies (exact under bf16) and the
    optimizer. False if the checkpoint has no whole moments (nothing is changed then: AdamW restarts).
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors.torch import load_file

    file = checkpoint / STATE / OPTIMIZER_FULL
    if not file.is_file():
        return False
    moments = load_file(str(file))
    step = float(moments.pop("step"))
    weights = {
        f"parts.{role}.{key}": value
        for role in ROLES
        if (checkpoint / weights_file(role)).is_file()
        for key, value in load_file(str(checkpoint / weights_file(role))).items()
    }
    zero = engine.optimizer  # ZeRO's wrapper; .optimizer is our AdamW over its flat fp32 partitions
    _start_adamw_state(zero, step)
    _link_zero_views(zero)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        safe_set_full_fp32_param(param, weights[name].float())
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, moments[f"{name}.{key}"], key)
    return True


def _start_adamw_state(zero: Any, step: float) -> None:
    """Give AdamW a state (at ``step``, zero moments) for each of ZeRO's flat fp32 partitions that has none yet:
    AdamW makes its state at the first step, and ZeRO's per-parameter views need it now."""
    import torch

    base = zero.optimizer
    flats = getattr(zero, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    if flats is None:  # ZeRO-1/2
        flats = getattr(zero, "single_partition_of_fp32_groups", None) or [
            p for g in base.param_groups for p in g["params"]
        ]
    on_device = base.defaults.get("capturable") or base.defaults.get("fused")
    for flat in flats:
        state = base.state[flat]
        if not state:
            state["step"] = torch.tensor(step, dtype=torch.float32, device=flat.device if on_device else None)
            for key in MOMENTS:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)


def _load_scheduler_and_rng(scheduler: Any, state: Path, rank: int) -> None:
    """What ``accelerator.load_state`` restores besides model and optimizer: the schedule and this rank's RNG states."""
    from accelerate.checkpointing import load_accelerator_state, load_custom_state

    load_custom_state(scheduler, str(state), 0)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):  # as a loaded optimizer would have
        group["lr"] = lr
    load_accelerator_state(str(state), [], [], [], [], rank, map_location="cpu")  # RNG only; a new rank has none
