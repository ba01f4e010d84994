"""The data model shared by datasets, imaginers, readers and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iagbench.contract.adapters import LoRAAdapter


@dataclass(frozen=True)
class Passage:
    """A piece of text given to the reader: retrieved, gold, or imagined."""

    text: str
    title: str = ""
    id: str | None = None
    score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "text": self.text, "score": self.score}


@dataclass(frozen=True)
class Example:
    """One question with its gold answer aliases and, for FiD/DPR files, its passages."""

    id: str
    question: str
    answers: tuple[str, ...]
    ctxs: tuple[Passage, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", tuple(self.answers))
        object.__setattr__(self, "ctxs", tuple(self.ctxs))

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"id": self.id, "question": self.question, "answers": list(self.answers)}
        if self.ctxs:
            record["ctxs"] = [p.to_json() for p in self.ctxs]
        return record


@dataclass(frozen=True)
class Context:
    """What an imaginer gives the reader for one question: passages, an adapter, or both.

    ``cost`` (optional): what imagining it cost, ``{"flops": int, "tokens": {name: int}}`` (docs/cost.md); the
    runner records it, and it takes no part in comparing contexts.
    """

    passages: tuple[Passage, ...] = ()
    adapter: LoRAAdapter | None = None
    cost: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "passages", tuple(self.passages))

    @property
    def kinds(self) -> frozenset[str]:
        """The parts this context carries, drawn from {"passages", "adapter"}."""
        kinds = set()
        if self.passages:
            kinds.add("passages")
        if self.adapter is not None:
            kinds.add("adapter")
        return frozenset(kinds)


class Answer(str):
    """A reader's answer: the string that is scored, plus what the model produced before extraction."""

    raw: str | None
    details: dict[str, Any]

    def __new__(cls, text: str, raw: str | None = None, details: dict[str, Any] | None = None) -> Answer:
        answer = super().__new__(cls, text)
        answer.raw = raw
        answer.details = dict(details or {})
        return answer


EMPTY_CONTEXT = Context()
