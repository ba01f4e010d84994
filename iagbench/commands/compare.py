"""`iagbench compare`: B - A per metric with paired bootstrap CIs, McNemar on em, and the flipped examples."""

from __future__ import annotations

from pathlib import Path

from iagbench.commands.arguments import CommandOptions, Invocation, names
from iagbench.contract.errors import ConfigurationError

NAME = "compare"
HELP = "B - A per metric with paired bootstrap CIs, McNemar on em, flipped examples"


def configure(options: CommandOptions) -> None:
    options.add("run_a", type=Path, metavar="RUN_A", help="run folder A")
    options.add("run_b", type=Path, metavar="RUN_B", help="run folder B")
    options.add("--metrics", default="", help="comma-separated score keys (default: all both runs have)")
    options.add("--bootstrap", type=int, default=1000, metavar="B", help="bootstrap resamples (default: 1000)")
    options.add("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    options.add("--level", type=float, default=0.95, help="confidence level (default: 0.95)")
    options.add("--show", type=int, default=10, metavar="N", help="flipped examples shown each way (default: 10)")
    options.add("--format", default="text", choices=("text", "json"))


def run(invocation: Invocation) -> int:
    from iagbench.analysis.compare import compare, render

    given = invocation.given
    if given("bootstrap") < 1:
        raise ConfigurationError(f"--bootstrap {given('bootstrap')}: expected a positive integer")
    if not 0 < given("level") < 1:
        raise ConfigurationError(f"--level {given('level')}: expected a number between 0 and 1")
    args = invocation.args
    report = compare(args.run_a, args.run_b, metrics=names(given("metrics")), samples=given("bootstrap"), seed=given("seed"),
                     level=given("level"))  # fmt: skip
    print(render(report, given("format"), show=given("show")))
    return 0
