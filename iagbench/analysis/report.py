"""Tables of results: one row per run, in markdown, csv, latex, json or html (with a plot)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from iagbench.analysis.columns import Table, table
from iagbench.analysis.cost import COLUMNS
from iagbench.analysis.rows import FIRST_METRICS, metric_columns, rows  # noqa: F401 (FIRST_METRICS, metric_columns, rows: still importable from here)
from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import RunFolder

FORMATS = ("markdown", "csv", "latex", "json", "html")
COLUMN_FORMATS = {"s/q": ".3g", "input tok/q": ".1f", "GFLOP/q": ".3g"}  # the cost columns (`analysis.cost.COLUMNS`)


def render(folders: Sequence[RunFolder], fmt: str = "markdown", **choices: Any) -> str:
    """The report in ``fmt``; ``choices`` (metrics, label, sort, ci, cost) as `iagbench.analysis.columns.table`
    takes."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown report format '{fmt}'; formats: {', '.join(FORMATS)}")
    if fmt == "html":
        from iagbench.analysis.plot import html_report

        return html_report(folders)
    found = table(folders, **choices)
    header, body = _with_ci(found, merged=fmt in ("markdown", "latex"))
    if fmt == "json":
        return json.dumps(
            {"columns": header, "rows": body, "metric_versions": found.versions}, indent=2, ensure_ascii=False
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return buffer.getvalue().rstrip("\n")
    from tabulate import tabulate

    floats = [COLUMN_FORMATS.get(name, ".2f") for name in header]
    text = tabulate(body, headers=header, tablefmt="github" if fmt == "markdown" else "latex_booktabs", floatfmt=floats)
    note = "metric versions: " + ", ".join(f"{name} v{version}" for name, version in sorted(found.versions.items()))
    if any(name in COLUMNS for name in header):
        note += (
            "; cost per question: wall seconds (imagine + read), reader input tokens, estimated GFLOP (docs/cost.md)"
        )
    if found.ci:
        note += "; ± is the half-width of the 95% bootstrap interval over examples (1000 resamples, seed 0)"
    if fmt == "markdown":
        return f"{text}\n\n{note}"
    return text.replace("±", "$\\pm$") + f"\n% {note}"


def _with_ci(found: Table, *, merged: bool) -> tuple[list[str], list[list[Any]]]:
    """Without CIs the table as it is; with them, ``mean ± half`` cells (``merged``) or a ``METRIC_ci`` column."""
    if not found.ci:
        return found.header, found.rows
    header: list[str] = []
    for name in found.header:
        header += [name, f"{name}_ci"] if name in found.metrics and not merged else [name]
    body = []
    for row, widths in zip(found.rows, found.ci):
        cells: list[Any] = []
        for name, value in zip(found.header, row):
            if name not in found.metrics:
                cells.append(value)
            elif merged:
                cells.append(f"{value:.2f} ± {widths[name]:.2f}" if name in widths and value != "" else value)
            else:
                cells += [value, round(widths[name], 2) if name in widths else ""]
        body.append(cells)
    return header, body
