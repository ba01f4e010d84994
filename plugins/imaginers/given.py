"""The ``given`` imaginer: the passages that came with each example (``ctxs`` of FiD/DPR files, the
``sample`` set's gold passages)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from iagbench import ConfigurationError, Context, Example, Imaginer, Passage

ORDERS = ("score", "file")


class GivenPassages(Imaginer):
    """The example's own passages: the top ``k`` (default all) by score, or the first ``k`` in file order.

    ``order=score`` sorts by descending score (ties keep file order) when every passage of the
    example has a score, and keeps file order otherwise; ``order=file`` always keeps file order.
    """

    provides: ClassVar[frozenset[str]] = frozenset({"passages"})

    def __init__(self, k: int | None = None, order: str = "score"):
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ConfigurationError(f"k={k!r}: expected a positive integer (or leave it out for every passage)")
        if order not in ORDERS:
            raise ConfigurationError(f"order={order!r}: expected one of {', '.join(ORDERS)}")
        self.k, self.order = k, order

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        return [Context(passages=self.select(example.ctxs)) for example in examples]

    def select(self, passages: Sequence[Passage]) -> tuple[Passage, ...]:
        chosen = list(passages)
        if self.order == "score" and chosen and all(p.score is not None for p in chosen):
            chosen.sort(key=lambda p: -p.score)  # type: ignore[operator]  # stable: ties keep file order
        return tuple(chosen[: self.k])

    def describe(self) -> dict[str, object]:
        return {"source": "the examples' own ctxs", "k": self.k, "order": self.order}
