"""A worked example of an iagbench plugin: two imaginers, two readers, one metric, one command.

Everything here is a toy that shows the interfaces (see README.md and docs/plugins.md in the
iagbench repository); none of it is a method worth benchmarking. This module is the one the entry
point names, so it stays light (no torch): the per-example LoRA pair in ``lora.py``, which needs
torch and a model, is registered by a lazy "module:attribute" string and imported only when used.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from iagbench import (
    Answer,
    ConfigurationError,
    Context,
    DataError,
    Example,
    Imaginer,
    Metric,
    Passage,
    Reader,
    hookimpl,
)
from iagbench.files.jsonl import json_objects

WORD = re.compile(r"\w+")
_LORA = "iagbench_example_plugin.lora"  # imports torch: named here, imported only when a run uses it


def words(text: str) -> frozenset[str]:
    """The distinct lowercase word tokens of a text."""
    return frozenset(WORD.findall(text.lower()))


def read_corpus(path: Path) -> list[Passage]:
    """The passages of a JSON-lines file of ``{"id", "title", "text"}`` objects, in file order."""
    passages = []
    with open(path, encoding="utf-8") as handle:
        for line_number, record in json_objects(handle, path):
            for key in ("id", "title", "text"):
                if not isinstance(record.get(key), str):
                    raise DataError(path, line_number, key, "expected a string")
            passages.append(Passage(text=record["text"], title=record["title"], id=record["id"]))
    return passages


class KeywordPassages(Imaginer):
    """The ``k`` passages of ``corpus`` sharing the most distinct lowercase words with the question.

    An example of the imaginer interface, not a retriever: no stop words, no idf, a linear scan.
    Passages sharing no word are left out; ties keep file order; ``score`` is the shared-word count.
    """

    provides: ClassVar[frozenset[str]] = frozenset({"passages"})  # read before the class is built

    def __init__(self, corpus: str | os.PathLike[str] | None = None, k: int = 3):
        if not corpus:
            raise ConfigurationError("imaginer 'keyword-passages' needs --imaginer-args corpus=path/to/passages.jsonl")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigurationError(f"imaginer 'keyword-passages': k={k!r}, expected a positive integer")
        self.path = Path(str(corpus)).expanduser()
        if not self.path.is_file():
            raise ConfigurationError(f"imaginer 'keyword-passages': passage file {self.path} does not exist")
        self.k = k
        self.passages = read_corpus(self.path)
        self._words = [words(f"{passage.title} {passage.text}") for passage in self.passages]

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        return [Context(passages=self.top(example.question)) for example in examples]

    def top(self, question: str) -> tuple[Passage, ...]:
        query = words(question)
        overlaps = [(len(query & passage_words), index) for index, passage_words in enumerate(self._words)]
        best = sorted((item for item in overlaps if item[0] > 0), key=lambda item: (-item[0], item[1]))[: self.k]
        return tuple(replace(self.passages[index], score=float(shared)) for shared, index in best)

    def describe(self) -> dict[str, Any]:
        return {"corpus": str(self.path.resolve()), "passages": len(self.passages), "k": self.k}


class FirstPassageTitle(Reader):
    """Answers with the title of the first passage it is given, or "" without one: a toy reader."""

    accepts: ClassVar[frozenset[str]] = frozenset({"passages"})

    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        answers = []
        for context in contexts:
            first = context.passages[0] if context.passages else None
            # An Answer is a str (the text that is scored) that also carries details for predictions.jsonl.
            answers.append(Answer(first.title, details={"passage_id": first.id}) if first else Answer(""))
        return answers


class ExactTitle(Metric):
    """1.0 when the prediction equals a gold answer ignoring case (no other normalisation), else 0.0."""

    name: ClassVar[str] = "exact_title"
    version: ClassVar[str] = "1"

    def score(self, prediction: str, answers: Sequence[str], passages: Sequence[Passage]) -> dict[str, float]:
        return {self.name: float(prediction.casefold() in {answer.casefold() for answer in answers})}


class KeywordSearch:
    """``iagbench keyword-search QUESTION --corpus FILE``: the passages `keyword-passages` would give, as JSON lines.

    A command is any object with ``configure(options)`` (its options, added to iagbench's option table for the
    command) and ``run(invocation)`` (the parsed arguments, the loaded plugins; returns the exit status).
    """

    @staticmethod
    def configure(options: Any) -> None:
        options.add("question", help="the question to search for")
        options.add("--corpus", required=True, help="JSON lines of {id, title, text}")
        options.add("--k", type=int, default=3, help="passages to show (default: 3)")

    @staticmethod
    def run(invocation: Any) -> int:
        invocation.options.check_required({"corpus": invocation.given("corpus")})
        imaginer = (
            invocation.plugins["imaginers"]
            .get("keyword-passages")
            .build(corpus=invocation.given("corpus"), k=invocation.given("k"))
        )
        for passage in imaginer.top(invocation.args.question):
            print(json.dumps(passage.to_json(), ensure_ascii=False))
        return 0


@hookimpl
def register_commands(register) -> None:
    register("keyword-search", KeywordSearch, description="EXAMPLE: the passages keyword-passages finds for a question")


@hookimpl
def register_imaginers(register) -> None:
    register(
        "keyword-passages",
        KeywordPassages,
        description="EXAMPLE: k=3 passages of corpus= sharing the most words with the question",
    )
    register(
        "seeded-lora",
        f"{_LORA}:SeededLoRA",
        description="EXAMPLE: a random LoRA adapter per question, seeded by its text (model= the reader's)",
    )


@hookimpl
def register_readers(register) -> None:
    register("first-passage-title", FirstPassageTitle, description="EXAMPLE: answers with the first passage's title")
    register(
        "lora-lm",
        f"{_LORA}:LoRALM",
        description="EXAMPLE: causal LM applying each question's LoRA adapter (default model: tiny RANDOM Llama)",
    )


@hookimpl
def register_metrics(register) -> None:
    register("exact_title", ExactTitle, description="EXAMPLE: prediction equals a gold answer, ignoring case only")
