"""JSON-lines input files: one JSON object per line, errors that name the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from iagbench.contract.errors import DataError


def json_objects(lines: Iterable[bytes | str], path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``lines`` (read from ``path``; a UTF-8 BOM is allowed)."""
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if number == 1:
            text = text.removeprefix("\ufeff")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(path, number, None, f"not valid JSON: {error.msg} (column {error.colno})") from None
        if not isinstance(record, dict):
            shown = json.dumps(record)
            raise DataError(
                path, number, None, f"expected a JSON object, got {shown[:40] + '...' if len(shown) > 40 else shown}"
            )
        yield number, record
