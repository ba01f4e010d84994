"""Experiment files and comma lists for `iagbench run`: a grid of datasets x imaginers x readers x options, each
entry one resumable run folder, run one after another in this process (``--config exp.toml|exp.yaml``, or
``--dataset nq,webq --reader a,b``).

The file (TOML, or YAML through PyYAML) has up to four top-level keys::

    description = "k sweep"                      # optional
    [grid]                                       # every combination of the lists (a single value: one)
    dataset = ["nq", "webq"]
    imaginer = ["none", "bm25"]
    reader = ["smollm2-135m"]
    [options]                                    # every entry: any `iagbench run` option
    limit = 100
    reader_args = "max_new_tokens=16"            # or a table: {max_new_tokens = 16}
    [[entry]]                                    # with `match`: overrides of the grid entries it matches
    match = {imaginer = "bm25"}
    imaginer_args = {k = 5}
    [[entry]]                                    # without: one more run
    dataset = "nq"
    imaginer = "bm25"
    reader = "smollm2-135m"

Options typed on the command line override every entry's; ``*_args`` tables merge (the later keys win)."""

from __future__ import annotations

import argparse
import copy
import itertools
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from iagbench.commands.arguments import CommandOptions, job_spec, names
from iagbench.commands.recipes import _did_you_mean, as_options, recipe_of
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.job import JobSpec

TOP_KEYS = ("description", "grid", "options", "entry")
AXES = ("dataset", "imaginer", "reader")  # the options a comma list on the command line spreads over
NOT_IN_EXPERIMENTS = {"recipe", "set", "output", "help", "launcher_local_rank", "local_rank"}
SUFFIXES = (".toml", ".yaml", ".yml")


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE.toml|FILE.yaml", default=argparse.SUPPRESS,
                        help="an experiment file: a grid of runs, each in its own resumable folder (docs/benchmarks.md)")  # fmt: skip


def read(path: Path) -> dict[str, Any]:
    """The experiment file's content, its format and top-level keys checked."""
    if path.suffix not in SUFFIXES:
        raise ConfigurationError(f"--config {path}: expected a .toml, .yaml or .yml file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigurationError(f"--config {path}: cannot be read: {error.strerror}") from None
    try:
        if path.suffix == ".toml":
            content = tomllib.loads(text)
        else:
            import yaml

            content = yaml.safe_load(text)
    except Exception as error:  # tomllib's and PyYAML's errors: one line naming the file
        kind = "TOML" if path.suffix == ".toml" else "YAML"
        raise ConfigurationError(f"{path}: not valid {kind}: {' '.join(str(error).split())}") from None
    if not isinstance(content, dict):
        raise ConfigurationError(f"{path}: expected a table (mapping) at the top")
    for key in content:
        if key not in TOP_KEYS:
            raise ConfigurationError(f"{path}: unknown key '{key}'{_did_you_mean(str(key), TOP_KEYS)} "
                                     f"(expected: {', '.join(TOP_KEYS)})")  # fmt: skip
    return content


def _table(content: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = content.get(key) or {}
    if not isinstance(value, dict):
        raise ConfigurationError(f"{path}: key '{key}': expected a table")
    return dict(value)


def _override(base: dict[str, Any], extra: dict[str, Any], path: Path) -> dict[str, Any]:
    """``base`` with ``extra`` on top; ``*_args`` options merge key by key."""
    merged = dict(base)
    for key, value in extra.items():
        if str(key).endswith("_args") and key in merged:
            merged[key] = {**as_options(merged[key], path, "entry", key), **as_options(value, path, "entry", key)}
        else:
            merged[key] = value
    return merged


def entries(path: Path) -> list[dict[str, Any]]:
    """The runs an experiment file describes: option name -> value (as the file gives them), one dict per run."""
    content = read(path)
    grid, options = _table(content, "grid", path), _table(content, "options", path)
    axes = {key: value if isinstance(value, list) else [value] for key, value in grid.items()}
    for key, values in axes.items():
        if not values:
            raise ConfigurationError(f"{path}: [grid] key '{key}': an empty list")
    runs = [_override(options, dict(zip(axes, combo)), path) for combo in itertools.product(*axes.values())]
    if not grid:
        runs = []
    extra = content.get("entry") or []
    if not isinstance(extra, list) or not all(isinstance(item, dict) for item in extra):
        raise ConfigurationError(f"{path}: key 'entry': expected a list of tables ([[entry]])")
    for number, item in enumerate(extra, 1):
        item = dict(item)
        match = item.pop("match", None)
        if match is None:
            runs.append(_override(options, item, path))
            continue
        if not isinstance(match, dict) or not match:
            raise ConfigurationError(f"{path}: entry {number}: key 'match': expected a table of option values")
        hits = [i for i, run in enumerate(runs) if all(run.get(k) == v for k, v in match.items())]
        if not hits:
            raise ConfigurationError(f"{path}: entry {number}: match {match} matches no [grid] entry")
        for i in hits:
            runs[i] = _override(runs[i], item, path)
    if not runs:
        raise ConfigurationError(f"{path}: no runs: give a [grid] or [[entry]] tables")
    return runs


class EntryMerge:
    """One experiment entry merged into `iagbench run`'s options (the interface `job_spec` takes from recipes)."""

    def __init__(self, values: dict[str, Any], path: Path, number: int):
        self.values, self.path, self.number = values, path, number

    def merge_into(
        self, options: CommandOptions, given: dict[str, Any], defaults: dict[str, Any]
    ) -> tuple[dict[str, Any], None]:
        known = set(options.options) - NOT_IN_EXPERIMENTS
        merged: dict[str, Any] = {}
        for key, value in self.values.items():
            dest = str(key).replace("-", "_")
            where = f"{self.path}: entry {self.number} key '{key}'"
            if dest not in known:
                raise ConfigurationError(
                    f"{where}: iagbench run has no option --{dest.replace('_', '-')}{_did_you_mean(dest, known)}"
                    if dest not in NOT_IN_EXPERIMENTS
                    else f"{where}: not in experiment files (each entry has its own run folder)"
                )
            if dest.endswith("_args"):
                merged[dest] = as_options(value, self.path, f"entry {self.number}", dest)
            elif dest not in given and not options.partners(dest) & set(given):
                merged[dest] = options.convert(dest, value, where)
        return merged, None


def is_experiment(args: argparse.Namespace) -> bool:
    """Whether the command line asks for several runs: ``--config``, or a comma list in an axis."""
    return hasattr(args, "config") or any("," in str(getattr(args, axis, "")) for axis in AXES)


def jobs(options: CommandOptions, args: argparse.Namespace) -> Iterator[JobSpec]:
    """The job of every run: each file entry (or the command line alone) times the comma lists' combinations."""
    path = getattr(args, "config", None)
    if path is not None and getattr(args, "recipe", None) is not None:
        raise ConfigurationError("give --config or --recipe, not both (an experiment entry may not name a recipe)")
    if getattr(args, "output", None) is not None:
        raise ConfigurationError("--output names one run folder: leave it out for several runs (see --runs-dir)")
    found = entries(path) if path is not None else [None]
    lists = {axis: names(getattr(args, axis)) or [""] for axis in AXES if "," in str(getattr(args, axis, ""))}
    for number, entry in enumerate(found, 1):
        for combo in itertools.product(*lists.values()):
            typed = copy.copy(args)
            for axis, value in zip(lists, combo):
                setattr(typed, axis, value)
            merge = EntryMerge(entry, path, number) if entry is not None else recipe_of(typed)
            yield job_spec(options, typed, merge)
