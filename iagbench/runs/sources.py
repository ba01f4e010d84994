"""Content fingerprints of the files and folders that a component's options name (part of a run's identity).

Design notes: docs/internals.md#iagbenchrunssourcespy
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from iagbench.files.cache import cached_sha256, folder_sha256
from iagbench.lm.checkpoints import MARKERS, latest_of_training


def component_identity(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A component's part of a run's identity: its name, its options, and ``sources`` when they name paths."""
    found = source_fingerprints(options)
    return {"name": name, "options": options, **({"sources": found} if found else {})}


def source_fingerprints(options: Mapping[str, Any]) -> dict[str, str]:
    """``{option: fingerprint}`` for the option values (nested ones by dotted key) that name existing paths."""
    found: dict[str, str] = {}
    for key, value in _values(options, ""):
        path = _existing_path(value)
        if path is not None:
            found[key] = path_fingerprint(path)
    return found


def path_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of a file's or folder's content; a training output's (or a checkpoint marker's, such as
    ``checkpoints/best``): ``step-N sha256:<hex>`` of the checkpoint it names."""
    if path.is_file() and path.name not in MARKERS:
        return f"sha256:{cached_sha256(path)}"
    checkpoint = latest_of_training(path)
    if checkpoint is not None:
        return f"{checkpoint.name} sha256:{folder_sha256(checkpoint)}"
    return f"sha256:{folder_sha256(path)}"


def _values(value: Any, key: str) -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [pair for name, item in value.items() for pair in _values(item, f"{key}.{name}" if key else str(name))]
    if isinstance(value, (list, tuple)):
        return [pair for index, item in enumerate(value) for pair in _values(item, f"{key}[{index}]")]
    return [(key, value)]


def _existing_path(value: Any) -> Path | None:
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip() or "\n" in str(value):
        return None
    try:
        path = Path(value).expanduser()
        return path if path.exists() else None
    except (OSError, ValueError):  # a long or odd string that cannot be a path
        return None
