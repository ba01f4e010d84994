"""A registry entry: one registered component, its factory loaded lazily and built with checked options."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iagbench.contract.errors import ConfigurationError


@dataclass
class Entry:
    """One registered component: its names, its factory (maybe still a "module:attr" string), its plugin."""

    kind: str
    name: str
    factory_ref: Callable[..., Any] | str
    plugin: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    parts: tuple[Entry, ...] = ()  # a composite imaginer's parts (see iagbench.contract.compose)
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
