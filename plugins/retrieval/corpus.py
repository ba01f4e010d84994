"""Passage corpora for retrieval: reading, checking, fingerprinting, and a random-access store.

Design notes: docs/internals.md#pluginsretrievalcorpuspy
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from iagbench.contract.errors import ConfigurationError, DataError
from iagbench.contract.types import Passage
from iagbench.files.cache import cached_sha256
from iagbench.files.jsonl import json_objects

from .index_cache import Index, ensure_index, log

FORMATS = ("dpr-tsv", "jsonl", "flashrag")
TSV_COLUMNS = ("id", "text", "title")
STORE_VERSION = 1


@dataclass(frozen=True)
class Corpus:
    """A corpus file: where it is, its format, its sha256."""

    path: Path
    format: str
    sha256: str

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "sha256": self.sha256}


def open_corpus(path: str | os.PathLike[str] | None, format: str | None = None) -> Corpus:
    """Check that the corpus file exists, settle its format and fingerprint it."""
    if path is None or str(path) == "":
        raise ConfigurationError(
            "corpus= is required: a DPR passages TSV, {id,title,text} JSON lines or FlashRAG JSON lines"
        )
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        why = "is a folder, not a file" if resolved.is_dir() else "does not exist"
        raise ConfigurationError(f"corpus file {path} {why}")
    if format is not None and format not in FORMATS:
        raise ConfigurationError(f"unknown corpus format '{format}'; known formats: {', '.join(FORMATS)}")
    return Corpus(resolved, format or detect_format(resolved), cached_sha256(resolved))


def detect_format(path: Path) -> str:
    """``.tsv``/``.csv`` (gzipped too) is ``dpr-tsv``; a JSON first line is ``flashrag`` if it has ``contents``, else ``jsonl``."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".csv")):
        return "dpr-tsv"
    try:
        with _open_binary(path) as handle:
            first = b""
            for raw in handle:
                if raw.strip():
                    first = raw
                    break
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(path, None, None, f"cannot decompress: {exc}") from None
    text = first.decode("utf-8", errors="replace").lstrip("\ufeff \t")
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            return "jsonl"  # reading it reports the bad line
        return "flashrag" if isinstance(record, dict) and "contents" in record and "text" not in record else "jsonl"
    if "\t" in text:
        return "dpr-tsv"
    raise ConfigurationError(f"cannot tell the format of corpus {path}; pass format= one of {', '.join(FORMATS)}")


def read_corpus(corpus: Corpus) -> Iterator[tuple[int, Passage]]:
    """Each passage with the line where its record starts, checked (ids unique) in file order."""
    reader = {"dpr-tsv": _read_tsv, "jsonl": _read_jsonl, "flashrag": _read_flashrag}[corpus.format]
    seen: dict[str, int] = {}
    try:
        for line, passage in reader(corpus.path):
            first = seen.setdefault(passage.id, line)  # type: ignore[arg-type]
            if first != line:
                raise DataError(
                    corpus.path, line, "id", f"passage id '{passage.id}' is used twice (first on line {first})"
                )
            yield line, passage
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(corpus.path, None, None, f"cannot decompress: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(corpus.path, None, None, f"not UTF-8 text: {exc.reason}") from None


def check_passage_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"expected a string or an integer, got {_show(value)}")
    text = str(value)
    if not text.strip() or text != text.strip() or any(ch in text for ch in "\t\r\n"):
        raise ValueError(f"expected a non-empty id without surrounding spaces, TAB or line breaks, got {_show(value)}")
    return text


def _read_tsv(path: Path) -> Iterator[tuple[int, Passage]]:
    with _open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t")
        start = 1
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(path, 1, None, "empty file: expected a header 'id<TAB>text<TAB>title'")
            columns = {name.strip(): i for i, name in enumerate(header)}
            for name in TSV_COLUMNS:
                if name not in columns:
                    raise DataError(path, 1, name, f"the header has no '{name}' column (found: {', '.join(header)})")
            start = reader.line_num + 1
            for row in reader:
                if row and any(cell for cell in row):
                    yield start, _tsv_passage(row, columns, header, path, start)
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(path, start, None, f"malformed TSV: {exc}") from None


def _tsv_passage(row: list[str], columns: dict[str, int], header: list[str], path: Path, line: int) -> Passage:
    if len(row) > len(header):
        raise DataError(path, line, None, f"expected {len(header)} TAB-separated columns, found {len(row)}")
    for name in TSV_COLUMNS:
        if columns[name] >= len(row):
            raise DataError(path, line, name, f"missing: the row has {len(row)} of {len(header)} columns")
    try:
        passage_id = check_passage_id(row[columns["id"]])
    except ValueError as exc:
        raise DataError(path, line, "id", str(exc)) from None
    return Passage(text=row[columns["text"]], title=row[columns["title"]], id=passage_id)


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_binary(path) as handle:
        yield from json_objects(handle, path)


def _field(record: dict[str, Any], name: str, path: Path, line: int) -> Any:
    if name not in record:
        raise DataError(path, line, name, "missing")
    return record[name]


def _string(record: dict[str, Any], name: str, path: Path, line: int) -> str:
    value = _field(record, name, path, line)
    if not isinstance(value, str):
        raise DataError(path, line, name, f"expected a string, got {_show(value)}")
    return value


def _record_id(record: dict[str, Any], path: Path, line: int) -> str:
    try:
        return check_passage_id(_field(record, "id", path, line))
    except ValueError as exc:
        raise DataError(path, line, "id", str(exc)) from None


def _read_jsonl(path: Path) -> Iterator[tuple[int, Passage]]:
    for line, record in _json_records(path):
        passage_id = _record_id(record, path, line)
        title, text = _string(record, "title", path, line), _string(record, "text", path, line)
        yield line, Passage(text=text, title=title, id=passage_id)


def _read_flashrag(path: Path) -> Iterator[tuple[int, Passage]]:
    for line, record in _json_records(path):
        passage_id = _record_id(record, path, line)
        title, text = split_contents(_string(record, "contents", path, line))
        yield line, Passage(text=text, title=title, id=passage_id)


def split_contents(contents: str) -> tuple[str, str]:
    """FlashRAG ``contents``: ``'"Title"\\ntext'`` -> ``("Title", "text")``; no newline: no title."""
    first, newline, rest = contents.partition("\n")
    if not newline:
        return "", contents
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest


def _show(value: Any) -> str:
    text = (
        json.dumps(value, ensure_ascii=False)
        if isinstance(value, (str, int, float, bool, type(None), list, dict))
        else repr(value)
    )
    kind = type(value).__name__ if value is not None else "null"
    return f"{kind} {text[:60]}{'...' if len(text) > 60 else ''}"


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def passage_text(passage: Passage) -> str:
    """What the retrievers index: the title, a line break, the text (the text alone without a title)."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


# ---- the store ----


class PassageStore:
    """The checked passages of a corpus: ``store[i]`` is the i-th passage, read from disk on demand."""

    DATA = "passages.jsonl"
    OFFSETS = "offsets.npy"

    def __init__(self, corpus: Corpus, index: Index):
        self.corpus = corpus
        self.index = index
        self.offsets = np.load(index.path / self.OFFSETS, mmap_mode="r")
        self._fd = os.open(index.path / self.DATA, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Passage:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        passage_id, title, text = json.loads(os.pread(self._fd, end - start, start))
        return Passage(text=text, title=title, id=passage_id)

    def passage(self, i: int, score: float | None = None) -> Passage:
        stored = self[i]
        return Passage(text=stored.text, title=stored.title, id=stored.id, score=score)

    def __iter__(self) -> Iterator[Passage]:
        with open(self.index.path / self.DATA, "rb") as handle:
            for raw in handle:
                passage_id, title, text = json.loads(raw)
                yield Passage(text=text, title=title, id=passage_id)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            self._fd = None


def passage_store(corpus: Corpus) -> PassageStore:
    """The corpus's store, built (reading and checking the whole corpus) on first use."""

    def build(folder: Path) -> dict[str, Any]:
        offsets = [0]
        with open(folder / PassageStore.DATA, "wb") as out:
            for _, passage in read_corpus(corpus):
                line = json.dumps([passage.id, passage.title, passage.text], ensure_ascii=False, separators=(",", ":"))
                offsets.append(offsets[-1] + out.write(line.encode("utf-8") + b"\n"))
        if len(offsets) == 1:
            raise DataError(corpus.path, None, None, "the corpus has no passages")
        np.save(folder / PassageStore.OFFSETS, np.asarray(offsets, dtype=np.int64))
        return {"passages": len(offsets) - 1}

    index = ensure_index(
        "passages", corpus.path, corpus.sha256, {"format": corpus.format, "version": STORE_VERSION}, build
    )
    store = PassageStore(corpus, index)
    if index.status == "built":
        log(f"passage store built: {index.path} ({len(store)} passages in {index.seconds:.1f} s)")
    return store
