"""Questions from the Hugging Face hub through ``datasets.load_dataset`` (imported only here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from iagbench.contract.errors import ConfigurationError, DataError
from iagbench.contract.types import Example

from .formats import IdMaker, RecordError

RowParser = Callable[[Mapping[str, Any]], tuple[str, tuple[str, ...]]]
"""Turns one hub row into ``(question, answers)``, raising ``RecordError`` on a bad field."""


def load_split(hub_id: str, hub_config: str | None, hub_split: str, cache_dir: str | None = None) -> Any:
    """``datasets.load_dataset(hub_id, hub_config, split=hub_split)``; a hub id may be a local folder."""
    try:
        import datasets
    except ImportError as exc:
        raise ConfigurationError("source=hub needs the 'datasets' package: pip install datasets") from exc
    try:
        return datasets.load_dataset(hub_id, hub_config, split=hub_split, cache_dir=cache_dir)
    except (OSError, ValueError, ConnectionError) as exc:
        raise ConfigurationError(
            f"cannot load hub dataset '{hub_id}' (config {hub_config!r}, split {hub_split!r}): {exc}"
        ) from exc


def hub_examples(rows: Any, parse: RowParser, ids: IdMaker, where: str) -> Iterator[Example]:
    """Examples from hub rows; a bad row raises ``DataError`` naming ``where``, the row index and field."""
    for index, row in enumerate(rows):
        try:
            question, answers = parse(row)
        except RecordError as exc:
            raise DataError(f"{where}, row {index}", None, exc.field, exc.message) from None
        yield Example(id=ids(question, None), question=question, answers=answers)


def field(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]``, or a ``RecordError`` naming the missing field."""
    if name not in row:
        raise RecordError(name, "missing from the hub row")
    return row[name]
