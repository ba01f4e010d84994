"""Checkpoints of `iagbench train`: plain trainable weights per component, found through ``latest``.

Design notes: docs/internals.md#iagbenchlmcheckpointspy
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"  # the best dev checkpoint (iagbench train --keep-best), a marker file like ``latest``
MARKERS = (LATEST, BEST)
ROLES = ("imaginer", "reader")
STEP_PATTERN = re.compile(r"^step-(\d+)$")


def step_folder_name(step: int) -> str:
    return f"step-{step:06d}"


def weights_file(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role {role!r}: expected one of {ROLES}")
    return f"{role}.safetensors"


def latest_checkpoint(checkpoints_dir: Path, marker_name: str = LATEST) -> Path | None:
    """The complete checkpoint that ``checkpoints_dir/latest`` (or another marker) names, or None before the first."""
    marker = checkpoints_dir / marker_name
    if not marker.is_file():
        return None
    name = marker.read_text(encoding="utf-8", errors="replace").strip()
    folder = checkpoints_dir / name
    if not STEP_PATTERN.match(name) or not folder.is_dir():
        raise ConfigurationError(f"{marker}: names {name[:80]!r}, which is not a checkpoint folder next to it")
    return folder


def latest_of_training(path: str | Path) -> Path | None:
    """The checkpoint ``latest`` names in a training output folder or in its ``checkpoints`` folder, or the one a
    marker file (``checkpoints/latest``, ``checkpoints/best``) names; else None."""
    path = Path(path)
    if path.name in MARKERS and path.is_file():
        return latest_checkpoint(path.parent, path.name)
    for checkpoints_dir in (path / CHECKPOINTS, path):
        found = latest_checkpoint(checkpoints_dir)
        if found is not None:
            return found
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a training output folder, its ``checkpoints`` folder or a checkpoint folder."""
    path = Path(path)
    found = latest_of_training(path)
    if found is not None:
        return found
    if any((path / weights_file(role)).is_file() for role in ROLES):
        return path
    if not path.exists():
        raise ConfigurationError(f"checkpoint {path} does not exist")
    raise ConfigurationError(
        f"checkpoint {path}: neither a training output (no {CHECKPOINTS}/{LATEST}) nor a checkpoint folder "
        f"(no {' or '.join(weights_file(role) for role in ROLES)})"
    )


def load_trainable(component: Any, checkpoint: str | Path, role: str) -> Path:
    """Load ``role``'s trained weights from ``checkpoint`` into ``component.trainable_module()``.

    ``checkpoint`` is a training output folder (its ``checkpoints/latest`` is used) or one checkpoint
    folder. Keys must match exactly. Returns the checkpoint folder used (worth recording in
    ``describe()``). Trainable components call this from their constructors when given
    ``checkpoint=DIR``.
    """
    folder = resolve_checkpoint(checkpoint)
    file = folder / weights_file(role)
    if not file.is_file():
        present = [weights_file(r) for r in ROLES if (folder / weights_file(r)).is_file()]
        raise ConfigurationError(
            f"checkpoint {folder} has no {file.name} (it holds {', '.join(present) or 'no weights'}): the {role} "
            "was not trained there"
        )
    load_weights(component, file)
    return folder


def read_weights(file: Path) -> dict[str, Any]:
    """The tensors of a safetensors file; ConfigurationError naming it if it cannot be read (missing, truncated,
    not safetensors). Safetensors holds tensors only: reading one runs no code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigurationError(f"{file}: not a readable safetensors file ({reason})") from None


def load_weights(component: Any, file: Path) -> dict[str, Any]:
    """Load the weights file ``file`` into ``component.trainable_module()`` (keys and shapes must match exactly);
    return its tensors. ConfigurationError naming the file otherwise."""
    module = component.trainable_module()
    if module is None:
        raise ConfigurationError(f"{file}: {type(component).__name__} has no trainable module to load it into")
    tensors = read_weights(file)
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]})")
        raise ConfigurationError(f"{file}: does not fit {type(component).__name__}: {'; '.join(parts)}")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as error:  # shapes that do not fit
        first = next(
            (line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error).splitlines()[0]
        )
        raise ConfigurationError(f"{file}: does not fit {type(component).__name__}: {first}") from None
    return tensors


def save_weights(state_dict: dict[str, Any], file: Path) -> None:
    """Save a state dict as safetensors: detached CPU copies, so tied or strided tensors save too."""
    from safetensors.torch import save_file

    save_file({key: value.detach().cpu().clone().contiguous() for key, value in state_dict.items()}, str(file))


def write_latest(checkpoints_dir: Path, folder_name: str) -> None:
    """Point ``latest`` at a complete checkpoint, atomically."""
    write_marker(checkpoints_dir, LATEST, folder_name)


def write_marker(checkpoints_dir: Path, marker_name: str, folder_name: str) -> None:
    """Point the marker file ``marker_name`` (``latest``, ``best``) at a complete checkpoint, atomically."""
    marker = checkpoints_dir / marker_name
    tmp = marker.with_name(marker_name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(folder_name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, marker)


def checkpoint_folders(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint folders, oldest first."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for child in checkpoints_dir.iterdir():
        match = STEP_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def prune(checkpoints_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (0 keeps all); never the ones ``latest`` and ``best`` name."""
    if keep <= 0:
        return
    kept = {marked.resolve() for name in MARKERS if (marked := _marked(checkpoints_dir, name)) is not None}
    folders = checkpoint_folders(checkpoints_dir)
    for _, folder in folders[: max(0, len(folders) - keep)]:
        if folder.resolve() not in kept:
            shutil.rmtree(folder, ignore_errors=True)


def _marked(checkpoints_dir: Path, marker_name: str) -> Path | None:
    """The folder a marker names, or None (no marker, or one naming no folder: it protects nothing)."""
    try:
        return latest_checkpoint(checkpoints_dir, marker_name)
    except ConfigurationError:
        return None


def remove_partial(checkpoints_dir: Path) -> None:
    """Delete checkpoint folders a crash left half-written (``*.tmp``)."""
    if checkpoints_dir.is_dir():
        for child in checkpoints_dir.iterdir():
            if child.name.endswith(".tmp") and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
