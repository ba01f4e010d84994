"""Training curves: the loss and the evaluation em of several training folders' ``log.jsonl`` records in one PNG
(matplotlib, Agg), and a small table of each folder's final loss and best evaluation."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

Log = Sequence[dict[str, Any]]


def summary(logs: Mapping[str, Log]) -> tuple[list[str], list[list[Any]]]:
    """Header and a row per training folder: last step, final loss, best eval em and its step."""
    header = ["training", "steps", "final loss", "best eval_em", "at step"]
    body = []
    for name, records in logs.items():
        losses = [record for record in records if "loss" in record]
        evals = [record for record in records if "eval_em" in record]
        best = max(evals, key=lambda record: record["eval_em"]) if evals else None
        body.append([
            name,
            max((record.get("step", 0) for record in records), default=0),
            round(losses[-1]["loss"], 4) if losses else "",
            round(best["eval_em"], 2) if best else "",
            best["step"] if best else "",
        ])  # fmt: skip
    return header, body


def curves_png(logs: Mapping[str, Log], *, width: float = 10.0, height: float = 4.0, dpi: int = 100) -> bytes:
    """Loss by step (left) and eval em by step (right), a line per training folder, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    loss_axes, eval_axes = figure.subplots(1, 2)
    for name, records in logs.items():
        losses = [(record["step"], record["loss"]) for record in records if "loss" in record]
        evals = [(record["step"], record["eval_em"]) for record in records if "eval_em" in record]
        line = loss_axes.plot(*zip(*losses), label=name)[0] if losses else None
        if evals:
            eval_axes.plot(*zip(*evals), marker="o", label=name, color=line.get_color() if line else None)
    loss_axes.set(title="training loss", xlabel="step", ylabel="loss")
    eval_axes.set(title="evaluation", xlabel="step", ylabel="eval em (%)")
    for axes in (loss_axes, eval_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
