"""A typed registry of component factories, with lazy entries and "did you mean" errors."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

from iagbench.contract.entry import Entry
from iagbench.contract.errors import ConfigurationError, UnknownNameError

KINDS = ("datasets", "imaginers", "readers", "metrics")


class Registry:
    """Components of one kind, found by name or alias."""

    def __init__(self, kind: str):
        if kind not in KINDS:
            raise ValueError(f"unknown component kind {kind!r}; expected one of {KINDS}")
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._names: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        plugin: str,
        aliases: tuple[str, ...] | list[str] = (),
        description: str = "",
    ) -> None:
        entry = Entry(self.kind, name, factory, plugin, tuple(aliases), description)
        for key in (name, *entry.aliases):
            if key in self._names:
                other = self._names[key]
                raise ConfigurationError(
                    f"{self.kind[:-1]} name '{key}' is registered twice: by plugin '{other.plugin}' "
                    f"and by plugin '{plugin}'"
                )
        self._entries[name] = entry
        for key in (name, *entry.aliases):
            self._names[key] = entry

    def get(self, name: str) -> Entry:
        """The entry of ``name`` or an alias; for imaginers, ``a+b[+c]`` is a composite (`iagbench.contract.compose`)."""
        if self.kind == "imaginers" and "+" in name and name not in self._names:
            from iagbench.contract.compose import composite_entry

            return composite_entry(self, name)
        try:
            return self._names[name]
        except KeyError:
            known = sorted(self._names)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind[:-1]} '{name}'.{hint} Known {self.kind}: {', '.join(known) or '(none)'}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)
