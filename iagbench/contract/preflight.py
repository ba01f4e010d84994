"""Checks before anything loads: an imaginer + reader pair, before any dataset, model or folder exists.

`preflight` checks that each factory's class implements its kind's method, that the options fit the factories'
signatures, and calls each factory's optional ``preflight(pairing)`` hook (see docs/plugins.md): a cheap check
of what would otherwise fail after the models loaded (a missing checkpoint, adapter shapes for another model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from iagbench.contract.conform import check_class
from iagbench.contract.entry import Entry

PURPOSES = ("run", "train")
HOOK = "preflight"


@dataclass(frozen=True)
class Pairing:
    """What a ``preflight`` hook is told: the command, and both components with their options, defaults filled in."""

    purpose: str  # "run" or "train"
    imaginer: str
    imaginer_options: Mapping[str, Any]
    reader: str
    reader_options: Mapping[str, Any]


def preflight(
    imaginer: Entry, imaginer_args: Mapping[str, Any], reader: Entry, reader_args: Mapping[str, Any], *, purpose: str
) -> None:
    """Check the pair for ``purpose`` ("run" or "train") without building anything; one-line errors."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose {purpose!r}: expected one of {PURPOSES}")
    for entry in (imaginer, reader):
        check_class(entry.kind, entry.label, entry.load())
    pairing = Pairing(
        purpose, imaginer.name, imaginer.options(dict(imaginer_args)), reader.name, reader.options(dict(reader_args))
    )
    for entry in (imaginer, reader):
        hook = entry.hook(HOOK)
        if hook is not None:
            hook(pairing)
