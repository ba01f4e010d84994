"""FiD encoder inputs: how a (question, passage) pair becomes encoder text, and passage states packed per example."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iagbench import ConfigurationError, Passage


@dataclass(frozen=True)
class InputFormat:
    """How a (question, passage) pair becomes encoder text; its name and version go into every run's record."""

    name: str
    version: int
    question: str
    passage: str
    note: str = ""

    def texts(self, question: str, passages: Sequence[Passage]) -> list[str]:
        """One encoder input per passage, or the question alone when there are none."""
        if not passages:
            return [self.question.format(question=question)]
        return [self.passage.format(question=question, title=p.title, text=p.text) for p in passages]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "question": self.question,
            "passage": self.passage,
            "note": self.note,
        }


FID_FORMAT = InputFormat(
    name="fid",
    version=1,
    question="question: {question}",
    passage="question: {question} title: {title} context: {text}",
    note="facebookresearch/FiD src/data.py: question_prefix + ' ' + question + ' ' + 'title: {} context: {}'",
)


@dataclass(frozen=True)
class SingleRowFormat(InputFormat):
    """The question and every passage's text (no titles) in one encoder row."""

    def texts(self, question: str, passages: Sequence[Passage]) -> list[str]:
        return [self.passage.format(question=question, text=" ".join(p.text for p in passages)).rstrip()]


SINGLE_ROW_FORMAT = SingleRowFormat(
    name="single-row",
    version=1,
    question="question: {question}",
    passage="question: {question}\n{text}",
    note="the ImcQA reference's student input (data/data_interface.py:57, 180): question + '\\n' + context, "
    "the passages' texts joined by spaces",
)
FORMATS = {"fid": FID_FORMAT, "single-row": SINGLE_ROW_FORMAT}


def input_format(name: str) -> InputFormat:
    """The format of reader option ``input``."""
    if name not in FORMATS:
        raise ConfigurationError(f"reader option input={name!r}: expected one of {', '.join(FORMATS)}")
    return FORMATS[name]


@dataclass
class Encoded:
    """The encoder side of a batch: packed states, their mask, and what went in."""

    hidden: Any  # (examples, tokens, d_model): each example's passages, padding left out, concatenated
    mask: Any  # (examples, tokens): 1 on real tokens
    rows: Any  # (encoder rows,): the example of each encoder row (one row per passage)
    info: list[dict[str, Any]]  # per example: passages, passages cut at text_maxlength, tokens


def pack_rows(hidden: Any, mask: Any, row_examples: Any, examples: int) -> tuple[Any, Any]:
    """Concatenate each example's rows, leaving padding out: (rows, width, d) -> (examples, longest, d) and its mask.

    Rows must be grouped by example, in order (as ``encoder_inputs`` makes them). Differentiable.
    """
    import torch

    flat_mask = mask.reshape(-1).bool()
    positions = flat_mask.nonzero(as_tuple=True)[0]
    token_example = row_examples.repeat_interleave(mask.shape[1])[positions]
    lengths = torch.bincount(token_example, minlength=examples)
    starts = torch.cumsum(lengths, 0) - lengths
    rank = torch.arange(len(positions), device=hidden.device) - starts[token_example]
    longest = int(lengths.max()) if len(lengths) else 0
    packed = hidden.new_zeros((examples, longest, hidden.shape[-1]))
    packed = packed.index_put((token_example, rank), hidden.reshape(-1, hidden.shape[-1])[positions])
    packed_mask = mask.new_zeros((examples, longest))
    packed_mask[token_example, rank] = 1
    return packed, packed_mask
