"""Named recipes: one TOML (or JSON) file per row of the paper's table, giving `iagbench run` and `iagbench train`
their options (``--recipe NAME|PATH``), with command-line precedence and ``{name}`` placeholders.

Design notes: docs/internals.md#iagbenchcommandsrecipespy"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.options import parse_options, parse_value, valid_key

RECIPES_ENV = "IAGBENCH_RECIPES"
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "recipes"
SECTIONS = ("run", "train")
TOP_KEYS = {"description", "row", "notes", "placeholders", *SECTIONS}
# The data comes from the command line only; these are the command's own or the recipe machinery's.
NOT_IN_RECIPES = {
    "dataset",
    "split",
    "data_dir",
    "dataset_args",
    "limit",
    "recipe",
    "set",
    "help",
    "launcher_local_rank",
    "local_rank",
}
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Recipe:
    name: str
    path: Path
    sha256: str
    description: str
    row: str  # "" when the recipe is no paper-table row
    sections: dict[str, dict[str, Any]]
    placeholders: dict[str, str] = field(default_factory=dict)

    def record(self, settings: dict[str, str]) -> dict[str, Any]:
        """What a run or training folder records (``non_default_options.recipe``)."""
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256, "set": settings}


def recipe_dirs() -> list[Path]:
    extra = os.environ.get(RECIPES_ENV)
    return [Path(extra)] if extra else [SHIPPED]


def available() -> dict[str, Path]:
    """Recipe name -> file, for the recipe folders (``$IAGBENCH_RECIPES``, else the shipped ``configs/recipes``)."""
    found: dict[str, Path] = {}
    for folder in recipe_dirs():
        for path in sorted(folder.glob("*")):
            if path.suffix in (".toml", ".json"):
                found.setdefault(path.stem, path)
    return found


def find(name: str) -> Path:
    """A recipe file: a path to one, or a name from ``available()`` (an unknown name: did you mean)."""
    path = Path(name).expanduser()
    if path.suffix in (".toml", ".json") or os.sep in name:
        if not path.is_file():
            raise ConfigurationError(f"--recipe {name}: no such file")
        return path
    known = available()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigurationError(f"unknown recipe '{name}'{hint}; recipes: {', '.join(known) or 'none'}")
    return known[name]


def load(name: str) -> Recipe:
    """Read and check a recipe file (top-level keys and section shapes; option names are checked per command)."""
    path = find(name)
    data = path.read_bytes()
    try:
        content = tomllib.loads(data.decode("utf-8")) if path.suffix == ".toml" else json.loads(data)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(content, dict):
        raise ConfigurationError(f"{path}: expected a table at the top")
    for key in content:
        if key not in TOP_KEYS:
            raise ConfigurationError(
                f"{path}: unknown key '{key}'{_did_you_mean(key, TOP_KEYS)} (expected: {', '.join(sorted(TOP_KEYS))})"
            )
    if not isinstance(content.get("description"), str) or not content["description"].strip():
        raise ConfigurationError(f"{path}: key 'description': expected a non-empty string")
    if "row" in content and (not isinstance(content["row"], str) or not content["row"].strip()):
        raise ConfigurationError(f"{path}: key 'row': expected a non-empty string (or leave it out)")
    sections = {}
    for section in SECTIONS:
        if section in content:
            if not isinstance(content[section], dict):
                raise ConfigurationError(f"{path}: [{section}]: expected a table")
            sections[section] = dict(content[section])
    if not sections:
        raise ConfigurationError(f"{path}: no [run] or [train] section")
    placeholders = content.get("placeholders", {})
    if not isinstance(placeholders, dict) or not all(isinstance(v, str) for v in placeholders.values()):
        raise ConfigurationError(f"{path}: [placeholders]: expected a table of strings")
    return Recipe(
        path.stem,
        path,
        hashlib.sha256(data).hexdigest(),
        content["description"].strip(),
        content.get("row", "").strip(),  # optional: the paper-table row it reproduces
        sections,
        dict(placeholders),
    )


def _did_you_mean(key: str, choices: Any) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---- merging into a command's options ----


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe",
        metavar="NAME|PATH",
        default=argparse.SUPPRESS,
        help="defaults from a recipe (iagbench recipes lists them); options given here override it",
    )
    parser.add_argument("--set", action="append", default=argparse.SUPPRESS, metavar="NAME=VALUE",
                        help="a recipe placeholder's value (repeatable)")  # fmt: skip


class RecipeMerge:
    """A recipe named on the command line, merged into a command's options after parsing (see the module doc)."""

    def __init__(self, name: str, settings: list[str] | None):
        self.recipe = load(name)
        self.settings = {}
        for item in settings or []:
            key, sep, value = item.partition("=")
            if not sep or not key.isidentifier():
                raise ConfigurationError(f"--set {item}: expected NAME=VALUE")
            self.settings[key] = value

    def merge_into(
        self, options: Any, given: dict[str, Any], defaults: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The recipe's values for ``options`` (a `CommandOptions`) the user did not give, and its record."""
        command, recipe = options.command, self.recipe
        if command not in recipe.sections:
            raise ConfigurationError(f"{recipe.path}: recipe '{recipe.name}' has no [{command}] section (it has: "
                                     f"{', '.join(recipe.sections)})")  # fmt: skip
        section = recipe.sections[command]
        known = set(options.options) - NOT_IN_RECIPES
        for key in section:
            dest = key.replace("-", "_")
            if dest not in known:
                why = ("the data comes from the command line" if dest in {"dataset", "split", "data_dir", "dataset_args", "limit"}
                       else f"iagbench {command} has no option --{key.replace('_', '-')}")  # fmt: skip
                raise ConfigurationError(f"{recipe.path}: [{command}] key '{key}': {why}{_did_you_mean(dest, known)}")
        resolve = _Resolver(self._placeholders(given, section, defaults), recipe.path, command)
        merged: dict[str, Any] = {}
        for key, value in section.items():
            dest = key.replace("-", "_")
            where = f"{recipe.path}: [{command}] key '{dest}'"
            value = resolve(value, dest)
            if dest.endswith("_args"):
                merged[dest] = as_options(value, recipe.path, command, dest)
            elif dest in given or options.partners(dest) & set(given) or value == "":
                continue
            else:
                merged[dest] = options.convert(dest, value, where)
        return merged, recipe.record(self.settings)

    def _placeholders(self, given: dict[str, Any], section: dict[str, Any], defaults: dict[str, Any]) -> dict[str, str]:
        reader = given.get("reader") or section.get("reader") or ""
        return {
            "recipe": self.recipe.name,
            "dataset": given.get("dataset") or defaults.get("dataset") or "",
            "reader": reader if isinstance(reader, str) else str(reader),
            "train_dir": str(given.get("train_dir") or os.environ.get("IAGBENCH_TRAINED", "trained")),
            "train_output": "{train_dir}/{recipe}-{dataset}",
            **self.recipe.placeholders,
            **self.settings,
        }


def recipe_of(args: argparse.Namespace) -> RecipeMerge | None:
    """The recipe the command line names (``--recipe``), or None."""
    name = getattr(args, "recipe", None)
    if name is None:
        if getattr(args, "set", None):
            raise ConfigurationError("--set fills a recipe's placeholders: give --recipe too")
        return None
    return RecipeMerge(name, getattr(args, "set", None))


class _Resolver:
    def __init__(self, values: dict[str, str], path: Path, command: str):
        self.values, self.path, self.command = values, path, command

    def __call__(self, value: Any, key: str) -> Any:
        if isinstance(value, dict):
            resolved = {k: self(v, f"{key}.{k}") for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v != ""}  # an empty value leaves the option out
        if isinstance(value, list):
            return [self(v, key) for v in value]
        if isinstance(value, str):
            return self.text(value, key, depth=0)
        return value

    def text(self, text: str, key: str, depth: int) -> str:
        if depth > 8:
            raise ConfigurationError(f"{self.path}: [{self.command}] {key}: placeholders refer to each other in a loop")

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.values:
                raise ConfigurationError(
                    f"{self.path}: [{self.command}] {key}: placeholder {{{name}}} has no value: give --set {name}=VALUE"
                )
            return self.text(self.values[name], key, depth + 1)

        return PLACEHOLDER.sub(replace, text)


def as_options(value: Any, path: Path, command: str, dest: str) -> dict[str, Any]:
    if isinstance(value, str):
        return parse_options(value, flag=f"{path}: [{command}] {dest}")
    if not isinstance(value, dict):
        raise ConfigurationError(f"{path}: [{command}] key '{dest}': expected a table or a 'k=v,...' string")
    flat: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, dict):  # TOML dotted keys: imagine.n = 2 is {"imagine": {"n": 2}}
            flat.update({f"{key}.{k}": v for k, v in item.items()})
        else:
            flat[key] = item
    for key, item in flat.items():
        if isinstance(item, (dict, list)):
            raise ConfigurationError(f"{path}: [{command}] {dest}.{key}: expected a single value")
        if not valid_key(key):
            raise ConfigurationError(f"{path}: [{command}] {dest}: '{key}' is not an option name")
        if isinstance(item, str) and not any(c in item for c in ',"'):
            flat[key] = parse_value(item.strip())  # read as the command line reads k=v: "10" is the number 10
    return flat


def listing() -> list[tuple[str, str, str]]:
    """(name, row, description) of every recipe; a broken file is listed with its error."""
    rows = []
    for name in available():
        try:
            recipe = load(name)
            rows.append((name, recipe.row, recipe.description))
        except ConfigurationError as error:
            rows.append((name, "?", f"cannot be read: {error}"))
    return rows


# ---- the `recipes` command ----

NAME = "recipes"
HELP = "the named recipes (rows of the paper's table) for run/train --recipe"


def configure(options: Any) -> None:
    """No options."""


def run(invocation: Any) -> int:
    for name, row, description in listing():
        print(f"{name:<16} {row}: {description}" if row else f"{name:<16} {description}")
    return 0
