"""Question-aware compression of retrieved passages (LongLLMLingua's coarse-grained ranking, our implementation).

Design notes: docs/internals.md#pluginsimaginationcompresspy
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from iagbench import ConfigurationError, Passage

RESTRICT = "We can get the answer to this question in the given documents."
VERSION = "1"  # bump when the scoring text, the unit split or the selection changes
GRANULARITIES = ("sentence", "passage")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_ABBREVIATION = re.compile(
    r"(?:^|[\s(])(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Mt|Jr|Sr|Prof|Gen|Col|Capt|Lt|Sgt|No|vs|etc|e\.g|i\.e|U\.S)\.$"
)


@dataclass(frozen=True)
class Unit:
    """A piece of a passage that is kept or dropped whole."""

    passage: int  # index of the passage it comes from
    text: str


def split_sentences(text: str) -> list[str]:
    """Sentences: cut after . ! ? (and closing quotes/brackets) before white space and a capital or digit,
    but not after an initial or a common abbreviation ("J. R. R. Tolkien", "Dr. Watson")."""
    text = " ".join(text.split())
    if not text:
        return []
    inner = [m.end() for m in _SENTENCE_END.finditer(text) if not _ABBREVIATION.search(text[: m.start()])]
    cuts = [0] + inner + [len(text)]
    return [text[a:b].strip() for a, b in zip(cuts, cuts[1:]) if text[a:b].strip()]


def units_of(passages: Sequence[Passage], granularity: str) -> list[Unit]:
    if granularity == "passage":
        return [Unit(i, " ".join(p.text.split())) for i, p in enumerate(passages) if p.text.strip()]
    return [Unit(i, sentence) for i, p in enumerate(passages) for sentence in split_sentences(p.text)]


def select(scores: Sequence[float], lengths: Sequence[int], budget: int) -> list[int]:
    """Indices of the units kept: best score first (ties: earlier first) while they fit ``budget``, in index order."""
    kept, used = [], 0
    for index in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        if used + lengths[index] <= budget:
            kept.append(index)
            used += lengths[index]
    return sorted(kept)


def join_units(units: Sequence[Unit]) -> str:
    """Sentences of one passage joined by spaces, passages by newlines."""
    pieces: list[str] = []
    for position, unit in enumerate(units):
        if position:
            pieces.append(" " if unit.passage == units[position - 1].passage else "\n")
        pieces.append(unit.text)
    return "".join(pieces)


Scorer = Callable[[str, Sequence[str]], list[float]]
"""(question, conditions) -> one score per condition, higher = the question is likelier after it."""


class Compressor:
    """Compresses a question's passages to about ``target_tokens`` tokens (see the module docstring)."""

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        target_tokens: int = 64,
        granularity: str = "sentence",
        dtype: str = "auto",
        device: str = "auto",
        batch_size: int = 32,
        scorer: Scorer | None = None,
    ):
        from .lm import CausalLM, check_positive

        self.target_tokens = check_positive(target_tokens, "target_tokens", "compress")
        self.batch_size = check_positive(batch_size, "batch_size", "compress")
        if granularity not in GRANULARITIES:
            raise ConfigurationError(
                f"compress option granularity={granularity!r}: expected one of {', '.join(GRANULARITIES)}"
            )
        self.granularity = granularity
        self.lm = CausalLM(model, dtype=dtype, device=device)
        self.scorer: Scorer = scorer or self.question_logprob

    def question_logprob(self, question: str, conditions: Sequence[str]) -> list[float]:
        """Mean log p(question + RESTRICT | condition) per condition (LongLLMLingua's question-aware score)."""
        return self.lm.continuation_logprob(conditions, f"\n{question} {RESTRICT}", batch_size=self.batch_size)

    def compress(self, question: str, passages: Sequence[Passage]) -> dict[str, Any]:
        """The compressed context and what it was made of: source passage ids, scores, tokens."""
        units = units_of(passages, self.granularity)
        if not units:
            return {"compressed": "", "source_ids": [], "tokens": 0, "units": 0, "kept": [], "cut": False}
        conditions = [f"{passages[u.passage].title}\n{u.text}" if passages[u.passage].title else u.text for u in units]
        scores = self.scorer(question, conditions)
        if len(scores) != len(units):
            raise ConfigurationError(f"scorer returned {len(scores)} scores for {len(units)} units")
        lengths = [self.lm.count(u.text) for u in units]
        kept = select(scores, lengths, self.target_tokens)
        cut = not kept
        if cut:  # not even the best unit fits: its first target_tokens tokens
            best = max(range(len(units)), key=lambda i: (scores[i], -i))
            ids = self.lm.encode(units[best].text, special=False)[: self.target_tokens]
            chosen = [Unit(units[best].passage, self.lm.tokenizer.decode(ids).strip())]
            kept = [best]
        else:
            chosen = [units[i] for i in kept]
        text = join_units(chosen)
        source = list(dict.fromkeys(passages[u.passage].id for u in chosen))
        return {
            "compressed": text,
            "source_ids": source,
            "tokens": self.lm.count(text),
            "units": len(units),
            "kept": kept,
            "scores": [round(scores[i], 4) for i in kept],
            "cut": cut,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "method": "question-aware coarse ranking (LongLLMLingua-style): mean log p(question + restrict | unit)",
            "version": VERSION,
            "restrict": RESTRICT,
            "model": self.lm.info,
            "target_tokens": self.target_tokens,
            "granularity": self.granularity,
        }
