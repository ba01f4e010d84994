"""The job specification: what `run`, `train`, `retrieve` and `compress` are asked to do, built once from the
command line (and a recipe merged into it) before any engine starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JobSpec:
    """The data, the components with their options, and the command's own settings.

    Component options are always ``*_args`` dicts (``dataset_args``, ``imaginer_args``, ``reader_args``);
    ``settings`` holds the command's other options by their option names (``lr``, ``steps``, ``target_tokens``).
    ``non_default`` is what differs from the command's defaults (recorded with every run and training).
    """

    command: str
    dataset: str = "sample"
    split: str = "test"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    imaginer: str = "none"
    imaginer_args: dict[str, Any] = field(default_factory=dict)
    reader: str | None = None
    reader_args: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    output: Path | None = None
    progress: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    non_default: dict[str, Any] = field(default_factory=dict)

    def components(self) -> dict[str, Any]:
        """The fields every engine spec shares: data split, components and their options, limit."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "dataset_args": dict(self.dataset_args),
            "imaginer": self.imaginer,
            "imaginer_args": dict(self.imaginer_args),
            "reader": self.reader,
            "reader_args": dict(self.reader_args),
            "limit": self.limit,
        }
