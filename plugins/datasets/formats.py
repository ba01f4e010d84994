"""Readers for the question files of open-domain QA (``dpr-csv``, ``jsonl``, ``json``), each a generator of
``Example``.

Design notes: docs/internals.md#pluginsdatasetsformatspy"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from iagbench.contract.errors import ConfigurationError, DataError
from iagbench.contract.types import Example, Passage

FORMATS = ("dpr-csv", "jsonl", "json")

IdMaker = Callable[[str, "str | None"], str]
"""Gives a record its id from ``(question, own_id)``."""


class RecordError(ValueError):
    """A bad field in one record; readers add the file and line and raise ``DataError``."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class StableIds:
    """Stable ids for the questions of one split, in file order.

    A record's own id wins; otherwise ``{dataset}-{split}-{sha1(question.strip())[:10]}``.
    A repeated id gets ``-2``, ``-3``... in the order met.
    """

    def __init__(self, dataset: str, split: str):
        self.prefix = f"{dataset}-{split}"
        self.used: set[str] = set()

    def __call__(self, question: str, own_id: str | None = None) -> str:
        base = own_id if own_id is not None else f"{self.prefix}-{question_hash(question)}"
        candidate, n = base, 1
        while candidate in self.used:
            n += 1
            candidate = f"{base}-{n}"
        self.used.add(candidate)
        return candidate


def question_hash(question: str) -> str:
    """The first 10 hex digits of the SHA-1 of the stripped question."""
    return hashlib.sha1(question.strip().encode("utf-8")).hexdigest()[:10]


# ---- record checks, shared by every reader (and the hub and sample datasets) ----


def check_question(value: Any, field: str = "question") -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(field, f"expected a non-empty string, got {_show(value)}")
    return value


def check_answers(value: Any, field: str = "answers") -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise RecordError(field, f"expected a non-empty list of answer strings, got {_show(value)}")
    for i, answer in enumerate(value):
        if not isinstance(answer, str) or not answer.strip():
            raise RecordError(f"{field}[{i}]", f"expected a non-empty string, got {_show(answer)}")
    return tuple(value)


def check_id(value: Any, field: str = "id") -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RecordError(field, f"expected a non-empty string or an integer, got {_show(value)}")
    return str(value)


def check_ctxs(value: Any) -> tuple[Passage, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RecordError("ctxs", f"expected a list of passages, got {_show(value)}")
    return tuple(_passage(ctx, f"ctxs[{i}]") for i, ctx in enumerate(value))


def _passage(ctx: Any, field: str) -> Passage:
    if not isinstance(ctx, dict):
        raise RecordError(field, f"expected an object {{title, text, id?, score?}}, got {_show(ctx)}")
    text, title = ctx.get("text"), ctx.get("title")
    if not isinstance(text, str):
        raise RecordError(f"{field}.text", f"expected a string, got {_show(text)}")
    if not isinstance(title, str):
        raise RecordError(f"{field}.title", f"expected a string, got {_show(title)}")
    return Passage(
        text=text, title=title, id=check_id(ctx.get("id"), f"{field}.id"), score=_score(ctx.get("score"), field)
    )


def _score(value: Any, field: str) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError):
        raise RecordError(f"{field}.score", f"expected a number, got {_show(value)}") from None


def json_record(record: Any, ids: IdMaker) -> Example:
    """An ``Example`` from one JSON record (see the module docstring for the accepted shape)."""
    if not isinstance(record, dict):
        raise RecordError(None, f"expected a JSON object, got {_show(record)}")
    webq = "question" not in record and ("qText" in record or "qId" in record)
    q_field = "qText" if webq else "question"
    question = check_question(record.get(q_field), q_field)
    a_field = "answers" if "answers" in record or "answer" not in record else "answer"
    answers = check_answers(record.get(a_field), a_field)
    id_field = "id" if "id" in record or "qId" not in record else "qId"
    own_id = check_id(record.get(id_field), id_field)
    return Example(id=ids(question, own_id), question=question, answers=answers, ctxs=check_ctxs(record.get("ctxs")))


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    kind = type(value).__name__ if value is not None else "null"
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


# ---- readers ----


def read_dpr_csv(path: str | Path, ids: IdMaker) -> Iterator[Example]:
    """DPR ``*.qa.csv``: ``question<TAB>answer-list`` rows, csv quoting, one record per row."""
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter="\t")
        start = 1
        try:
            for row in reader:
                if row:
                    yield _csv_example(row, path, start, ids)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(path, start, None, f"malformed csv: {exc}") from None


def _csv_example(row: list[str], path: str | Path, line: int, ids: IdMaker) -> Example:
    if len(row) != 2:
        raise DataError(path, line, None, f"expected 2 TAB-separated columns (question, answers), found {len(row)}")
    try:
        question = check_question(unwrap_csv_quoting(row[0]))
        try:
            answers = ast.literal_eval(row[1])
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise RecordError("answers", f"not a Python-literal list of strings: {row[1][:60]!r}") from None
        return Example(id=ids(question, None), question=question, answers=check_answers(answers))
    except RecordError as exc:
        raise DataError(path, line, exc.field, exc.message) from None


def unwrap_csv_quoting(text: str) -> str:
    """Undo a second layer of csv quoting that some copies of DPR's files carry in the question column.

    ``"How ... ""Animal Crackers"" cookie zoo?"`` (after the csv reader) is the csv encoding of
    ``How ... "Animal Crackers" cookie zoo?``: unwrapped when the outer quotes enclose only doubled
    quotes. A question that merely starts and ends with a quotation is kept as it is.
    """
    inner = text[1:-1]
    if len(text) >= 2 and text[0] == text[-1] == '"' and '""' in inner and '"' not in inner.replace('""', ""):
        return inner.replace('""', '"')
    return text


def read_jsonl(path: str | Path, ids: IdMaker) -> Iterator[Example]:
    """JSON lines: one record per non-blank line."""
    for line_number, record in json_lines(path):
        try:
            yield json_record(record, ids)
        except RecordError as exc:
            raise DataError(path, line_number, exc.field, exc.message) from None


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSON lines file, decoded, with its 1-based line number."""
    with _open_binary(path) as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, line_number, None, f"not UTF-8 text: {exc.reason}") from None
            if not text.strip():
                continue
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(path, line_number, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None


def read_json_array(path: str | Path, ids: IdMaker) -> Iterator[Example]:
    """One JSON array of records; errors name the line where the bad record starts."""
    with _open_text(path) as f:
        text = f.read()
    for line_number, record in _array_items(text, path):
        try:
            yield json_record(record, ids)
        except RecordError as exc:
            raise DataError(path, line_number, exc.field, exc.message) from None


_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _array_items(text: str, path: str | Path) -> Iterator[tuple[int, Any]]:
    """Each element of a top-level JSON array with the 1-based line where it starts."""
    decoder = json.JSONDecoder()
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    pos = _WHITESPACE.match(text, 0).end()
    if not text.startswith("[", pos):
        raise DataError(path, line_at(pos), None, "expected a JSON array of records ('[' ...)")
    pos = _WHITESPACE.match(text, pos + 1).end()
    closed = text.startswith("]", pos)
    while not closed:
        try:
            item, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(path, exc.lineno, None, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
        yield line_at(pos), item
        pos = _WHITESPACE.match(text, end).end()
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()
        elif text.startswith("]", pos):
            closed = True
        else:
            found = "the end of the file" if pos == len(text) else repr(text[pos])
            raise DataError(
                path, line_at(pos), None, f"invalid JSON: expected ',' or ']' after a record, found {found}"
            )
    extra = _WHITESPACE.match(text, pos + 1).end()
    if extra < len(text):
        raise DataError(path, line_at(extra), None, "invalid JSON: extra data after the array")


READERS: dict[str, Callable[[str | Path, IdMaker], Iterator[Example]]] = {
    "dpr-csv": read_dpr_csv,
    "jsonl": read_jsonl,
    "json": read_json_array,
}


def read(path: str | Path, ids: IdMaker, format: str | None = None) -> Iterator[Example]:
    """Read one file in ``format`` (detected when None)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"question file {path} {not_a_file(path)}")
    reader = READERS[check_format(format) if format else detect_format(path)]
    try:
        yield from reader(path, ids)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(path, None, None, f"cannot decompress: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(path, None, None, f"not UTF-8 text: {exc.reason}") from None


def not_a_file(path: Path) -> str:
    """Why ``path`` is not a readable file: "is a folder, not a file" or "does not exist"."""
    return "is a folder, not a file" if path.is_dir() else "does not exist"


def check_format(format: str) -> str:
    if format not in READERS:
        raise ConfigurationError(f"unknown question file format '{format}'; known formats: {', '.join(FORMATS)}")
    return format


def detect_format(path: str | Path) -> str:
    """The format of a file: ``.csv``/``.tsv`` is ``dpr-csv``; otherwise the first character decides."""
    path = Path(path)
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".csv", ".tsv")):
        return "dpr-csv"
    try:
        with _open_binary(path) as f:
            head = f.read(4096).decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(path, None, None, f"cannot decompress: {exc}") from None
    if head.startswith("["):
        return "json"
    if head.startswith("{"):
        return "jsonl"
    if "\t" in head.partition("\n")[0]:
        return "dpr-csv"
    raise ConfigurationError(f"cannot tell the format of {path}; pass format= one of {', '.join(FORMATS)}")


def _open_binary(path: str | Path) -> IO[bytes]:
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _open_text(path: str | Path) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")
