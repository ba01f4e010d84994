"""`iagbench score`: the metrics of a JSON-lines file or a run folder (``--write`` stores them in the folder)."""

from __future__ import annotations

import json
from pathlib import Path

from iagbench.commands.arguments import CommandOptions, Invocation, names
from iagbench.contract.errors import ConfigurationError

NAME = "score"
HELP = "score a JSON-lines file or a run folder; print the metrics as JSON"


def configure(options: CommandOptions) -> None:
    options.add("path", type=Path, help="lines with 'prediction' and 'answers' (and optional 'ctxs'), or a run folder")
    options.add("--metrics", default="", help="comma-separated metric names (default: all registered)")
    options.add("--write", action="store_true", help="for a run folder: store the new scores in it")


def run(invocation: Invocation) -> int:
    from iagbench.runs.rescore import rescore_file, rescore_run

    args, plugins = invocation.args, invocation.plugins
    metric_names = names(invocation.given("metrics")) or [entry.name for entry in plugins["metrics"]]
    metrics = [plugins["metrics"].get(name).build() for name in metric_names]
    write = invocation.given("write")
    if args.path.is_dir():
        summary = rescore_run(args.path, metrics, write=write)
    else:
        if write:
            raise ConfigurationError("--write applies to run folders only")
        summary = rescore_file(args.path, metrics)
    print(json.dumps(summary, indent=2))
    return 0
