"""Continuing a finished training run to more ``--steps``: the same command with a larger ``--steps``.

Only a constant schedule allows it (linear and cosine decay over the total, so a longer run is another run).
The run keeps its identity, hash and folder (the steps it was started with); ``train_config.json`` records
each extension under ``extensions``, so every existing configuration keeps its hash."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iagbench.contract.errors import RunFolderError
from iagbench.runs.folder import diff_paths, read_json, write_json_atomic
from iagbench.training.folder import TRAIN_CONFIG
from iagbench.training.spec import TrainSpec

EXTENSIONS = "extensions"


def extension(spec: TrainSpec, output: Path, ident: dict[str, Any], total: int) -> dict[str, Any] | None:
    """The ``train_config.json`` of ``output`` if it holds this run started with fewer steps (to continue it);
    None if it holds no such run. A RunFolderError in one line where the schedule's shape depends on the total."""
    path = output / TRAIN_CONFIG
    if not path.is_file():
        return None
    try:
        previous = read_json(path)
        before = previous["identity"]["training"]["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # the folder check reports it
    if diff_paths(previous.get("identity"), ident) != ["training.steps"] or not isinstance(before, int):
        return None
    if total <= before:
        return None  # fewer steps than the run was started with: another run (the folder check says so)
    if spec.schedule != "constant":
        raise RunFolderError(
            f"--steps {total}: {output} was started for {before} steps with --schedule {spec.schedule}, whose shape "
            "depends on the total steps; only --schedule constant runs continue to more steps (or choose another --output)"
        )
    return previous


def extended_folder(spec: TrainSpec, train_dir: Path, name: str, ident: dict[str, Any], total: int) -> Path | None:
    """Without ``--output``: the default folder (next to ``name``, with another hash) of this run started with
    fewer steps, the one with the most steps if several; None if there is none."""
    prefix = name.rsplit("__", 1)[0]
    found: list[tuple[int, Path]] = []
    for folder in sorted(train_dir.glob(f"{prefix}__*")) if train_dir.is_dir() else ():
        previous = extension(spec, folder, ident, total) if folder.name != name else None
        if previous is not None:
            found.append((previous["identity"]["training"]["steps"], folder))
    return max(found)[1] if found else None


def record_extension(output: Path, total: int) -> None:
    """Add ``{"steps": total, "created": ...}`` to ``train_config.json``'s ``extensions`` (once per total)."""
    path = output / TRAIN_CONFIG
    config = read_json(path)
    extensions = config.setdefault(EXTENSIONS, [])
    if all(entry.get("steps") != total for entry in extensions):
        extensions.append({"steps": total, "created": datetime.now(UTC).isoformat(timespec="seconds")})
        write_json_atomic(path, config)
