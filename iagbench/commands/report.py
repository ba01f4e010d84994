"""`iagbench report`: one table with a row per run (markdown, csv, latex, json, html), optionally a bar chart;
``--train DIR...``: training folders' loss and evaluation curves and a small table."""

from __future__ import annotations

import logging
from pathlib import Path

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.commands.logs import info
from iagbench.contract.errors import ConfigurationError

NAME = "report"
HELP = "one table with a row per run (or, with --train, training curves)"
log = logging.getLogger(__name__)


def configure(options: CommandOptions) -> None:
    options.add("runs", nargs="*", type=Path, help="run folders (folders that are not runs are skipped)")
    options.add("--format", default="markdown", choices=("markdown", "csv", "latex", "json", "html"))
    options.add("--plot", type=Path, metavar="FILE.png",
                help="also write a bar chart of the metrics with bootstrap CIs (with --train: the curves)")  # fmt: skip
    options.add("--metrics", metavar="M,...", help="only these metric columns, in this order")
    options.add("--sort", metavar="METRIC", help="rows by this metric, best first")
    options.add("--label", metavar="TEMPLATE|NAME,...",
                help="a label column: a template such as '{reader}-k{imaginer.k}' (fields: run, dataset, split, "
                "imaginer, reader, n, hash and the option names), or one name per run, comma-separated")  # fmt: skip
    options.add("--ci", action="store_true", help="± the 95%% bootstrap interval's half-width after each metric")
    options.add("--no-cost", action="store_true", help="hide the cost columns (s/q, input tok/q, GFLOP/q)")
    options.add("--pareto", type=Path, metavar="FILE.png", help="also write a plot of a metric against a cost per run")
    options.add("--pareto-metric", default="em", metavar="METRIC", help="the --pareto metric (default: em)")
    options.add("--pareto-cost", default="gflop", choices=("gflop", "seconds", "input_tokens"),
                help="the --pareto cost per question (default: gflop)")  # fmt: skip
    options.add("--train", nargs="+", type=Path, metavar="DIR", help="training folders: their loss and eval curves")


def run(invocation: Invocation) -> int:
    train = invocation.given("train")
    if train:
        if invocation.given("runs"):
            raise ConfigurationError("iagbench report: give run folders or --train DIR..., not both")
        return _training(train, invocation.given("plot"))
    folders = run_folders(invocation.given("runs") or [])
    plot, form = invocation.given("plot"), invocation.given("format")
    png = None
    if plot:
        from iagbench.analysis.plot import figure_png

        png = figure_png(folders)
        plot.write_bytes(png)
        info(f"plot: {plot}")
    pareto = invocation.given("pareto")
    if pareto:
        from iagbench.analysis.pareto import pareto_png

        pareto.write_bytes(pareto_png(folders, invocation.given("pareto_metric"), invocation.given("pareto_cost")))
        info(f"pareto plot: {pareto}")
    if form == "html":
        from iagbench.analysis.plot import html_report

        print(html_report(folders, png))
        return 0
    from iagbench.analysis.report import render

    choices = {name: invocation.given(name) for name in ("metrics", "label", "sort", "ci")}
    choices["cost"] = not invocation.given("no_cost")
    print(render(folders, form, **choices))
    return 0


def run_folders(paths: list[Path]) -> list:
    """The run folders among ``paths`` (a folder without config.json is skipped, with a note on stderr)."""
    from iagbench.runs.folder import RunFolder

    if not paths:
        raise ConfigurationError("iagbench report: give run folders (or --train DIR...)")
    folders = [RunFolder(path) for path in paths]
    runs = [folder for folder in folders if folder.config_path.is_file()]
    if not runs and len(paths) == 1:
        raise ConfigurationError(_not_a_run(paths[0]))
    if not runs:
        raise ConfigurationError(f"report: none of {', '.join(map(str, paths))} is a run folder (no config.json)")
    for folder in folders:
        if folder not in runs:
            log.warning("report: skipping %s", _not_a_run(folder.path))
    return runs


def _not_a_run(path: Path) -> str:
    return f"no run folder at {path}" if not path.exists() else f"{path}: not a run folder (no config.json)"


def _training(folders: list[Path], plot: Path | None) -> int:
    from tabulate import tabulate

    from iagbench.analysis.curves import curves_png, summary
    from iagbench.training.folder import read_log

    logs = {}
    for folder in folders:
        if not folder.is_dir():
            raise ConfigurationError(f"--train {folder}: no such folder")
        logs[str(folder)] = read_log(folder)
        if not logs[str(folder)]:
            log.warning("report: %s: no log.jsonl records", folder)
    header, body = summary(logs)
    print(tabulate(body, headers=header, tablefmt="github", floatfmt=".4g"))
    if plot:
        plot.write_bytes(curves_png(logs))
        info(f"plot: {plot}")
    return 0
