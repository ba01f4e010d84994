"""Which checkpoint a training run resumes from: the newest that loads whole on every process. One that does not
(a file missing, cut short, garbage, refused) is passed over with a warning naming it and why, for the one
before it; if none loads, a one-line error. Loading it puts its weights into the components (before ``prepare``)
and reads and checks its resume state (`training.state`), so nothing is changed by a checkpoint that fails."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.lm.checkpoints import (
    LATEST,
    STEP_PATTERN,
    checkpoint_folders,
    latest_checkpoint,
    load_weights,
    weights_file,
)
from iagbench.training.folder import TRAINER_STATE
from iagbench.training.state import Saved, Unloadable, check_state, read_state
from iagbench.training.zero import read_moments

logger = logging.getLogger(__name__)


def candidates(checkpoints_dir: Path, main: bool = True) -> list[Path] | None:
    """Checkpoints to resume from, newest first: the one ``latest`` names, then older ones (None before the first)."""
    if not (checkpoints_dir / LATEST).is_file():
        return None
    folders = [folder for _, folder in reversed(checkpoint_folders(checkpoints_dir))]
    try:
        latest = latest_checkpoint(checkpoints_dir)
    except ConfigurationError as error:
        if main:
            logger.warning("%s; trying the checkpoint folders beside it", error)
        return folders
    assert latest is not None
    step = _step(latest)
    return [latest, *(folder for folder in folders if _step(folder) < step)]


def _step(folder: Path) -> int:
    match = STEP_PATTERN.match(folder.name)
    return int(match.group(1)) if match else -1


def choose(checkpoints_dir: Path, accelerator: Any, load: Callable[[Path], Saved]) -> tuple[Path | None, Saved | None]:
    """The newest checkpoint that ``load`` loads on every process, and what it loaded; (None, None) before the
    first (no ``latest``). RunFolderError if none loads."""
    main = accelerator.is_main_process
    found = candidates(checkpoints_dir, main)
    if found is None:
        return None, None
    failures = []
    for checkpoint in found:
        saved, reason = None, None
        try:
            saved = load(checkpoint)
        except Exception as error:  # whatever a damaged file makes a reader raise: reported, never run
            reason = _reason(error, checkpoint)
        reason = _agree(accelerator, reason)
        if reason is None:
            return checkpoint, saved
        failures.append(f"{checkpoint.name}: {reason}")
        if main:
            logger.warning("checkpoint %s does not load (%s); trying the one before it", checkpoint, reason)
    raise RunFolderError(
        f"{checkpoints_dir}: no checkpoint loads ({'; '.join(failures) or 'there is none beside ' + LATEST}); move the "
        "folder away (or give another --output) to train from the start"
    )


def _reason(error: Exception, checkpoint: Path) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if not isinstance(error, Unloadable | ConfigurationError | RunFolderError):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text.replace(f"{checkpoint}/", "")


def _agree(accelerator: Any, reason: str | None) -> str | None:
    """The first reason any process found not to load the checkpoint (None: every process loaded it)."""
    if accelerator.num_processes == 1:
        return reason
    from accelerate.utils import gather_object

    return next((found for found in gather_object([reason]) if found), None)


def read_checkpoint(
    checkpoint: Path, components: dict[str, Any], model: Any, optimizer: Any, scheduler: Any, rank: int, deepspeed: bool
) -> Saved:
    """Load ``checkpoint``'s weights into ``components`` (role -> component with a trainable module), read its resume
    state and check it fits ``model``, ``optimizer`` and ``scheduler`` (before ``prepare``). Unloadable otherwise."""
    try:
        trainer_state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        step = trainer_state["step"]
        processes = trainer_state.get("processes", 1)
    except Exception as error:  # missing, not JSON, not an object
        raise Unloadable(f"{TRAINER_STATE}: {_reason(error, checkpoint)}") from None
    if not isinstance(step, int) or step < 1 or not isinstance(processes, int):
        raise Unloadable(f"{TRAINER_STATE}: no step and number of processes")
    saved = Saved(step, processes, scheduler={})
    for role, component in components.items():
        file = checkpoint / weights_file(role)
        if not file.is_file():
            raise Unloadable(f"{file.name}: missing")
        tensors = load_weights(component, file)  # ConfigurationError naming the file
        saved.weights.update({f"parts.{role}.{key}": value for key, value in tensors.items()})
    read_state(checkpoint, saved, rank, deepspeed)
    check_state(saved, optimizer, scheduler)
    if deepspeed:
        saved.moments = read_moments(checkpoint, model)
    return saved
