"""`iagbench report`: one table with a row per run (markdown, csv, latex, json, html), optionally a bar chart."""

from __future__ import annotations

from pathlib import Path

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.commands.logs import info

NAME = "report"
HELP = "one table with a row per run"


def configure(options: CommandOptions) -> None:
    options.add("runs", nargs="+", type=Path, help="run folders")
    options.add("--format", default="markdown", choices=("markdown", "csv", "latex", "json", "html"))
    options.add(
        "--plot", type=Path, metavar="FILE.png", help="also write a bar chart of the metrics with bootstrap CIs"
    )


def run(invocation: Invocation) -> int:
    from iagbench.analysis.report import render
    from iagbench.runs.folder import RunFolder

    folders = [RunFolder(path) for path in invocation.args.runs]
    plot, form = invocation.given("plot"), invocation.given("format")
    png = None
    if plot:
        from iagbench.analysis.plot import figure_png

        png = figure_png(folders)
        plot.write_bytes(png)
        info(f"plot: {plot}")
    if form == "html":
        from iagbench.analysis.plot import html_report

        print(html_report(folders, png))
    else:
        print(render(folders, form))
    return 0
