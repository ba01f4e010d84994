"""Command options declared once: their flags, types and defaults, the shared groups (data, components,
batch size, progress), and the job specification built from what the user gave. Public for plugin commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.job import JobSpec
from iagbench.contract.options import parse_options

DATA_ENV = "IAGBENCH_DATA"
AUTO = "auto"
COMPONENT_FIELDS = ("dataset", "split", "dataset_args", "imaginer", "imaginer_args", "reader", "reader_args", "limit",
                    "output")  # fmt: skip
NOT_SETTINGS = {*COMPONENT_FIELDS, "data_dir", "no_progress", "recipe", "set", "func", "verbose", "quiet",
                "launcher_local_rank", "local_rank"}  # fmt: skip


@dataclass(frozen=True)
class Option:
    """One option of a command: what a recipe key or a default is checked against."""

    dest: str
    flag: str
    type: Callable[[str], Any] | None
    default: Any
    choices: tuple[Any, ...] | None
    switch: bool  # a flag without a value (store_true)
    required: bool


class CommandOptions:
    """A command's parser and the table of its options. Every option is added with ``argparse.SUPPRESS`` as its
    parser default, so the parsed namespace holds exactly what the user typed; defaults live here."""

    def __init__(self, parser: argparse.ArgumentParser, command: str):
        self.parser, self.command = parser, command
        self.options: dict[str, Option] = {}
        self.exclusive: list[set[str]] = []

    def add(self, *flags: str, default: Any = None, required: bool = False, group: Any = None, **kwargs: Any) -> None:
        """``parser.add_argument`` with the default kept here; ``required`` is checked after recipes merge."""
        target = group or self.parser
        if not flags[0].startswith("-"):  # a positional: argparse checks and fills it
            target.add_argument(*flags, default=default, **kwargs)
            return
        action = target.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
        switch = kwargs.get("action") == "store_true"
        self.options[action.dest] = Option(
            action.dest, max(flags, key=len), kwargs.get("type"), False if switch else default,
            tuple(kwargs["choices"]) if "choices" in kwargs else None, switch, required,
        )  # fmt: skip

    def add_exclusive(self, *specs: tuple[tuple[str, ...], dict[str, Any]]) -> None:
        """Options of which at most one may be given (``--steps`` or ``--epochs``)."""
        group = self.parser.add_mutually_exclusive_group()
        for flags, kwargs in specs:
            self.add(*flags, group=group, **kwargs)
        self.exclusive.append({flag.lstrip("-").replace("-", "_") for flags, _ in specs for flag in flags[:1]})

    def defaults(self) -> dict[str, Any]:
        return {dest: option.default for dest, option in self.options.items()}

    def given(self, args: argparse.Namespace) -> dict[str, Any]:
        """The options the user typed, by destination."""
        return {dest: value for dest, value in vars(args).items() if dest in self.options}

    def convert(self, dest: str, value: Any, where: str) -> Any:
        """A recipe's value for ``dest`` as the command line would have read it (its type and choices)."""
        option = self.options[dest]
        if option.switch:
            if not isinstance(value, bool):
                raise ConfigurationError(f"{where}: expected true or false")
            return value
        if isinstance(value, (dict, list)):
            raise ConfigurationError(f"{where}: expected a single value")
        text = "null" if value is None else ("true" if value is True else "false" if value is False else str(value))
        try:
            converted = option.type(text) if option.type else text
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise ConfigurationError(f"{where}: {text!r} is not a valid value for {option.flag}") from None
        if option.choices and converted not in option.choices:
            raise ConfigurationError(f"{where}: {converted!r} is not one of {', '.join(map(str, option.choices))}")
        return converted

    def partners(self, dest: str) -> set[str]:
        """The options that exclude ``dest``."""
        return set().union(*(group - {dest} for group in self.exclusive if dest in group))

    def check_required(self, values: dict[str, Any]) -> None:
        for option in self.options.values():
            if option.required and values.get(option.dest) in (None, ""):
                raise ConfigurationError(
                    f"iagbench {self.command}: the option {option.flag} is required (or a --recipe giving it)"
                )


# ---- shared groups ----


def add_data_options(
    options: CommandOptions,
    *,
    split: str = "test",
    limit_help: str = "only the first N examples",
    fraction: bool = False,
) -> None:
    """``--dataset``/``--split``/``--limit`` (with ``fraction``, 0 < x < 1 is a share of the split) and the location."""
    options.add("--dataset", default="sample", help="dataset name (default: sample, the smoke-test set)")
    options.add("--split", default=split, help=f"split (default: {split})")
    options.add("--limit", type=limit if fraction else int, metavar="N|X" if fraction else None, help=limit_help)
    add_dataset_location(options)


def add_dataset_location(options: CommandOptions) -> None:
    options.add("--data-dir", help=f"data folder (default: ${DATA_ENV})")
    options.add("--dataset-args", default="", metavar="K=V,...", help="dataset options")


def add_component_options(options: CommandOptions, *, imaginer: str | None = "none", reader: bool = True,
                          imaginer_help: str = "imaginer name (default: none)",
                          imaginer_args_help: str = "imaginer options") -> None:  # fmt: skip
    """``--imaginer``/``--imaginer-args`` and (with ``reader``) ``--reader``/``--reader-args``."""
    options.add("--imaginer", default=imaginer, required=imaginer is None, help=imaginer_help)
    options.add("--imaginer-args", default="", metavar="K=V,...", help=imaginer_args_help)
    if reader:
        options.add("--reader", required=True, help="reader name, e.g. smollm2-135m")
        options.add("--reader-args", default="", metavar="K=V,...", help="reader options")


def add_batch_size(options: CommandOptions, default: int, help: str, *, auto: bool = False) -> None:
    kind = batch_size if auto else int
    options.add("--batch-size", type=kind, default=default, metavar="N|auto" if auto else None, help=help)


def add_progress(options: CommandOptions) -> None:
    options.add("--no-progress", action="store_true", help="no progress bar")


def batch_size(text: str) -> int | str:
    """``--batch-size``: an integer (checked by the command) or ``auto``."""
    return AUTO if text == AUTO else int(text)


def limit(text: str) -> int | float:
    """``--limit``: an integer N >= 1 (the first N examples), or a fraction 0 < x < 1 (the first ceil(x * N))."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer or a fraction between 0 and 1") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer or a fraction between 0 and 1")
    return value


def names(text: str | None) -> list[str] | None:
    """Comma-separated names, or None for none."""
    return [name.strip() for name in (text or "").split(",") if name.strip()] or None


def positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ConfigurationError(f"{flag} {value}: expected a positive integer")


# ---- the job specification ----


def job_spec(options: CommandOptions, args: argparse.Namespace, recipe: Any = None) -> JobSpec:
    """Defaults, then the recipe's section (if any), then what the user typed: one `JobSpec`."""
    given = options.given(args)
    values = options.defaults()
    recorded = None
    if recipe is not None:
        merged, recorded = recipe.merge_into(options, given, values)
        values.update(merged)
    values.update({dest: value for dest, value in given.items() if not dest.endswith("_args")})
    for dest in options.options:
        if dest.endswith("_args"):
            values[dest] = _component_args(values.get(dest), given.get(dest), options.options[dest].flag)
    options.check_required(values)
    non_default = _non_default(options, values)
    if recorded is not None:
        non_default["recipe"] = recorded
    return JobSpec(
        command=options.command,
        **{
            key: values[key]
            for key in ("dataset", "split", "imaginer", "reader", "limit", "output")
            if key in options.options
        },
        dataset_args=dataset_args(values),
        imaginer_args=values.get("imaginer_args", {}),
        reader_args=values.get("reader_args", {}),
        progress=not values.get("no_progress", False),
        settings={dest: value for dest, value in values.items() if dest not in NOT_SETTINGS},
        non_default=non_default,
    )


def _component_args(merged: Any, typed: str | None, flag: str) -> dict[str, Any]:
    """A recipe's options (a dict, or the default text) with the command line's keys on top."""
    result = dict(merged) if isinstance(merged, dict) else parse_options(merged, flag=flag)
    result.update(parse_options(typed, flag=flag))
    return result


def dataset_args(values: dict[str, Any]) -> dict[str, Any]:
    options = dict(values.get("dataset_args") or {})
    if values.get("data_dir"):
        if "data_dir" in options:
            raise ConfigurationError("give the data folder once: --data-dir or --dataset-args data_dir=...")
        options["data_dir"] = values["data_dir"]
    return options


def _non_default(options: CommandOptions, values: dict[str, Any]) -> dict[str, Any]:
    """Values that differ from the defaults, as the run folder records them (paths as text)."""
    changed = {}
    for dest, option in options.options.items():
        value = values.get(dest)
        default = parse_options(option.default, flag=option.flag) if dest.endswith("_args") else option.default
        if value != default:
            changed[dest] = str(value) if isinstance(value, Path) else value
    return changed


@dataclass
class Invocation:
    """One command as invoked: the parsed arguments, the command's option table and the loaded plugins."""

    args: argparse.Namespace
    options: CommandOptions
    plugins: Any

    def job(self) -> JobSpec:
        """The job specification: defaults, the ``--recipe``'s section, then what the user typed."""
        from iagbench.commands.recipes import recipe_of

        return job_spec(self.options, self.args, recipe_of(self.args))

    def given(self, name: str, default: Any = None) -> Any:
        """An option's value: what the user typed, else its default."""
        if hasattr(self.args, name):
            return getattr(self.args, name)
        option = self.options.options.get(name)
        return option.default if option else default
