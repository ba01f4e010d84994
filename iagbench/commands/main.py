"""The `iagbench` command line: the parser from each command module (and plugins' commands), dispatch by
``set_defaults``, one-line errors."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from iagbench.commands import (
    compare,
    data,
    export,
    index,
    listing,
    lm_eval,
    plugin_info,
    recipes,
    report,
    retrieve,
    run,
    score,
    train,  # fmt: skip
)
from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.commands.logs import configure
from iagbench.contract.errors import ConfigurationError, IagbenchError
from iagbench.contract.plugins import Plugins, default_plugins
from iagbench.version import __version__

BUILTIN: tuple[ModuleType, ...] = (
    run,
    listing,
    plugin_info,
    recipes,
    score,
    report,
    compare,
    index,
    retrieve,
    data,
    export,
    train,
    lm_eval,
)


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    """The parser of every built-in command and of the commands plugins register (``register_commands``)."""
    parser = argparse.ArgumentParser(
        prog="iagbench", description="Benchmark imaginer x reader combinations on open-domain QA."
    )
    parser.add_argument("--version", action="version", version=f"iagbench {__version__}")
    add_verbosity(parser, default=0)
    # the deepspeed launcher puts --local_rank=N before the command; the rank comes from the environment anyway
    parser.add_argument("--local_rank", "--local-rank", dest="launcher_local_rank", type=int, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in BUILTIN:
        _add_command(commands, module.NAME, module, module.HELP)
    for name, command in plugins.commands.items() if plugins else ():
        if name in commands.choices:
            raise ConfigurationError(
                f"plugin '{command.plugin}' registers command '{name}', which iagbench has already"
            )
        _add_command(commands, name, command.load(), command.description)
    return parser


def _add_command(commands: argparse._SubParsersAction, name: str, command: object, help: str) -> None:
    sub = commands.add_parser(name, help=help)
    add_verbosity(sub, default=argparse.SUPPRESS)
    options = CommandOptions(sub, name)
    command.configure(options)  # type: ignore[attr-defined]
    sub.set_defaults(func=command.run, options=options)  # type: ignore[attr-defined]


def add_verbosity(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more messages (debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="warnings and errors only")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line (``argv``, or this process's own); return the exit status."""
    if argv is not None:
        return _main(list(argv))
    try:
        return _main(sys.argv[1:])
    finally:
        # The process exits next. Its last garbage collections would go over every object torch and transformers
        # made (about a second once a model was loaded); frozen, they are left to the operating system.
        gc.freeze()


def _main(argv: list[str]) -> int:
    configure()
    try:
        plugins = default_plugins()
        parser = build_parser(plugins)
    except IagbenchError as error:
        return _error(error)
    args = parser.parse_args(argv)
    configure(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    try:
        return args.func(Invocation(args, args.options, plugins))
    except IagbenchError as error:
        return _error(error)
    except KeyboardInterrupt:
        print("iagbench: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _error(error: Exception) -> int:
    print(f"iagbench: error: {error}", file=sys.stderr)
    logging.getLogger("iagbench").debug("details", exc_info=error)
    return 2


if __name__ == "__main__":
    sys.exit(main())
