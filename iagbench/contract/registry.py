"""A typed registry of component factories, with lazy entries and "did you mean" errors."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from iagbench.contract.errors import ConfigurationError, UnknownNameError

KINDS = ("datasets", "imaginers", "readers", "metrics")


@dataclass
class Entry:
    """One registered component: its names, its factory (maybe still a "module:attr" string), its plugin."""

    kind: str
    name: str
    factory_ref: Callable[..., Any] | str
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    parts: tuple["Entry", ...] = ()  # a composite imaginer's parts (see iagbench.contract.compose)
    _factory: Callable[..., Any] | None = field(default=None, repr=False)

    @property
    def plugins(self) -> tuple[str, ...]:
        """The plugins whose code this entry runs: its own, or its parts' for a composite."""
        return tuple(dict.fromkeys(part.plugin for part in self.parts)) if self.parts else (self.plugin,)

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing it on first use."""
        if self._factory is None:
            if isinstance(self.factory_ref, str):
                module_name, _, attribute = self.factory_ref.partition(":")
                if not attribute:
                    raise ConfigurationError(
                        f"{self.kind[:-1]} '{self.name}' of plugin '{self.plugin}': lazy factory "
                        f"'{self.factory_ref}' must read 'module:attribute'"
                    )
                self._factory = getattr(importlib.import_module(module_name), attribute)
            else:
                self._factory = self.factory_ref
        return self._factory

    def declared(self, attribute: str) -> Any:
        """A class-level declaration of the factory (``provides``/``accepts``), looking through partials."""
        factory: Any = self.load()
        while isinstance(factory, functools.partial):
            if hasattr(factory, attribute):
                break
            factory = factory.func
        if not hasattr(factory, attribute):
            raise ConfigurationError(
                f"{self.kind[:-1]} '{self.name}' of plugin '{self.plugin}' does not declare '{attribute}'"
            )
        return getattr(factory, attribute)

    def build(self, **options: Any) -> Any:
        """Build the component; options the factory does not take are refused before it is called."""
        factory = self.load()
        try:
            signature = inspect.signature(factory)
        except (TypeError, ValueError):  # some builtins have no signature: nothing to check
            signature = None
        if signature is not None:
            try:
                signature.bind(**options)
            except TypeError as error:
                accepted = [
                    name
                    for name, parameter in signature.parameters.items()
                    if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)
                ]
                raise ConfigurationError(
                    f"{self.kind[:-1]} '{self.name}': {error}; its options: {', '.join(accepted) or '(none)'}"
                ) from None
        return factory(**options)


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
