"""Accuracy against cost: one point per run, its metric's bootstrap interval as an error bar (matplotlib, Agg).

The cost is a per-question measure of `iagbench.runs.cost.summary` (seconds, input_tokens, gflop);
runs without it are left out, with a warning. The runs no other run beats on both axes (higher metric,
lower cost) are joined by the Pareto front.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

from iagbench.analysis.plot import labels, run_intervals
from iagbench.analysis.stats import LEVEL, SAMPLES
from iagbench.contract.errors import ConfigurationError
from iagbench.runs.cost import summary
from iagbench.runs.folder import RunFolder

COSTS = {"gflop": "GFLOP per question (estimate)", "seconds": "wall seconds per question", "input_tokens": "reader input tokens per question"}  # fmt: skip
log = logging.getLogger(__name__)


def front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, score) no other point beats: as cheap or cheaper and as good or better."""
    best = []
    for i, (cost, score) in enumerate(points):
        if not any((c <= cost and s >= score) and (c, s) != (cost, score) for c, s in points):
            best.append(i)
    return sorted(best, key=lambda i: points[i][0])


def pareto_png(folders: Sequence[RunFolder], metric: str = "em", cost: str = "gflop") -> bytes:
    """The scatter of ``metric`` (percent, with its bootstrap interval) against ``cost`` per question, as PNG."""
    if cost not in COSTS:
        raise ConfigurationError(f"--pareto-cost {cost}: expected one of {', '.join(COSTS)}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    results = [folder.results() for folder in folders]
    names = labels(results)
    points, kept = [], []
    for folder, result, name in zip(folders, results, names):
        measure = summary(result.get("cost")).get(cost)
        interval = run_intervals(folder, [metric]).get(metric)
        if measure is None or interval is None:
            log.warning("pareto: %s has no %s; left out", folder.path, metric if interval is None else f"cost {cost}")
            continue
        points.append((measure, interval.estimate))
        kept.append((name, interval))
    if not points:
        raise ConfigurationError(f"--pareto: no run has both '{metric}' scores and a '{cost}' cost")
    figure = Figure(figsize=(7.0, 4.8), layout="constrained")
    axes = figure.add_subplot()
    for (x, y), (name, interval) in zip(points, kept):
        axes.errorbar([x], [y], yerr=[[y - interval.low], [interval.high - y]], fmt="o", capsize=4, label=name)
    best = front(points)
    axes.plot(
        [points[i][0] for i in best], [points[i][1] for i in best], "--", color="grey", lw=1, label="Pareto front"
    )
    xs = [x for x, _ in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:  # costs an order of magnitude apart: a log axis
        axes.set_xscale("log")
    axes.set_xlabel(COSTS[cost])
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(f"error bars: {100 * LEVEL:g}% bootstrap CI over examples ({SAMPLES} resamples)", fontsize=9)
    axes.legend(fontsize=7, loc="best")
    axes.grid(alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
