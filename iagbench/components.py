"""The interfaces a plugin implements: Dataset, Imaginer, Reader, Metric.

Factories registered through the hooks build these from keyword options. An imaginer
factory declares ``provides`` and a reader factory ``accepts`` as attributes (class
attributes on a class), so that incompatible pairs are rejected before a model loads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from .types import Context, Example, Passage

CONTEXT_KINDS = frozenset({"passages", "adapter"})


class Dataset(ABC):
    """Questions with gold answers, in named splits."""

    splits: ClassVar[tuple[str, ...]] = ("train", "dev", "test")

    @abstractmethod
    def load(self, split: str) -> Iterable[Example]:
        """Yield the examples of one split, in a stable order with stable ids."""

    def describe(self, split: str) -> dict[str, Any]:
        """Where the split comes from (files, hub ids), recorded in every run's config."""
        return {}


class Imaginer(ABC):
    """Gives the reader extra knowledge for each question."""

    provides: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        """Return one context per example, in order."""

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording (model ids, k, prompt versions)."""
        return {}


class Reader(ABC):
    """Answers questions, optionally reading the contexts an imaginer made."""

    accepts: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        """Return one answer per example, in order (an ``iagbench.Answer`` keeps the raw text too)."""

    def describe(self) -> dict[str, Any]:
        """Resolved settings worth recording (model source, dtype, prompt version)."""
        return {}


class Metric(ABC):
    """Scores one prediction; the run reports the mean over examples, in percent."""

    name: ClassVar[str]
    version: ClassVar[str]

    @abstractmethod
    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        """Return named per-example scores in [0, 1]; an empty dict where the metric does not apply."""
