"""The ``sample`` dataset: the package's own smoke-test set, not a benchmark.

``sample_data/questions.jsonl`` holds ``{"id", "split", "question", "answers", "passage_ids"}``
lines (split ``test`` or ``train``) and ``sample_data/passages.jsonl`` holds
``{"id", "title", "text"}`` lines; each example's ``ctxs`` are its gold passages, in order.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from iagbench.contract.components import Dataset
from iagbench.contract.errors import ConfigurationError, DataError
from iagbench.contract.types import Example, Passage

from .formats import RecordError, check_answers, check_question, json_lines

QUESTIONS = "questions.jsonl"
PASSAGES = "passages.jsonl"
NOTE = "a smoke-test set, not a benchmark"


class Sample(Dataset):
    """A smoke-test set, not a benchmark: a few questions with their gold passages as ``ctxs``.

    ``root`` is the folder holding ``questions.jsonl`` and ``passages.jsonl`` (default: the
    package's own ``sample_data``).
    """

    name: ClassVar[str] = "sample"
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

    def __init__(self, root: str | os.PathLike[str] | None = None):
        self.root = Path(root).expanduser() if root else None

    def load(self, split: str) -> list[Example]:
        """The examples of ``split``, in file order (the whole file is checked on every load)."""
        self._check_split(split)
        with ExitStack() as stack:
            questions, passages = (stack.enter_context(self._file(name)) for name in (QUESTIONS, PASSAGES))
            by_id = read_passages(passages)
            return [example for record_split, example in read_questions(questions, by_id) if record_split == split]

    def describe(self, split: str) -> dict[str, Any]:
        self._check_split(split)
        files = []
        for name in (QUESTIONS, PASSAGES):
            with self._file(name) as path:
                files.append(
                    {
                        "path": str(path.resolve()),
                        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                        "format": "jsonl",
                    }
                )
        return {"source": "files", "files": files, "note": NOTE}

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigurationError(
                f"dataset '{self.name}' has no split '{split}'; known splits: {', '.join(self.splits)}"
            )

    def _file(self, name: str) -> Any:
        """A context manager giving a real path to one data file, or a ConfigurationError if it is missing."""
        resource = (self.root if self.root else importlib.resources.files("iagbench_plugins") / "sample_data") / name
        if not resource.is_file():
            raise ConfigurationError(f"dataset 'sample': data file {resource} does not exist")
        return importlib.resources.as_file(resource)


def read_passages(path: Path) -> dict[str, Passage]:
    """The passages of ``passages.jsonl`` by id."""
    passages: dict[str, Passage] = {}
    for line, record in json_lines(path):
        try:
            passage = _passage(record)
        except RecordError as exc:
            raise DataError(path, line, exc.field, exc.message) from None
        if passage.id in passages:
            raise DataError(path, line, "id", f"passage id '{passage.id}' is used twice")
        passages[passage.id] = passage  # type: ignore[index]
    return passages


def _passage(record: Any) -> Passage:
    if not isinstance(record, dict):
        raise RecordError(None, "expected a JSON object {id, title, text}")
    for key in ("id", "title", "text"):
        if not isinstance(record.get(key), str) or (key != "title" and not record[key].strip()):
            raise RecordError(key, "expected a non-empty string" if key != "title" else "expected a string")
    return Passage(text=record["text"], title=record["title"], id=record["id"])


def read_questions(path: Path, passages: dict[str, Passage]) -> Iterator[tuple[str, Example]]:
    """``(split, example)`` for each line of ``questions.jsonl``; ids must be unique over the file."""
    seen: set[str] = set()
    for line, record in json_lines(path):
        try:
            split, example = _question(record, passages)
        except RecordError as exc:
            raise DataError(path, line, exc.field, exc.message) from None
        if example.id in seen:
            raise DataError(path, line, "id", f"question id '{example.id}' is used twice")
        seen.add(example.id)
        yield split, example


def _question(record: Any, passages: dict[str, Passage]) -> tuple[str, Example]:
    if not isinstance(record, dict):
        raise RecordError(None, "expected a JSON object {id, split, question, answers, passage_ids}")
    if not isinstance(record.get("id"), str) or not record["id"].strip():
        raise RecordError("id", "expected a non-empty string")
    if record.get("split") not in Sample.splits:
        raise RecordError("split", f"expected one of {', '.join(Sample.splits)}, got {record.get('split')!r}")
    ids = record.get("passage_ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise RecordError("passage_ids", "expected a list of passage id strings")
    unknown = [i for i in ids if i not in passages]
    if unknown:
        raise RecordError("passage_ids", f"unknown passage id '{unknown[0]}'")
    example = Example(
        id=record["id"],
        question=check_question(record.get("question")),
        answers=check_answers(record.get("answers")),
        ctxs=tuple(passages[i] for i in ids),
    )
    return record["split"], example
