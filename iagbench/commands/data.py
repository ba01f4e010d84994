"""`iagbench data export` and `iagbench data stats`: a split as JSON lines, or counts and lengths per split."""

from __future__ import annotations

import json
import statistics
import sys
from typing import Any, TextIO

from iagbench.commands.arguments import CommandOptions, Invocation, add_dataset_location, dataset_args
from iagbench.contract.components import Dataset
from iagbench.contract.errors import ConfigurationError

NAME = "data"
HELP = "export or summarise datasets"


def configure(options: CommandOptions) -> None:
    actions = options.parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    export_options = CommandOptions(
        actions.add_parser("export", help="write a split as JSON lines to stdout"), "data export"
    )
    export_options.add("dataset")
    export_options.add("--split", help="the split to write (required)")
    export_options.add("--limit", type=int)
    add_dataset_location(export_options)
    stats_options = CommandOptions(actions.add_parser("stats", help="summarise a dataset's splits"), "data stats")
    stats_options.add("dataset")
    stats_options.add("--split", action="append", help="split(s) to summarise (default: all)")
    add_dataset_location(stats_options)
    options.options.update({**export_options.options, **stats_options.options})


def run(invocation: Invocation) -> int:
    args, given = invocation.args, invocation.given
    entry = invocation.plugins["datasets"].get(args.dataset)
    dataset = entry.build(**dataset_args({"dataset_args": _options(given), "data_dir": given("data_dir")}))
    if args.data_command == "export":
        if given("split") is None:
            raise ConfigurationError("iagbench data export: the option --split is required")
        export(dataset, entry.name, given("split"), given("limit"), sys.stdout)
    else:
        print(json.dumps(stats(dataset, entry.name, given("split")), indent=2))
    return 0


def _options(given) -> dict[str, Any]:  # noqa: ANN001
    from iagbench.contract.options import parse_options

    return parse_options(given("dataset_args"), flag="--dataset-args")


def _check_split(dataset: Dataset, name: str, split: str) -> None:
    if split not in dataset.splits:
        raise ConfigurationError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(dataset.splits)}")


def export(dataset: Dataset, name: str, split: str, limit: int | None, out: TextIO) -> int:
    """Write {"id","question","answers"} (plus "ctxs") lines; return how many."""
    _check_split(dataset, name, split)
    count = 0
    for example in dataset.load(split):
        if limit is not None and count >= limit:
            break
        out.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
        count += 1
    return count


def split_stats(dataset: Dataset, split: str) -> dict[str, Any]:
    examples = list(dataset.load(split))
    if not examples:
        return {"examples": 0}
    words = [len(e.question.split()) for e in examples]
    aliases = [len(e.answers) for e in examples]
    with_ctxs = [len(e.ctxs) for e in examples if e.ctxs]
    return {
        "examples": len(examples),
        "unique_ids": len({e.id for e in examples}),
        "question_words_mean": round(statistics.fmean(words), 2),
        "answers_per_question_mean": round(statistics.fmean(aliases), 2),
        "answers_per_question_max": max(aliases),
        "examples_with_ctxs": len(with_ctxs),
        "ctxs_per_example_mean": round(statistics.fmean(with_ctxs), 2) if with_ctxs else 0,
        "source": dataset.describe(split),
    }


def stats(dataset: Dataset, name: str, splits: list[str] | None) -> dict[str, Any]:
    """Per-split counts and lengths; splits without data files are reported as such."""
    summary: dict[str, Any] = {"dataset": name, "splits": {}}
    for split in splits or list(dataset.splits):
        if splits:
            _check_split(dataset, name, split)
        try:
            summary["splits"][split] = split_stats(dataset, split)
        except ConfigurationError as error:
            if splits:
                raise
            summary["splits"][split] = {"unavailable": str(error)}
    return summary
