"""Built-in metrics: em, f1, subspan_em and has_answer@k, matching the DPR/FiD reference code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from iagbench import Metric, Passage, hookimpl
from iagbench.text.normalize import exact_match, f1, subspan_em

from .dpr_tokenizer import has_answer_at_k

HAS_ANSWER_KS = (1, 5, 20, 100)


class ExactMatch(Metric):
    """SQuAD exact match, max over gold aliases: FiD ``src/evaluation.py:ems`` (DPR ``exact_match_score``)."""

    name: ClassVar[str] = "em"
    version: ClassVar[str] = "1"

    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        return {self.name: exact_match(prediction, answers)}


class F1(Metric):
    """SQuAD v1.1 token F1 (``f1_score``), max over gold aliases."""

    name: ClassVar[str] = "f1"
    version: ClassVar[str] = "1"

    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        return {self.name: f1(prediction, answers)}


class SubspanEM(Metric):
    """A normalised gold alias occurs in the normalised prediction: lost-in-the-middle ``best_subspan_em``."""

    name: ClassVar[str] = "subspan_em"
    version: ClassVar[str] = "1"

    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        return {self.name: subspan_em(prediction, answers)}


def has_answer_ks(n_passages: int) -> tuple[int, ...]:
    """The k of has_answer@k for a context of n passages: 1/5/20/100 up to n, plus n itself when under 100."""
    ks = tuple(k for k in HAS_ANSWER_KS if k <= n_passages)
    if 0 < n_passages < 100 and n_passages not in HAS_ANSWER_KS:
        ks += (n_passages,)
    return ks


class HasAnswer(Metric):
    """Answer recall of the passages given to the reader (text only, no title): DPR
    ``dpr/data/qa_validation.py:has_answer`` string match with ``SimpleTokenizer``, as in FiD."""

    name: ClassVar[str] = "has_answer"
    version: ClassVar[str] = "1"

    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        if not passages:
            return {}
        hits = has_answer_at_k(answers, passages, has_answer_ks(len(passages)))
        return {f"{self.name}@{k}": value for k, value in hits.items()}


@hookimpl
def register_metrics(register) -> None:
    register("em", ExactMatch, description="Exact match after SQuAD normalisation, best gold alias")
    register("f1", F1, description="SQuAD token F1, best gold alias")
    register("subspan_em", SubspanEM, description="A normalised gold alias occurs in the normalised prediction")
    register("has_answer", HasAnswer, description="A gold answer occurs in the top-k passages (DPR tokenisation)")
