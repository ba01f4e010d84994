"""What each answer costs: wall seconds per stage, reader and imaginer tokens, adapter parameters, FLOPs, peak memory.

A measurement, not configuration: kept out of the run's identity. The formulas are in docs/cost.md.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from iagbench.contract.types import Context
from iagbench.lm.flops import forward_flops

COST_VERSION = "2"  # 2: imaginer_flops and imaginer_tokens (Context.cost), in the report's GFLOP/q
TOKEN_KEYS = ("question", "context", "input", "generated")  # details["cost"]: KEY_tokens
log = logging.getLogger(__name__)


def model_shape(component: Any) -> dict[str, dict[str, int]] | None:
    """The component's ``cost_model()`` (parts -> parameters, layers, d_model), or None when it has none."""
    method = getattr(component, "cost_model", None)
    if not callable(method):
        return None
    try:
        return method() or None
    except Exception as error:  # a cost estimate never stops a run
        log.warning("%s.cost_model(): %s; no FLOPs estimate", type(component).__name__, error)
        return None


def adapter_parameters(context: Context) -> int | None:
    """Elements of the context's adapter's ``a`` and ``b`` tensors (None without an adapter)."""
    adapter = context.adapter
    if adapter is None:
        return None
    tensors = [*getattr(adapter, "a", {}).values(), *getattr(adapter, "b", {}).values()]
    return sum(int(tensor.numel()) for tensor in tensors)


def example_cost(
    answer: Any, context: Context, seconds: dict[str, float], shape: dict[str, dict[str, int]] | None
) -> dict[str, Any]:
    """One example's ``cost`` field: seconds per stage, then what the reader and adapter report."""
    cost: dict[str, Any] = {"seconds": {stage: round(value, 6) for stage, value in seconds.items()}}
    details = getattr(answer, "details", None) or {}
    counted = details.get("cost") if isinstance(details, dict) else None
    if isinstance(counted, dict):
        tokens = {key: counted[f"{key}_tokens"] for key in TOKEN_KEYS if f"{key}_tokens" in counted}
        if tokens:
            cost["tokens"] = tokens
        if shape and isinstance(counted.get("passes"), dict):
            cost["reader_flops"] = forward_flops(shape, counted["passes"])
    cost.update(imaginer_cost(context))
    parameters = adapter_parameters(context)
    if parameters is not None:
        cost["adapter_parameters"] = parameters
    return cost


def imaginer_cost(context: Context) -> dict[str, Any]:
    """What the imaginer reported in ``Context.cost``: ``imaginer_flops`` and ``imaginer_tokens`` (those it has)."""
    reported = getattr(context, "cost", None)
    if not isinstance(reported, dict):
        return {}
    found: dict[str, Any] = {}
    if _count(reported.get("flops")):
        found["imaginer_flops"] = reported["flops"]
    tokens = reported.get("tokens")
    if isinstance(tokens, dict):
        counted = {str(key): value for key, value in tokens.items() if _count(value)}
        if counted:
            found["imaginer_tokens"] = counted
    return found


def _count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def batch_costs(
    answers: Sequence[Any],
    contexts: Sequence[Context],
    imagine_s: float,
    read_s: float,
    shape: dict[str, dict[str, int]] | None,
) -> list[dict[str, Any]]:
    """Each example's cost in a batch: the batch's stage times split evenly over its examples."""
    n = max(len(answers), 1)
    seconds = {"imagine": imagine_s / n, "read": read_s / n}
    return [example_cost(answer, context, seconds, shape) for answer, context in zip(answers, contexts)]


def peak_memory(device: str) -> dict[str, Any]:
    """This process's peak: max CUDA memory allocated on a CUDA device, else the peak resident set size."""
    if device.startswith("cuda"):
        import torch

        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": "rss", "bytes": int(peak if sys.platform == "darwin" else peak * 1024)}


def _add(total: dict[str, Any], part: dict[str, Any]) -> None:
    for key, value in part.items():
        if isinstance(value, dict):
            _add(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


def run_cost(records: Iterable[dict[str, Any]], ranks: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """results.json's ``cost``: totals and per-example means of the records' costs, and peak memory.

    A measure some example lacks (a reader that does not count tokens) is left out, not counted as zero.
    ``ranks``: each process's status (its ``peak_memory``); processes run side by side, so peaks add up.
    """
    costs = [record.get("cost") for record in records]
    if not costs or any(cost is None for cost in costs):
        return None
    total: dict[str, Any] = {}
    for cost in costs:
        _add(total, cost)
    for key in [key for key in total if not all(key in cost for cost in costs)]:
        del total[key]
    for group in ("tokens", "imaginer_tokens"):
        if group in total:
            total[group] = {k: v for k, v in total[group].items() if all(k in c[group] for c in costs)}
    n = len(costs)
    result: dict[str, Any] = {"version": COST_VERSION, "n": n, "total": total, "per_example": _means(total, n)}
    peaks = [rank["peak_memory"] for rank in ranks if isinstance(rank.get("peak_memory"), dict)]
    if peaks:
        result["peak_memory"] = {
            "bytes": sum(peak["bytes"] for peak in peaks),
            "kind": "+".join(sorted({peak["kind"] for peak in peaks})),
            "per_process": [peak["bytes"] for peak in peaks],
        }
    return result


def _means(total: dict[str, Any], n: int) -> dict[str, Any]:
    return {key: _means(value, n) if isinstance(value, dict) else value / n for key, value in total.items()}


def summary(cost: dict[str, Any] | None) -> dict[str, float]:
    """Per-question report measures of a run's ``cost``: seconds, input_tokens, gflop (those it has)."""
    if not cost:
        return {}
    mean = cost.get("per_example", {})
    found: dict[str, float] = {}
    if "seconds" in mean:
        found["seconds"] = sum(mean["seconds"].values())
    if "input" in mean.get("tokens", {}):
        found["input_tokens"] = mean["tokens"]["input"]
    if "reader_flops" in mean:
        found["gflop"] = (mean["reader_flops"] + mean.get("imaginer_flops", 0)) / 1e9
    return found
