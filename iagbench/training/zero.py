"""DeepSpeed ZeRO in `iagbench train`: the whole fp32 weights and AdamW moments gathered from the shards into
every checkpoint, and re-sharded from there when a run resumes (with any number of processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.checkpoints import read_weights
from iagbench.training.folder import STATE
from iagbench.training.state import Unloadable

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


def read_moments(checkpoint: Path, model: Any) -> dict[str, Any] | None:
    """A checkpoint's whole AdamW moments (``state/optimizer_full.safetensors``), checked against ``model``'s
    trainable parameters (before ``prepare``); None if it has none (an older checkpoint: AdamW restarts)."""
    file = checkpoint / STATE / OPTIMIZER_FULL
    if not file.is_file():
        return None
    name = f"{STATE}/{OPTIMIZER_FULL}"
    try:
        moments = read_weights(file)
    except ConfigurationError as error:
        raise Unloadable(f"{name}: {str(error).split(': ', 1)[-1]}") from None
    if "step" not in moments or moments["step"].numel() != 1:
        raise Unloadable(f"{name}: no step count")
    for param_name, param in model.named_parameters():
        for key in MOMENTS if param.requires_grad else ():
            moment = moments.get(f"{param_name}.{key}")
            if moment is None or moment.shape != param.shape:
                raise Unloadable(f"{name}: no {key} of {param_name} of shape {list(param.shape)}")
    return moments


def _reshard(engine: Any, weights: dict[str, Any], moments: dict[str, Any]) -> None:
    """Load a checkpoint's whole fp32 weights and AdamW moments into this world size's ZeRO shards.

    Without DeepSpeed the optimizer state is whole on every process and loads as it is. DeepSpeed ZeRO
    shards it by process, so under DeepSpeed every checkpoint also holds the gathered AdamW moments
    (``state/optimizer_full.safetensors``, ``moments``) and fp32 weights (the ``*.safetensors`` weights,
    ``weights`` by ``parts.<role>.<key>``), from which any number of processes re-shards it (DeepSpeed's
    own shards are pickles, never read). The module already holds the checkpoint's weights (loaded
    before ``prepare``); this restores the fp32 master copies (exact under bf16) and the optimizer.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    step = float(moments["step"])
    zero = engine.optimizer  # ZeRO's wrapper; .optimizer is our AdamW over its flat fp32 partitions
    _start_adamw_state(zero, step)
    _link_zero_views(zero)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        safe_set_full_fp32_param(param, weights[name].float())
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, moments[f"{name}.{key}"], key)


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
