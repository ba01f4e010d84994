"""Question-aware compression of retrieved passages (LongLLMLingua's coarse-grained ranking and, with
``prune="tokens"``, its token-level contrastive-perplexity pruning; our implementation). ``prune="llmlingua"``
runs the port of LLMLingua 0.2.2's compress_prompt with the reference's arguments instead (``.llmlingua``).

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
PRUNE_VERSION = "2"  # the version with prune="tokens" (bump both when the coarse stage changes)
LLMLINGUA_VERSION = "3"  # the version with prune="llmlingua" (bump when the port changes)
GRANULARITIES = ("sentence", "passage")
PRUNES = ("none", "tokens", "llmlingua")
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


def version(prune: str = "none") -> str:
    """The compressor's version: ``VERSION``, ``PRUNE_VERSION`` with token pruning, ``LLMLINGUA_VERSION`` with the
    LLMLingua port (earlier files keep theirs)."""
    return {"tokens": PRUNE_VERSION, "llmlingua": LLMLINGUA_VERSION}.get(prune, VERSION)


def prune_tokens(scores: Sequence[float], budget: int) -> list[int]:
    """Positions of the tokens kept: the ``budget`` highest scores (ties: earlier first), in their order."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:budget])


Scorer = Callable[[str, Sequence[str]], list[float]]
"""(question, conditions) -> one score per condition, higher = the question is likelier after it."""
TokenScorer = Callable[[str, Sequence[int]], list[float]]
"""(question, token ids of a text) -> one score per token, higher = keep it first."""


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
        prune: str = "none",
        context_budget: int = 100,
        token_scorer: TokenScorer | None = None,
    ):
        from .lm import CausalLM, check_positive

        self.target_tokens = check_positive(target_tokens, "target_tokens", "compress")
        self.batch_size = check_positive(batch_size, "batch_size", "compress")
        if granularity not in GRANULARITIES:
            raise ConfigurationError(
                f"compress option granularity={granularity!r}: expected one of {', '.join(GRANULARITIES)}"
            )
        self.granularity = granularity
        if prune not in PRUNES:
            raise ConfigurationError(f"compress option prune={prune!r}: expected one of {', '.join(PRUNES)}")
        if prune == "llmlingua" and granularity != "passage":
            raise ConfigurationError(
                "compress option prune='llmlingua' keeps or drops whole passages (use_sentence_level_filter=False): "
                "set granularity='passage'"
            )
        self.prune = prune
        self.context_budget = check_positive(context_budget, "context_budget", "compress") if prune != "none" else 0
        self.lm = CausalLM(model, dtype=dtype, device=device)
        self.scorer: Scorer = scorer or self.question_logprob
        self.token_scorer: TokenScorer = token_scorer or self.contrastive_logprob
        self.llmlingua = None
        if prune == "llmlingua":
            from .llmlingua import LLMLingua

            self.llmlingua = LLMLingua(
                self.lm,
                target_tokens=self.target_tokens,
                context_budget=self.context_budget,
                batch_size=self.batch_size,
            )

    def question_logprob(self, question: str, conditions: Sequence[str]) -> list[float]:
        """Mean log p(question + RESTRICT | condition) per condition (LongLLMLingua's question-aware score)."""
        return self.lm.continuation_logprob(conditions, f"\n{question} {RESTRICT}", batch_size=self.batch_size)

    def contrastive_logprob(self, question: str, ids: Sequence[int]) -> list[float]:
        """Per token, log p(token | question, earlier tokens) - log p(token | earlier tokens) (LongLLMLingua's
        contrastive perplexity, ``condition_compare``: the question before the text, separated by a blank line)."""
        tokenizer = self.lm.tokenizer
        start = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
        asked = start + self.lm.encode(f"{question}\n\n", special=False)
        given, alone = self.lm.token_logprobs([(asked, list(ids)), (start, list(ids))])
        return [a - b for a, b in zip(given, alone)]

    def prune_text(self, question: str, text: str) -> tuple[str, int]:
        """``text`` cut to its ``target_tokens`` best tokens by ``token_scorer``, in order; and its token count before."""
        ids = self.lm.encode(text, special=False)
        if len(ids) <= self.target_tokens:
            return text, len(ids)
        scores = self.token_scorer(question, ids)
        if len(scores) != len(ids):
            raise ConfigurationError(f"token scorer returned {len(scores)} scores for {len(ids)} tokens")
        kept = [ids[i] for i in prune_tokens(scores, self.target_tokens)]
        return self.lm.tokenizer.decode(kept).strip(), len(ids)

    def compress(self, question: str, passages: Sequence[Passage]) -> dict[str, Any]:
        """The compressed context and what it was made of: source passage ids, scores, tokens."""
        if self.llmlingua is not None:
            return self.llmlingua.compress(question, passages)
        units = units_of(passages, self.granularity)
        if not units:
            return {"compressed": "", "source_ids": [], "tokens": 0, "units": 0, "kept": [], "cut": False}
        conditions = [f"{passages[u.passage].title}\n{u.text}" if passages[u.passage].title else u.text for u in units]
        scores = self.scorer(question, conditions)
        if len(scores) != len(units):
            raise ConfigurationError(f"scorer returned {len(scores)} scores for {len(units)} units")
        lengths = [self.lm.count(u.text) for u in units]
        budget = self.target_tokens + self.context_budget  # LongLLMLingua's context_budget "+100" when pruning
        kept = select(scores, lengths, budget)
        cut = not kept
        if cut:  # not even the best unit fits: its first `budget` tokens
            best = max(range(len(units)), key=lambda i: (scores[i], -i))
            ids = self.lm.encode(units[best].text, special=False)[:budget]
            chosen = [Unit(units[best].passage, self.lm.tokenizer.decode(ids).strip())]
            kept = [best]
        else:
            chosen = [units[i] for i in kept]
        text = join_units(chosen)
        source = list(dict.fromkeys(passages[u.passage].id for u in chosen))
        pruned: dict[str, Any] = {}
        if self.prune == "tokens":
            text, before = self.prune_text(question, text)
            pruned = {"tokens_before_pruning": before}
        return {
            "compressed": text,
            "source_ids": source,
            "tokens": self.lm.count(text),
            "units": len(units),
            "kept": kept,
            "scores": [round(scores[i], 4) for i in kept],
            "cut": cut,
            **pruned,
        }

    def describe(self) -> dict[str, Any]:
        if self.llmlingua is not None:
            return self.describe_llmlingua()
        described = {
            "method": "question-aware coarse ranking (LongLLMLingua-style): mean log p(question + restrict | unit)",
            "version": version(self.prune),
            "restrict": RESTRICT,
            "model": self.lm.info,
            "target_tokens": self.target_tokens,
            "granularity": self.granularity,
        }
        if self.prune != "none":  # recorded only when on: earlier pairs files keep their description
            described["prune"] = {
                "method": "the target_tokens tokens of highest log p(token | question, prefix) - log p(token | prefix)",
                "context_budget": self.context_budget,
            }
        return described

    def describe_llmlingua(self) -> dict[str, Any]:
        from .llmlingua import DYNAMIC_RATIO, INSTRUCTION, ITERATIVE_SIZE, QUESTION_SUFFIX

        return {
            "method": "LLMLingua 0.2.2 compress_prompt with data/compress.py's arguments (ported; docs/fidelity.md)",
            "version": version(self.prune),
            "model": self.lm.info,
            "target_tokens": self.target_tokens,
            "granularity": self.granularity,
            "prune": {
                "method": "llmlingua",
                "context_budget": self.context_budget,
                "rank_method": "longllmlingua",
                "question_suffix": QUESTION_SUFFIX,
                "condition_in_question": "after",
                "condition_compare": True,
                "reorder_context": "sort",
                "dynamic_context_compression_ratio": DYNAMIC_RATIO,
                "iterative_size": ITERATIVE_SIZE,
                "instruction": INSTRUCTION,
            },
        }
