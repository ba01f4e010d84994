"""A registry entry: one registered component, its factory loaded lazily and built with checked options."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iagbench.contract.conform import DECLARED, check_class, conform
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

    @property
    def label(self) -> str:
        """How errors name this component: ``reader 'echo' of plugin 'file:/tmp/echo.py'``."""
        return f"{self.kind[:-1]} '{self.name}' of plugin '{self.plugin}'"

    def _holder(self, attribute: str) -> Any:
        """The factory, or the partial or class it wraps, that has ``attribute``; None when none has it."""
        factory: Any = self.load()
        while isinstance(factory, functools.partial) and not hasattr(factory, attribute):
            factory = factory.func
        return factory if hasattr(factory, attribute) else None

    def declared(self, attribute: str) -> Any:
        """A class-level declaration of the factory (``provides``/``accepts``), looking through partials."""
        holder = self._holder(attribute)
        if holder is None:
            raise ConfigurationError(
                f"{self.kind[:-1]} '{self.name}' of plugin '{self.plugin}' does not declare '{attribute}'"
            )
        return getattr(holder, attribute)

    def hook(self, attribute: str) -> Callable[..., Any] | None:
        """An optional hook on the factory (``preflight``), looking through partials; a class's must be static."""
        holder = self._holder(attribute)
        if holder is None:
            return None
        if isinstance(holder, type) and not isinstance(
            inspect.getattr_static(holder, attribute), (staticmethod, classmethod)
        ):
            raise ConfigurationError(
                f"{self.label}: {holder.__name__}.{attribute} must be a staticmethod or a classmethod "
                "(it runs before anything is built)"
            )
        return getattr(holder, attribute)

    def options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` checked against the factory's signature, with its defaults (a partial's keywords) filled in."""
        signature = self._signature()
        if signature is None:
            return dict(options)
        self._bind(signature, options)
        defaults = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if parameter.default is not parameter.empty
        }
        return {**defaults, **options}

    def build(self, **options: Any) -> Any:
        """Build the component; options the factory does not take are refused before it is called.

        The product is checked for the one method its kind requires and, if it does not subclass its
        kind's base class, adapted to it (`iagbench.contract.conform`).
        """
        factory = self.load()
        check_class(self.kind, self.label, factory)
        signature = self._signature()
        if signature is not None:
            self._bind(signature, options)
        product = factory(**options)
        attribute = DECLARED.get(self.kind)
        holder = self._holder(attribute) if attribute else None
        return conform(self.kind, self.label, product, getattr(holder, attribute) if holder is not None else None)

    def _signature(self) -> inspect.Signature | None:
        try:
            return inspect.signature(self.load())
        except (TypeError, ValueError):  # some builtins have no signature: nothing to check
            return None

    def _bind(self, signature: inspect.Signature, options: dict[str, Any]) -> None:
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
