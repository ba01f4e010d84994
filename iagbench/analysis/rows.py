"""Report rows shared by the table (`iagbench.analysis.report`) and the plot (`iagbench.analysis.plot`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import RunFolder

FIRST_METRICS = ("em", "f1", "subspan_em")


def metric_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    """Metric keys in a stable order: em, f1, subspan_em, has_answer@k by k, then the rest by name."""
    keys = {key for result in results for key in result["metrics"]}

    def order(key: str) -> tuple[int, int, str]:
        if key in FIRST_METRICS:
            return (0, FIRST_METRICS.index(key), key)
        name, _, k = key.partition("@")
        return (1, int(k) if k.isdigit() else 0, name) if k else (2, 0, key)

    return sorted(keys, key=order)


def rows(folders: Sequence[RunFolder]) -> tuple[list[str], list[list[Any]], dict[str, str]]:
    """Header, rows, and the metric versions (a metric whose version differs between runs is an error)."""
    results = [folder.results() for folder in folders]
    columns = metric_columns(results)
    versions: dict[str, str] = {}
    for folder, result in zip(folders, results):
        for name, version in result.get("metric_versions", {}).items():
            if versions.setdefault(name, version) != version:
                raise ConfigurationError(
                    f"{folder.results_path}: metric '{name}' is version {version} here but {versions[name]} in an "
                    "earlier run; re-score with `iagbench score RUN --write` before comparing"
                )
    header = ["run", "dataset", "split", "imaginer", "reader", "n", *columns]
    table = [
        [result["run"], result["dataset"], result["split"], result["imaginer"], result["reader"], result["n"]]
        + [_cell(result["metrics"].get(column)) for column in columns]
        for result in results
    ]
    return header, table, versions


def _cell(value: float | None) -> float | str:
    return "" if value is None else round(value, 2)
