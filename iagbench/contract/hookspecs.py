"""Hook specifications: what a plugin may implement. Each hook receives a ``register`` callback.

``register(name, factory, *, aliases=(), description="")`` adds a component; ``factory`` is a
callable building it from keyword options, or a lazy ``"module:attribute"`` reference that is
imported only when the component is used (so listing plugins never imports torch).
"""

from __future__ import annotations

from typing import Protocol

import pluggy

hookspec = pluggy.HookspecMarker("iagbench")
hookimpl = pluggy.HookimplMarker("iagbench")


class Register(Protocol):
    def __call__(self, name: str, factory: object, *, aliases: tuple[str, ...] = (), description: str = "") -> None: ...


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset factories: register(name, factory, aliases=..., description=...)."""


@hookspec
def register_imaginers(register: Register) -> None:
    """Register imaginer factories (each declares ``provides``)."""


@hookspec
def register_readers(register: Register) -> None:
    """Register reader factories (each declares ``accepts``)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register metric factories (each builds an ``iagbench.Metric``)."""


@hookspec
def register_commands(register: Register) -> None:
    """Register subcommands: register(name, command, description=...). ``command`` (or a lazy
    ``"module:attribute"``) has ``configure(options)``, adding its options to an
    `iagbench.commands.arguments.CommandOptions`, and ``run(invocation) -> int``."""
