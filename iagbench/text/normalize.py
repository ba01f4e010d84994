"""SQuAD answer normalisation and the answer metrics built on it, as pure functions.

Design notes: docs/internals.md#iagbenchtextnormalizepy
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Sequence

import regex

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = regex.compile(r"\b(a|an|the)\b")


def _lower(text: str) -> str:
    return text.lower()


def _remove_punc(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCTUATION)


def _remove_articles(text: str) -> str:
    return _ARTICLES.sub(" ", text)


def _white_space_fix(text: str) -> str:
    return " ".join(text.split())


def normalize_answer(text: str) -> str:
    """Lower, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (in that order)."""
    return _white_space_fix(_remove_articles(_remove_punc(_lower(text))))


def _require_answers(answers: Sequence[str]) -> None:
    # The references take max() over the aliases, which fails on an empty list.
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    if len(answers) == 0:
        raise ValueError("no gold answers to score against")


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold alias (FiD ``ems``)."""
    _require_answers(answers)
    normalized = normalize_answer(prediction)
    return max(float(normalized == normalize_answer(answer)) for answer in answers)


def token_f1(prediction: str, ground_truth: str) -> float:
    """SQuAD v1.1 ``f1_score``: harmonic mean of token precision and recall (0.0 when nothing overlaps)."""
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, answers: Sequence[str]) -> float:
    """The best SQuAD token F1 over the gold aliases (``metric_max_over_ground_truths``)."""
    _require_answers(answers)
    return max(token_f1(prediction, answer) for answer in answers)


def subspan_em(prediction: str, answers: Sequence[str]) -> float:
    """1.0 if any normalised gold alias is a substring of the normalised prediction (``best_subspan_em``).

    A plain substring test, as in the reference: gold "1972" is found in "19723".
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    normalized = normalize_answer(prediction).lower()
    return float(any(normalize_answer(answer).lower() in normalized for answer in answers))
