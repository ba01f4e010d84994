"""DPR's ``SimpleTokenizer`` and ``has_answer`` (string match), for answer recall of passages.

Follows facebookresearch/DPR ``dpr/utils/tokenizers.py`` (from DrQA) and
``dpr/data/qa_validation.py:has_answer`` with ``match_type="string"``, which FiD repeats in
``src/evaluation.py``. Only a passage's text is searched, never its title (DPR's
``check_answer`` and FiD's ``check_answer`` both read ``text`` alone).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence

import regex

from iagbench.contract.types import Passage


class SimpleTokenizer:
    """Runs of letters, digits and marks, or any single character that is neither space nor control."""

    ALPHA_NUM = r"[\p{L}\p{N}\p{M}]+"
    NON_WS = r"[^\p{Z}\p{C}]"

    def __init__(self) -> None:
        self._regexp = regex.compile(
            f"({self.ALPHA_NUM})|({self.NON_WS})",
            flags=regex.IGNORECASE + regex.UNICODE + regex.MULTILINE,
        )

    def tokenize(self, text: str, uncased: bool = False) -> list[str]:
        """The token strings of ``text``, lower-cased token by token when ``uncased``."""
        tokens = [match.group() for match in self._regexp.finditer(text)]
        return [token.lower() for token in tokens] if uncased else tokens


_DEFAULT_TOKENIZER = SimpleTokenizer()


def _normalize(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def answer_tokens(answers: Iterable[str], tokenizer: SimpleTokenizer | None = None) -> list[list[str]]:
    """Each answer NFD-normalised and tokenised, uncased: what ``has_answer`` looks for."""
    tokenizer = tokenizer or _DEFAULT_TOKENIZER
    return [tokenizer.tokenize(_normalize(answer), uncased=True) for answer in answers]


def _contains(text_tokens: list[str], needle: list[str]) -> bool:
    # As in DPR, an answer with no tokens matches at position 0 of any text.
    width = len(needle)
    return any(text_tokens[i : i + width] == needle for i in range(len(text_tokens) - width + 1))


def _has_tokens(tokenized_answers: list[list[str]], text: str, tokenizer: SimpleTokenizer) -> bool:
    text_tokens = tokenizer.tokenize(_normalize(text), uncased=True)
    return any(_contains(text_tokens, needle) for needle in tokenized_answers)


def has_answer(answers: Sequence[str], text: str, tokenizer: SimpleTokenizer | None = None) -> bool:
    """True if some answer's token sequence occurs contiguously in the text's tokens (NFD, uncased)."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    tokenizer = tokenizer or _DEFAULT_TOKENIZER
    return _has_tokens(answer_tokens(answers, tokenizer), text, tokenizer)


def first_hit(answers: Sequence[str], passages: Sequence[Passage], limit: int | None = None) -> int | None:
    """The index of the first passage (among the first ``limit``) whose text has an answer, or None."""
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of strings, not a single string")
    tokenized = answer_tokens(answers)
    for index, passage in enumerate(passages[:limit]):
        if _has_tokens(tokenized, passage.text, _DEFAULT_TOKENIZER):
            return index
    return None


def has_answer_at_k(answers: Sequence[str], passages: Sequence[Passage], ks: Iterable[int]) -> dict[int, float]:
    """For each k, 1.0 if any of the top-k passages' text has an answer (DPR's top-k hits), else 0.0."""
    ks = list(ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be at least 1, got {ks}")
    hit = first_hit(answers, passages, limit=max(ks, default=0))
    return {k: float(hit is not None and hit < k) for k in ks}
