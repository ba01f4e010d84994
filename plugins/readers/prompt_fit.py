"""How a causal-LM reader fits a question and its passages into ``max_input_tokens``, and records what it cut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from iagbench import ConfigurationError, Passage

from .question_cut import cut_question


class PromptFitter:
    """Prompt rendering and fitting for a reader with ``tokenizer``, ``template``, ``chat``, ``max_input_tokens``
    and ``passage_tokens``."""

    tokenizer: Any
    template: Any
    chat: bool
    max_input_tokens: int
    passage_tokens: int | None

    def render(self, question: str, passages: Sequence[Passage]) -> str:
        return self.template.render(question, passages, self.tokenizer, chat=self.chat)

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def fit(self, question: str, passages: Sequence[Passage]) -> tuple[str, dict[str, Any]]:
        """The prompt within ``max_input_tokens``: the question cut to what the template leaves, then the passages.

        A question cut is recorded as ``question_cut`` ({"tokens": N, "kept": M}); a question that fits is used as
        it is. A question too long for the prompt with passages gets the prompt without them, cut to its room.
        """
        fitted = self.fit_question(question, [Passage("", p.title) for p in passages]) if passages else None
        if fitted is not None and fitted[1] is None:
            return self.fit_passages(fitted[0], passages)
        fitted = self.fit_question(question, [])
        if fitted is None:
            raise ConfigurationError(
                f"reader option max_input_tokens={self.max_input_tokens}: the prompt template alone fills it"
            )
        prompt = self.render(fitted[0], [])
        info: dict[str, Any] = {"prompt_tokens": self.count(prompt)}
        if passages:
            info.update(passages_given=len(passages), passages_in_prompt=0, passages_cut=[])
        if fitted[1] is not None:
            info["question_cut"] = fitted[1]
        return prompt, info

    def fit_question(self, question: str, frame: Sequence[Passage]) -> tuple[str, dict[str, int] | None] | None:
        """The question cut so that its prompt with ``frame`` (passages without text) fits ``max_input_tokens``,
        and the cut's record (None when it fits as it is); None when the frame alone fills the prompt.

        Only a head of a long question is tokenized.
        """
        limit = self.max_input_tokens - self.count(self.render("", frame))
        for _ in range(4):  # token merges where the question meets the template: shorten by what is over
            if limit < 1:
                return None
            cut, record = cut_question(self.tokenizer, question, limit)
            over = self.count(self.render(cut, frame)) - self.max_input_tokens if record is not None else 0
            if over <= 0:
                return cut, record
            limit -= over
        return None

    def fit_passages(self, question: str, passages: Sequence[Passage]) -> tuple[str, dict[str, Any]]:
        """The prompt, with passages cut to ``passage_tokens`` each and, in rank order, to the input budget.

        Top-ranked passages are kept whole as long as they fit; the first one that does not is cut
        at a token boundary and the rest are left out. What was cut is returned for the record.
        """
        texts = [self._tokens(p.text) for p in passages]
        if self.passage_tokens:
            texts = [tokens[: self.passage_tokens] for tokens in texts]
        overhead = self.count(self.render(question, [Passage("", p.title) for p in passages]))
        budget = self.max_input_tokens - overhead - 2 * len(passages)  # room for token merges at the seams
        kept: list[Passage] = []
        cut: list[int] = []
        for index, (passage, tokens) in enumerate(zip(passages, texts)):
            original = len(self._tokens(passage.text))
            take = tokens[: max(budget, 0)]
            if not take:
                break
            budget -= len(take)
            if len(take) < original:
                cut.append(index)
            kept.append(Passage(self.tokenizer.decode(take), passage.title, passage.id, passage.score))
        prompt = self.render(question, kept)
        info = {
            "prompt_tokens": self.count(prompt),
            "passages_given": len(passages),
            "passages_in_prompt": len(kept),
            "passages_cut": cut,
        }
        if info["prompt_tokens"] > self.max_input_tokens and kept:
            raise ConfigurationError(
                f"prompt of {info['prompt_tokens']} tokens exceeds max_input_tokens={self.max_input_tokens} after fitting"
            )
        return prompt, info

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
