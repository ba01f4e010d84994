"""`iagbench plugins`: installed plugins with their distributions, versions, hooks and what they register."""

from __future__ import annotations

import json

from iagbench.commands.arguments import CommandOptions, Invocation

NAME = "plugins"
HELP = "installed plugins, versions and hooks, as JSON"


def configure(options: CommandOptions) -> None:
    """No options."""


def run(invocation: Invocation) -> int:
    print(json.dumps(invocation.plugins.describe(), indent=2))
    return 0
