"""Component options from the command line: ``k=v,k=v`` with values parsed as JSON scalars."""

from __future__ import annotations

import json
import re
from typing import Any

from iagbench.contract.errors import ConfigurationError


def parse_value(text: str) -> Any:
    """A JSON scalar (number, true/false/null, quoted string) where ``text`` parses as one, else the text."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def parse_options(text: str | None, *, flag: str = "--args") -> dict[str, Any]:
    """Parse ``"k=v,k2=v2"``; a value may hold commas inside double quotes (``path="a,b"``); a key may
    carry a part prefix (``hyperlora.rank=8``, for composite imaginers)."""
    options: dict[str, Any] = {}
    if not text:
        return options
    for item in _split_commas(text, flag):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not valid_key(key):
            raise ConfigurationError(f"{flag}: '{item}' is not of the form key=value (in '{text}')")
        if key in options:
            raise ConfigurationError(f"{flag}: option '{key}' given twice (in '{text}')")
        options[key] = parse_value(value.strip())
    return options


PREFIX = re.compile(r"^[A-Za-z0-9][\w-]*$")


def valid_key(key: str) -> bool:
    """An option name, or ``part.name`` (a composite imaginer's option for one part: ``bm25.k``)."""
    prefix, dot, name = key.partition(".")
    return name.isidentifier() and bool(PREFIX.match(prefix)) if dot else key.isidentifier()


def _split_commas(text: str, flag: str) -> list[str]:
    items, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ConfigurationError(f"{flag}: unbalanced double quote in '{text}'")
    items.append("".join(current))
    return items
