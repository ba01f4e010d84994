"""Cost columns of a report and cost ratios of a comparison, from results.json's ``cost`` (docs/cost.md)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench.runs.cost import summary

# report column -> measure of `iagbench.runs.cost.summary`, per question
COLUMNS = {"s/q": "seconds", "input tok/q": "input_tokens", "GFLOP/q": "gflop"}
MEASURES = ("seconds", "input_tokens", "gflop")


def cost_columns(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The cost columns some run has, and each run's cells ("" where a run lacks the measure)."""
    found = [summary(result.get("cost")) for result in results]
    header = [name for name, key in COLUMNS.items() if any(key in measures for measures in found)]
    cells = [[_cell(measures.get(COLUMNS[name]), COLUMNS[name]) for name in header] for measures in found]
    return header, cells


def _cell(value: float | None, measure: str) -> float | str:
    if value is None:
        return ""
    return round(value, 4 if measure == "seconds" else 3 if measure == "gflop" else 1)


def cost_ratios(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Per cost measure both runs have: A's and B's per-question value and the ratio B / A (None where A is 0)."""
    sa, sb = summary(a.get("cost")), summary(b.get("cost"))
    rows = []
    for measure in MEASURES:
        if measure in sa and measure in sb:
            ratio = sb[measure] / sa[measure] if sa[measure] else None
            rows.append({"measure": measure, "a": sa[measure], "b": sb[measure], "ratio": ratio})
    return rows
