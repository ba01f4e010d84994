"""Scoring helpers: score one example with several metrics, average the scores over a run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from iagbench.contract.components import Metric
from iagbench.contract.types import Passage


def score_example(
    metrics: Sequence[Metric], prediction: str, answers: Sequence[str], passages: Sequence[Passage]
) -> dict[str, float]:
    """Every metric's scores for one example, merged; a metric that raises stops the run."""
    scores: dict[str, float] = {}
    for metric in metrics:
        for key, value in metric.score(prediction, answers, passages).items():
            if key in scores:
                raise ValueError(f"metric '{metric.name}' returned score '{key}', which another metric returned too")
            scores[key] = float(value)
    return scores


def aggregate(records: Iterable[dict[str, float]]) -> dict[str, dict]:
    """Per score key, the mean in percent over the examples that have the key, and how many those are."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for record in records:
        for key, value in record.items():
            totals[key] = totals.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {
        "metrics": {key: 100.0 * totals[key] / counts[key] for key in totals},
        "counts": dict(counts),
    }


def metric_versions(metrics: Iterable[Metric]) -> dict[str, str]:
    """Metric name -> version, recorded next to the scores."""
    return {metric.name: metric.version for metric in metrics}
