"""What tells runs apart in a report: the options that differ between them (from each run's config.json),
labels, the chosen metrics, sorting, and bootstrap ``± CI`` half-widths."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.analysis.cost import cost_columns
from iagbench.analysis.rows import metric_columns, rows
from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import RunFolder

BASE = ("run", "dataset", "split", "imaginer", "reader")
NOT_COLUMNS = {"dataset.path", "dataset.data_dir"}  # the dataset's file names the run in the dataset column
FIELD = re.compile(r"\{([^{}]+)\}")


@dataclass
class Table:
    """A report's header and rows; ``ci`` holds each row's half-widths by metric (when asked for)."""

    header: list[str]
    rows: list[list[Any]]
    versions: dict[str, str]
    metrics: list[str]
    ci: list[dict[str, float]] = field(default_factory=list)


def _flatten(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_options(config: dict[str, Any]) -> dict[str, Any]:
    """A run's options by column name: ``dataset.X``, ``imaginer.X``, ``reader.X``, ``limit``, ``seed``."""
    identity = config.get("identity", {})
    options: dict[str, Any] = {}
    for part in ("dataset", "imaginer", "reader"):
        options.update(_flatten(identity.get(part, {}).get("options") or {}, f"{part}."))
    for key in ("limit", "seed"):
        options[key] = identity.get(key)
    return options


def differing(options: Sequence[dict[str, Any]]) -> list[str]:
    """The option names whose values are not the same in every run (a missing option counts as unset)."""
    keys = sorted({key for found in options for key in found} - NOT_COLUMNS)
    return [key for key in keys if len({repr(found.get(key)) for found in options}) > 1]


def dataset_names(results: Sequence[dict[str, Any]], options: Sequence[dict[str, Any]]) -> list[str]:
    """The dataset column: the name, or for a dataset read from a file (``path=``) the file's name (its whole path
    where two runs' files share a name)."""
    paths = [found.get("dataset.path") for found in options]
    names = {Path(str(path)).name for path in paths if path}
    whole = len(names) < len({str(path) for path in paths if path})
    return [
        result["dataset"] if not path else (str(path) if whole else Path(str(path)).name)
        for result, path in zip(results, paths)
    ]


def labels(spec: str, fields: Sequence[dict[str, Any]]) -> list[str]:
    """``--label``: a template of ``{field}``s (run, dataset, split, imaginer, reader, n, hash and the option
    names, e.g. ``{reader.k}``), or one name per run, comma-separated."""
    if "{" not in spec:
        given = [name.strip() for name in spec.split(",")]
        if len(given) != len(fields):
            raise ConfigurationError(
                f"--label: {len(given)} names for {len(fields)} runs (or give a {{field}} template)"
            )
        return given

    def fill(values: dict[str, Any]) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise ConfigurationError(f"--label: unknown field '{{{name}}}'; fields: {', '.join(sorted(values))}")
            return "" if values[name] is None else str(values[name])

        return FIELD.sub(one, spec)

    return [fill(values) for values in fields]


def _choose(columns: list[str], metrics: str | None) -> list[str]:
    if not metrics:
        return columns
    chosen = [name.strip() for name in metrics.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in columns]
    if unknown:
        raise ConfigurationError(f"--metrics: no metric '{unknown[0]}' in these runs; metrics: {', '.join(columns)}")
    return chosen


def _half_widths(folder: RunFolder, metrics: Sequence[str]) -> dict[str, float]:
    from iagbench.analysis.plot import run_intervals

    return {key: interval.half_width for key, interval in run_intervals(folder, metrics).items()}


def table(
    folders: Sequence[RunFolder],
    *,
    metrics: str | None = None,
    label: str | None = None,
    sort: str | None = None,
    ci: bool = False,
    cost: bool = True,
) -> Table:
    """The report table: base columns, a column per differing option, n, the chosen metrics, the cost columns the
    runs have (unless ``cost`` is false; docs/cost.md); sorted if asked."""
    _, _, versions = rows(folders)  # validates: finished runs, one version per metric
    results = [folder.results() for folder in folders]
    options = [run_options(folder.config()) for folder in folders]
    chosen = _choose(metric_columns(results), metrics)
    extra = differing(options)
    names = dataset_names(results, options)
    header = [*BASE, *extra, "n", *chosen]
    body = [
        [result["run"], name, result["split"], result["imaginer"], result["reader"]]
        + ["" if found.get(key) is None else str(found[key]) for key in extra]
        + [result["n"]]
        + ["" if result["metrics"].get(key) is None else round(result["metrics"][key], 2) for key in chosen]
        for result, found, name in zip(results, options, names)
    ]
    if cost:
        cost_header, cost_cells = cost_columns(results)
        header += cost_header
        body = [row + cells for row, cells in zip(body, cost_cells)]
    if label:
        fields = [
            {**found, "run": result["run"], "dataset": name, "split": result["split"], "imaginer": result["imaginer"],
             "reader": result["reader"], "n": result["n"], "hash": result.get("config_hash", "")[:8]}
            for result, found, name in zip(results, options, names)
        ]  # fmt: skip
        header.insert(0, "label")
        body = [[text, *row] for text, row in zip(labels(label, fields), body)]
    widths = [_half_widths(folder, chosen) for folder in folders] if ci else []
    if sort:
        if sort not in chosen:
            raise ConfigurationError(f"--sort {sort}: not a metric column; metrics: {', '.join(chosen)}")
        column = header.index(sort)
        order = sorted(range(len(body)), key=lambda i: (body[i][column] == "", -(body[i][column] or 0)))
        body = [body[i] for i in order]
        widths = [widths[i] for i in order] if widths else widths
    return Table(header, body, versions, chosen, widths)
