"""`iagbench list`: the registered components of each kind (never imports torch)."""

from __future__ import annotations

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.contract.registry import KINDS

NAME = "list"
HELP = "list registered components and plugins' commands (never imports torch)"
COMMANDS = "commands"


def configure(options: CommandOptions) -> None:
    options.add("kind", nargs="?", choices=(*KINDS, COMMANDS), help="one kind only")


def run(invocation: Invocation) -> int:
    kind = getattr(invocation.args, "kind", None)
    plugins = invocation.plugins
    for name in [kind] if kind else KINDS:
        if name == COMMANDS:
            continue
        print(f"{name}:")
        for entry in plugins[name]:
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<16} {entry.description}{aliases}  [{entry.plugin}]")
    if kind in (None, COMMANDS):
        print(f"{COMMANDS}:")
        for entry in sorted(plugins.commands.values(), key=lambda entry: entry.name):
            print(f"  {entry.name:<16} {entry.description}  [{entry.plugin}]")
    return 0
