"""Versioned prompt templates for causal-LM readers, and short-answer extraction.

A template's version is part of every result: change the text or the extraction, bump it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from iagbench import ConfigurationError, Passage

# Worked examples shown before every question (written for this project; none comes from a benchmark).
FEW_SHOT: tuple[tuple[str, str], ...] = (
    ("who composed the opera the magic flute", "Wolfgang Amadeus Mozart"),
    ("what is the chemical symbol for tungsten", "W"),
    ("in which country is the city of porto", "Portugal"),
    ("how many strings does a standard violin have", "4"),
    ("when did the titanic sink", "1912"),
)

# Worked examples with passages, shown instead of FEW_SHOT when the question comes with passages: they
# show the model that the answer is read from the passages, and that some passages do not help.
# Written for this project (general knowledge, no text from a benchmark or corpus).
PASSAGE_SHOTS: tuple[tuple[tuple[tuple[str, str], ...], str, str], ...] = (
    (
        (
            (
                "Don Giovanni",
                "Don Giovanni is an opera in two acts with music by Mozart and an Italian libretto by "
                "Lorenzo Da Ponte, first performed in Prague in 1787.",
            ),
            (
                "The Magic Flute",
                "The Magic Flute is an opera in two acts by Wolfgang Amadeus Mozart to a German "
                "libretto by Emanuel Schikaneder. It premiered in Vienna on 30 September 1791.",
            ),
        ),
        "who wrote the libretto of the magic flute",
        "Emanuel Schikaneder",
    ),
    (
        (
            (
                "Tungsten",
                "Tungsten, or wolfram, is a chemical element with the symbol W and atomic number 74. It has "
                "the highest melting point of all known elements.",
            ),
            ("Tin", "Tin is a chemical element with the symbol Sn and atomic number 50. It is a silvery metal."),
        ),
        "what is the atomic number of tungsten",
        "74",
    ),
    (
        (
            (
                "Douro",
                "The Douro is one of the major rivers of the Iberian Peninsula, flowing from Spain through "
                "northern Portugal to the Atlantic Ocean.",
            ),
            (
                "Porto",
                "Porto is the second-largest city in Portugal, after Lisbon. It lies on the estuary of the "
                "Douro River in the north of the country.",
            ),
        ),
        "in which country is the city of porto",
        "Portugal",
    ),
    (
        (
            (
                "Titanic",
                "RMS Titanic was a British passenger liner that sank in the North Atlantic Ocean on 15 April "
                "1912 after striking an iceberg during her maiden voyage from Southampton to New York City.",
            ),
        ),
        "when did the titanic sink",
        "15 April 1912",
    ),
)

INSTRUCTION = "Answer the question with a short answer of a few words, without explanation."
PASSAGE_INSTRUCTION = (
    "Answer the question with a short answer of a few words, without explanation, using the passages if they help."
)


@dataclass(frozen=True)
class PromptTemplate:
    """How a question (and its passages) becomes the model's input, and how its output becomes an answer."""

    name: str
    version: str
    few_shot: tuple[tuple[str, str], ...] = ()
    instruction: str = INSTRUCTION
    extract: bool = True
    stop: tuple[str, ...] = ("\n",)
    use_chat: bool = True
    passage_shots: tuple[tuple[tuple[tuple[str, str], ...], str, str], ...] = ()
    best_last: bool = False
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "few_shot": len(self.few_shot),
            "extract": self.extract,
            "stop": list(self.stop),
            "passage_shots": len(self.passage_shots),
            "passage_order": "best last" if self.best_last else "best first",
        }

    def render(self, question: str, passages: Sequence[Passage], tokenizer: Any, *, chat: bool) -> str:
        """The full prompt text, through the tokenizer's chat template when ``chat``."""
        if chat:
            return self._render_chat(question, passages, tokenizer)
        return self._render_plain(question, passages)

    def _render_chat(self, question: str, passages: Sequence[Passage], tokenizer: Any) -> str:
        messages = [{"role": "system", "content": PASSAGE_INSTRUCTION if passages else self.instruction}]
        for shot_passages, shot_question, shot_answer in self.shots(passages):
            messages.append({"role": "user", "content": format_passages(shot_passages) + f"Question: {shot_question}"})
            messages.append({"role": "assistant", "content": shot_answer})
        messages.append({"role": "user", "content": format_passages(self.ordered(passages)) + f"Question: {question}"})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _render_plain(self, question: str, passages: Sequence[Passage]) -> str:
        parts = [PASSAGE_INSTRUCTION if passages else self.instruction, ""] if self.instruction else []
        for shot_passages, shot_question, shot_answer in self.shots(passages):
            parts.append(format_passages(shot_passages) + f"Question: {shot_question}\nAnswer: {shot_answer}\n")
        parts.append(format_passages(self.ordered(passages)) + f"Question: {question}\nAnswer:")
        return "\n".join(parts)

    def shots(self, passages: Sequence[Passage]) -> list[tuple[list[Passage], str, str]]:
        """The worked examples: with their own passages when the question has passages and the template has such shots."""
        if passages and self.passage_shots:
            return [([Passage(text, title) for title, text in shot], q, a) for shot, q, a in self.passage_shots]
        return [([], q, a) for q, a in self.few_shot]

    def ordered(self, passages: Sequence[Passage]) -> list[Passage]:
        """Passages in prompt order: rank order, or reversed so that the best one is nearest the question."""
        return list(reversed(passages)) if self.best_last else list(passages)

    def answer(self, generated: str) -> str:
        return extract_short_answer(generated) if self.extract else generated.strip()


def format_passages(passages: Sequence[Passage]) -> str:
    if not passages:
        return ""
    lines = [
        f"Passage {i} ({p.title}): {p.text}" if p.title else f"Passage {i}: {p.text}" for i, p in enumerate(passages, 1)
    ]
    return "\n".join(lines) + "\n\n"


_PREFIX = re.compile(r"^\s*(?:answer|a)\s*[:\-]\s*", re.IGNORECASE)


def extract_short_answer(generated: str) -> str:
    """The first line of the output, without an 'Answer:' prefix, wrapping quotes or a final period."""
    line = generated.strip().split("\n", 1)[0]
    line = _PREFIX.sub("", line).strip()
    if len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    return line.rstrip(".").strip()


TEMPLATES: dict[str, PromptTemplate] = {
    # Plain-text few-shot works for base and instruct models alike (SmolLM2-135M-Instruct, NQ test
    # first 120: em 4.2 plain vs 0.0 through its chat template, which answers in whole sentences).
    # v2: with passages, worked examples that have passages (some unhelpful) and the best passage last,
    # nearest the question (SmolLM2-135M, bm25 top-5, first 80 nq-oracle questions: subspan_em 13.8 with
    # v1's rank order and passage-free examples, 21.2 best-last alone, 23.8 both; benchmarks/NOTES.md).
    # Closed-book prompts are unchanged from v1.
    "short-answer": PromptTemplate(
        "short-answer", "2", few_shot=FEW_SHOT, use_chat=False, passage_shots=PASSAGE_SHOTS, best_last=True
    ),
    "short-answer-chat": PromptTemplate("short-answer-chat", "1", few_shot=FEW_SHOT),
    # For fine-tuned readers (LoRA, HyperLoRA): the bare question, answer up to the newline, extracted.
    "qa": PromptTemplate("qa", "1", instruction="", use_chat=False),
    # The bare baseline: no instruction, no examples, no chat template, no extraction, no stop string.
    "plain": PromptTemplate("plain", "1", instruction="", extract=False, stop=(), use_chat=False),
}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigurationError(f"unknown prompt '{name}'; known prompts: {', '.join(sorted(TEMPLATES))}") from None
