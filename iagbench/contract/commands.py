"""Commands that plugins register (``register_commands``): name, owner, description, lazily imported object."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from iagbench.contract.errors import ConfigurationError


@dataclass
class CommandEntry:
    """A plugin's subcommand: an object (or ``"module:attribute"``) with ``configure(options)`` and ``run(invocation)``."""

    name: str
    target: Any
    plugin: str
    description: str = ""
    _loaded: Any = field(default=None, repr=False)

    def load(self) -> Any:
        if self._loaded is None:
            target = self.target
            if isinstance(target, str):
                module_name, _, attribute = target.partition(":")
                target = importlib.import_module(module_name)
                target = getattr(target, attribute) if attribute else target
            for method in ("configure", "run"):
                if not callable(getattr(target, method, None)):
                    raise ConfigurationError(f"command '{self.name}' of plugin '{self.plugin}' has no {method}()")
            self._loaded = target
        return self._loaded


def register_command(commands: dict[str, CommandEntry], plugin: str, name: str, target: Any, *, aliases: Any = (),
                     description: str = "") -> None:  # fmt: skip
    """What a plugin's ``register`` callback does in ``register_commands``."""
    if not isinstance(name, str) or not name or not name.replace("-", "").isalnum():
        raise ConfigurationError(f"plugin '{plugin}' registered a command with an invalid name {name!r}")
    if aliases:
        raise ConfigurationError(f"plugin '{plugin}' registered command '{name}' with aliases: commands have none")
    if name in commands:
        raise ConfigurationError(f"command name '{name}' is registered twice: by plugin '{commands[name].plugin}' and by "
                                 f"plugin '{plugin}'")  # fmt: skip
    commands[name] = CommandEntry(name, target, plugin, description)
