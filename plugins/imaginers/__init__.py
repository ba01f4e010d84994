"""Built-in imaginers."""

from __future__ import annotations

from collections.abc import Sequence

from iagbench import Context, Example, Imaginer, hookimpl


class NoImagination(Imaginer):
    """Closed book: the reader gets nothing but the question."""

    provides = frozenset()

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        return [Context() for _ in examples]


@hookimpl
def register_imaginers(register) -> None:
    register("none", NoImagination, aliases=("closed-book",), description="closed book: no extra context")
    register(
        "given",
        "iagbench_plugins.imaginers.given:GivenPassages",
        description="the passages that come with each example (ctxs): top k by score (order=score) or file order",
    )
