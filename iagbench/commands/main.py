"""The `iagbench` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from iagbench.version import __version__
from iagbench.runs.batching import AUTO
from iagbench_plugins.imagination.commands import add_compress_parser, command_compress
from iagbench.contract.errors import ConfigurationError, IagbenchError
from iagbench.contract.options import parse_options
from iagbench.commands.recipes import add_recipe_arguments
from iagbench.contract.plugins import Plugins, default_plugins
from iagbench.contract.registry import KINDS
from iagbench.commands.train import add_train_parser, command_train

DATA_ENV = "IAGBENCH_DATA"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iagbench", description="Benchmark imaginer x reader combinations on open-domain QA.")
    parser.add_argument("--version", action="version", version=f"iagbench {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run (or resume) an imaginer + reader over a dataset split")
    _component_arguments(run)
    run.add_argument("--imaginer", default="none", help="imaginer name (default: none)")
    run.add_argument("--reader", required=True, help="reader name, e.g. smollm2-135m")
    run.add_argument("--imaginer-args", default="", metavar="K=V,...", help="imaginer options")
    run.add_argument("--reader-args", default="", metavar="K=V,...", help="reader options")
    run.add_argument("--metrics", default="", help="comma-separated metric names (default: all registered)")
    run.add_argument(
        "--batch-size", type=batch_size, default=16, metavar="N|auto",
        help="examples per imaginer/reader call (default: 16); auto: with CUDA the largest that fits (starts at 16, "
        "doubles while batches fit, halves and retries on out-of-memory), without CUDA 16",
    )  # fmt: skip
    run.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    run.add_argument("--output", type=Path, help="run folder (default: runs/<components>__<config hash>)")
    run.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("IAGBENCH_RUNS", "runs")), help="where default run folders go")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--wait-timeout", type=float, default=1800.0, metavar="SECONDS",
        help="under torchrun and the like: how long a process waits for the others' files without progress (default: 1800)",
    )  # fmt: skip
    add_recipe_arguments(run)

    listing = commands.add_parser("list", help="list registered components (never imports torch)")
    listing.add_argument("kind", nargs="?", choices=KINDS, help="one kind only")

    commands.add_parser("plugins", help="installed plugins, versions and hooks, as JSON")
    commands.add_parser("recipes", help="the named recipes (rows of the paper's table) for run/train --recipe")

    score = commands.add_parser("score", help="score a JSON-lines file or a run folder; print the metrics as JSON")
    score.add_argument("path", type=Path, help="lines with 'prediction' and 'answers' (and optional 'ctxs'), or a run folder")
    score.add_argument("--metrics", default="", help="comma-separated metric names (default: all registered)")
    score.add_argument("--write", action="store_true", help="for a run folder: store the new scores in it")

    report = commands.add_parser("report", help="one table with a row per run")
    report.add_argument("runs", nargs="+", type=Path, help="run folders")
    report.add_argument("--format", default="markdown", choices=("markdown", "csv", "latex", "json", "html"))
    report.add_argument("--plot", type=Path, metavar="FILE.png", help="also write a bar chart of the metrics with bootstrap CIs")

    compare = commands.add_parser("compare", help="B - A per metric with paired bootstrap CIs, McNemar on em, flipped examples")
    compare.add_argument("run_a", type=Path, metavar="RUN_A", help="run folder A")
    compare.add_argument("run_b", type=Path, metavar="RUN_B", help="run folder B")
    compare.add_argument("--metrics", default="", help="comma-separated score keys (default: all both runs have)")
    compare.add_argument("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples (default: 1000)")
    compare.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    compare.add_argument("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    compare.add_argument("--show", type=int, default=10, metavar="N", help="flipped examples shown each way (default: 10)")
    compare.add_argument("--format", default="text", choices=("text", "json"))

    index = commands.add_parser("index", help="build retrieval indexes ahead of runs")
    index_commands = index.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = index_commands.add_parser("build", help="build (or find) the index of a corpus; print where it is, as JSON")
    build.add_argument("--corpus", required=True, help="DPR passages TSV, {id,title,text} JSON lines, or FlashRAG {id,contents} JSON lines")
    build.add_argument("--kind", required=True, metavar="IMAGINER", help="retriever whose index to build: bm25, dense or hybrid")
    build.add_argument("--model", help="dense model: name, hub id or folder (default: all-MiniLM-L6-v2)")
    build.add_argument("--args", default="", metavar="K=V,...", help="other retriever options (k1=, b=, normalize=...)")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")

    retrieve = commands.add_parser("retrieve", help="write each question's retrieved passages as FiD-format JSON lines")
    _component_arguments(retrieve)
    retrieve.add_argument("--imaginer", required=True, help="retriever, e.g. bm25")
    retrieve.add_argument("--imaginer-args", default="", metavar="K=V,...", help="retriever options, e.g. corpus=PATH,k=100")
    retrieve.add_argument("--output", type=Path, required=True, help="JSON-lines file to write (.gz: gzip)")
    retrieve.add_argument("--batch-size", type=int, default=64, help="questions per retriever call (default: 64)")
    retrieve.add_argument("--no-progress", action="store_true", help="no progress bar")

    data = commands.add_parser("data", help="export or summarise datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    export = data_commands.add_parser("export", help="write a split as JSON lines to stdout")
    export.add_argument("dataset")
    export.add_argument("--split", required=True)
    export.add_argument("--limit", type=int)
    _data_arguments(export)
    stats = data_commands.add_parser("stats", help="summarise a dataset's splits")
    stats.add_argument("dataset")
    stats.add_argument("--split", action="append", help="split(s) to summarise (default: all)")
    _data_arguments(stats)

    add_recipe_arguments(add_train_parser(parser, commands))
    add_compress_parser(commands)
    return parser


def _component_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="sample", help="dataset name (default: sample, the smoke-test set)")
    parser.add_argument("--split", default="test", help="split (default: test)")
    parser.add_argument("--limit", type=int, help="only the first N examples")
    _data_arguments(parser)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help=f"data folder (default: ${DATA_ENV})")
    parser.add_argument("--dataset-args", default="", metavar="K=V,...", help="dataset options")


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_options(args.dataset_args, flag="--dataset-args")
    if args.data_dir:
        if "data_dir" in options:
            raise ConfigurationError("give the data folder once: --data-dir or --dataset-args data_dir=...")
        options["data_dir"] = args.data_dir
    return options


def component_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `run` and `train` share: the dataset split, the components and their options, the limit."""
    return {
        "dataset": args.dataset,
        "split": args.split,
        "imaginer": args.imaginer,
        "reader": args.reader,
        "dataset_args": dataset_options(args),
        "imaginer_args": parse_options(args.imaginer_args, flag="--imaginer-args"),
        "reader_args": parse_options(args.reader_args, flag="--reader-args"),
        "limit": args.limit,
    }


def batch_size(text: str) -> int | str:
    """``--batch-size``: an integer (checked by the command) or ``auto``."""
    return AUTO if text == AUTO else int(text)


def names(text: str) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] or None


def non_default_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Command-line values that differ from their defaults (recorded with every run)."""
    sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    changed = {}
    for action in sub._actions:
        if action.dest in ("help",):
            continue
        value = getattr(args, action.dest, None)
        if value != action.default:
            changed[action.dest] = str(value) if isinstance(value, Path) else value
    return changed


def command_run(args: argparse.Namespace, plugins: Plugins, parser: argparse.ArgumentParser) -> int:
    from iagbench.runs.processes import Processes
    from iagbench.analysis.report import render
    from iagbench.runs.runner import RunSpec, run
    from iagbench.runs.folder import RunFolder

    if args.batch_size != AUTO and args.batch_size < 1:
        raise ConfigurationError(f"--batch-size {args.batch_size}: expected a positive integer or auto")
    if args.wait_timeout <= 0:
        raise ConfigurationError(f"--wait-timeout {args.wait_timeout}: expected a positive number of seconds")
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError(f"--limit {args.limit}: expected a positive integer")
    spec = RunSpec(
        **component_options(args),
        metrics=names(args.metrics),
        batch_size=args.batch_size,
        seed=args.seed,
        output=args.output,
        runs_dir=args.runs_dir,
        wait_timeout=args.wait_timeout,
    )
    processes = Processes.from_environment()
    options = non_default_options(parser, args)
    folder, _ = run(spec, plugins, progress=not args.no_progress, log=_log, non_default=options, processes=processes)
    if processes.main:  # one table from a multi-process run
        print(render([RunFolder(folder.path)]))
        print(f"\nrun folder: {folder.path}")
    return 0


def command_list(args: argparse.Namespace, plugins: Plugins) -> int:
    for kind in [args.kind] if args.kind else KINDS:
        print(f"{kind}:")
        for entry in plugins[kind]:
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<16} {entry.description}{aliases}  [{entry.plugin}]")
    return 0


def command_recipes() -> int:
    from iagbench.commands.recipes import listing

    for name, row, description in listing():
        print(f"{name:<16} {row}: {description}")
    return 0


def command_plugins(plugins: Plugins) -> int:
    print(json.dumps(plugins.describe(), indent=2))
    return 0


def command_score(args: argparse.Namespace, plugins: Plugins) -> int:
    from iagbench.runs.rescore import rescore_file, rescore_run

    metric_names = names(args.metrics) or [entry.name for entry in plugins["metrics"]]
    metrics = [plugins["metrics"].get(name).build() for name in metric_names]
    if args.path.is_dir():
        summary = rescore_run(args.path, metrics, write=args.write)
    else:
        if args.write:
            raise ConfigurationError("--write applies to run folders only")
        summary = rescore_file(args.path, metrics)
    print(json.dumps(summary, indent=2))
    return 0


def command_report(args: argparse.Namespace) -> int:
    from iagbench.analysis.report import render
    from iagbench.runs.folder import RunFolder

    folders = [RunFolder(path) for path in args.runs]
    png = None
    if args.plot:
        from iagbench.analysis.plot import figure_png

        png = figure_png(folders)
        args.plot.write_bytes(png)
        _log(f"plot: {args.plot}")
    if args.format == "html":
        from iagbench.analysis.plot import html_report

        print(html_report(folders, png))
    else:
        print(render(folders, args.format))
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from iagbench.analysis.compare import compare, render

    if args.bootstrap < 1:
        raise ConfigurationError(f"--bootstrap {args.bootstrap}: expected a positive integer")
    if not 0 < args.level < 1:
        raise ConfigurationError(f"--level {args.level}: expected a number between 0 and 1")
    report = compare(args.run_a, args.run_b, metrics=names(args.metrics), samples=args.bootstrap, seed=args.seed, level=args.level)
    print(render(report, args.format, show=args.show))
    return 0


def command_data(args: argparse.Namespace, plugins: Plugins) -> int:
    from iagbench.commands.data import export, stats

    entry = plugins["datasets"].get(args.dataset)
    dataset = entry.build(**dataset_options(args))
    if args.data_command == "export":
        export(dataset, entry.name, args.split, args.limit, sys.stdout)
    else:
        print(json.dumps(stats(dataset, entry.name, args.split), indent=2))
    return 0


def command_index(args: argparse.Namespace, plugins: Plugins) -> int:
    from iagbench.commands.retrieve import index_build

    options = parse_options(args.args, flag="--args")
    if args.model:
        if "model" in options:
            raise ConfigurationError("give the model once: --model or --args model=...")
        options["model"] = args.model
    print(json.dumps(index_build(plugins, args.kind, args.corpus, options, progress=not args.no_progress), indent=2))
    return 0


def command_retrieve(args: argparse.Namespace, plugins: Plugins) -> int:
    from iagbench.commands.retrieve import retrieve

    print(json.dumps(retrieve(plugins, **passage_job_options(args)), indent=2))
    return 0


def passage_job_options(args: argparse.Namespace) -> dict[str, Any]:
    """What `retrieve` and `compress` share: questions of a split, an imaginer, an output file, progress and log."""
    if args.limit is not None and args.limit < 1:
        raise ConfigurationError(f"--limit {args.limit}: expected a positive integer")
    return {
        "dataset": args.dataset,
        "dataset_options": dataset_options(args),
        "split": args.split,
        "imaginer": args.imaginer,
        "imaginer_options": parse_options(args.imaginer_args, flag="--imaginer-args"),
        "output": args.output,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "progress": not args.no_progress,
        "log": _log,
    }


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from iagbench.commands.recipes import expand

    parser = build_parser()
    try:
        argv, recipe = expand(parser, list(sys.argv[1:] if argv is None else argv))
    except IagbenchError as error:
        print(f"iagbench: error: {error}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if recipe:  # recorded with the run or training (non_default_options.recipe)
        args.recipe = recipe
    try:
        if args.command == "recipes":
            return command_recipes()
        if args.command == "report":
            return command_report(args)
        if args.command == "compare":
            return command_compare(args)
        plugins = default_plugins()
        if args.command == "run":
            return command_run(args, plugins, parser)
        if args.command == "train":
            return command_train(args, plugins, non_default_options(parser, args))
        if args.command == "list":
            return command_list(args, plugins)
        if args.command == "plugins":
            return command_plugins(plugins)
        if args.command == "score":
            return command_score(args, plugins)
        if args.command == "index":
            return command_index(args, plugins)
        if args.command == "retrieve":
            return command_retrieve(args, plugins)
        if args.command == "compress":
            return command_compress(args, plugins)
        return command_data(args, plugins)
    except IagbenchError as error:
        print(f"iagbench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iagbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
