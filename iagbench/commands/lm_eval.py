"""`iagbench lm-eval ARGS...`: lm-evaluation-harness's command line with the `iagbench` model registered (lm-eval
0.4 loads no plugins, so ``lm_eval --model iagbench`` cannot find it; see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
from typing import Any

from iagbench.contract.errors import ConfigurationError

NAME = "lm-eval"
HELP = "lm-eval's command line with the iagbench model: iagbench lm-eval run --model_args reader=NAME --tasks ..."


def configure(options: Any) -> None:
    options.parser.add_argument(
        "lm_eval_args", nargs=argparse.REMAINDER, metavar="run|ls|validate ...",
        help="lm-eval's arguments, its subcommand first (run: --model iagbench is added when no --model is given)",
    )  # fmt: skip


def lm_eval_argv(args: list[str]) -> list[str]:
    """``args`` with ``--model iagbench`` added to a ``run`` that names no model."""
    argv = list(args)
    if argv[:1] == ["run"] and not any(a == "--model" or a.startswith("--model=") for a in argv):
        argv[1:1] = ["--model", "iagbench"]
    return argv


def run(invocation: Any) -> int:
    argv = lm_eval_argv(invocation.args.lm_eval_args)
    if not argv:
        raise ConfigurationError(
            "iagbench lm-eval: give lm-eval's arguments, e.g. run --model_args reader=NAME --tasks T"
        )
    try:
        from iagbench.analysis.lm_eval_model import main as lm_eval_main
    except ImportError as error:
        raise ConfigurationError(
            f"iagbench lm-eval: lm-eval is not installed ({error}): pip install -e '.[lm-eval]'"
        ) from None
    try:
        lm_eval_main(argv)
    except SystemExit as done:  # lm-eval's argparse and its own exits
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0
