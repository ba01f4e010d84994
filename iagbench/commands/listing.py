"""`iagbench list`: the registered components of each kind (never imports torch)."""

from __future__ import annotations

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.contract.registry import KINDS

NAME = "list"
HELP = "list registered components (never imports torch)"


def configure(options: CommandOptions) -> None:
    options.add("kind", nargs="?", choices=KINDS, help="one kind only")


def run(invocation: Invocation) -> int:
    kind = getattr(invocation.args, "kind", None)
    for name in [kind] if kind else KINDS:
        print(f"{name}:")
        for entry in invocation.plugins[name]:
            aliases = f" (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
            print(f"  {entry.name:<16} {entry.description}{aliases}  [{entry.plugin}]")
    return 0
