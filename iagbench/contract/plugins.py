"""The plugin manager: pluggy, the ``iagbench`` entry-point group, and one registry per kind.

Built-in plugins are entry points of this distribution, loaded exactly like third-party ones.
A plugin file can also be named in ``IAGBENCH_PLUGINS`` (paths joined by ``os.pathsep``) to try
an idea without packaging it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from iagbench.contract import hookspecs
from iagbench.contract.commands import CommandEntry, register_command
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.registry import KINDS, Registry

GROUP = "iagbench"
PLUGINS_ENV = "IAGBENCH_PLUGINS"


@dataclass
class Plugins:
    """Loaded plugins and the components they registered."""

    manager: pluggy.PluginManager
    registries: dict[str, Registry] = field(default_factory=dict)
    # (distribution, version) of plugins registered from entry points without pluggy's loader
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    commands: dict[str, CommandEntry] = field(default_factory=dict)  # subcommands from register_commands

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with its distribution, version, hooks and registered names (for `iagbench plugins`)."""
        dists = {id(plugin): dist for plugin, dist in self.manager.list_plugin_distinfo()}
        described = []
        for name, plugin in sorted(self.manager.list_name_plugin(), key=lambda item: item[0]):
            dist = dists.get(id(plugin))
            project, version = (dist.project_name, dist.version) if dist else self.distributions.get(name, (None, None))
            hooks = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or ())
            components = {
                kind: sorted(entry.name for entry in self.registries[kind] if entry.plugin == name) for kind in KINDS
            }
            commands = sorted(entry.name for entry in self.commands.values() if entry.plugin == name)
            if commands:
                components["commands"] = commands
            described.append(
                {
                    "name": name,
                    "distribution": project,
                    "version": version,
                    "module": getattr(plugin, "__name__", repr(plugin)),
                    "hooks": hooks,
                    "components": {kind: names for kind, names in components.items() if names},
                }
            )
        return described


def new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    return manager


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    """This distribution's own entry points in the ``iagbench`` group (the built-in plugins)."""
    dist = importlib.metadata.distribution("iagbench")
    return [ep for ep in dist.entry_points if ep.group == GROUP]


def load_plugin_file(path: str | Path) -> ModuleType:
    """Import a plugin module from a file path."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(f"{PLUGINS_ENV}: plugin file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"iagbench_local_plugin_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_plugins(
    *,
    entry_points: bool = True,
    builtins_only: bool = False,
    extra: tuple[object, ...] = (),
    plugin_files: tuple[str, ...] | None = None,
) -> Plugins:
    """Load plugins and collect what they register.

    ``entry_points`` loads every distribution's ``iagbench`` entry points; ``builtins_only`` loads
    only this distribution's (for tests isolated from the user's environment); ``extra`` adds
    plugin objects (modules or instances with hookimpls) directly.
    """
    manager = new_manager()
    distributions: dict[str, tuple[str, str]] = {}
    files = (
        plugin_files
        if plugin_files is not None
        else tuple(filter(None, os.environ.get(PLUGINS_ENV, "").split(os.pathsep)))
    )
    try:
        if builtins_only:
            for ep in builtin_entry_points():
                manager.register(ep.load(), name=ep.name)
                distributions[ep.name] = (ep.dist.name, ep.dist.version)
        elif entry_points:
            manager.load_setuptools_entrypoints(GROUP)
        for path in files:
            manager.register(load_plugin_file(path), name=f"file:{path}")
        for plugin in extra:
            manager.register(plugin)
        manager.check_pending()
    except pluggy.PluginValidationError as error:  # a misspelt hook or argument: one line, not a traceback
        hooks = ", ".join(f"register_{kind}" for kind in (*KINDS, "commands"))
        raise ConfigurationError(f"{' '.join(str(error).split())} (hooks: {hooks})") from None
    return collect(manager, distributions)


def collect(manager: pluggy.PluginManager, distributions: dict[str, tuple[str, str]] | None = None) -> Plugins:
    """Call every plugin's register hooks, attributing each registration to its plugin."""
    plugins = Plugins(manager, {kind: Registry(kind) for kind in KINDS}, dict(distributions or {}))
    for kind in KINDS:
        caller = getattr(manager.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():
            registry = plugins.registries[kind]
            register = functools.partial(_register, registry, impl.plugin_name)
            impl.function(register=register)
    for impl in manager.hook.register_commands.get_hookimpls():
        impl.function(register=functools.partial(register_command, plugins.commands, impl.plugin_name))
    return plugins


def _register(
    registry: Registry, plugin: str, name: str, factory: object, *, aliases=(), description: str = ""
) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"plugin '{plugin}' registered a {registry.kind[:-1]} without a name")
    if not (callable(factory) or isinstance(factory, str)):
        raise ConfigurationError(
            f"plugin '{plugin}' registered {registry.kind[:-1]} '{name}' with a factory that is neither callable "
            "nor a 'module:attribute' string"
        )
    aliases = (aliases,) if isinstance(aliases, str) else tuple(aliases)
    registry.register(name, factory, plugin=plugin, aliases=aliases, description=description)


@functools.cache
def default_plugins() -> Plugins:
    """The plugins of this environment, loaded once per process."""
    return load_plugins()
