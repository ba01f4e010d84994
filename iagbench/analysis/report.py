"""Tables of results: one row per run, in markdown, csv, latex, json or html (with a plot)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from iagbench.analysis.rows import FIRST_METRICS, metric_columns, rows  # noqa: F401 (FIRST_METRICS, metric_columns: still importable from here)
from iagbench.contract.errors import ConfigurationError
from iagbench.runs.folder import RunFolder

FORMATS = ("markdown", "csv", "latex", "json", "html")


def render(folders: Sequence[RunFolder], fmt: str = "markdown") -> str:
    if fmt not in FORMATS:
        raise ConfigurationError(f"unknown report format '{fmt}'; formats: {', '.join(FORMATS)}")
    if fmt == "html":
        from iagbench.analysis.plot import html_report

        return html_report(folders)
    header, table, versions = rows(folders)
    if fmt == "json":
        return json.dumps({"columns": header, "rows": table, "metric_versions": versions}, indent=2, ensure_ascii=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(table)
        return buffer.getvalue().rstrip("\n")
    from tabulate import tabulate

    text = tabulate(table, headers=header, tablefmt="github" if fmt == "markdown" else "latex_booktabs", floatfmt=".2f")
    note = "metric versions: " + ", ".join(f"{name} v{version}" for name, version in sorted(versions.items()))
    return f"{text}\n\n{note}" if fmt == "markdown" else f"{text}\n% {note}"
