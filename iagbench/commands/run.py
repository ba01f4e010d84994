"""`iagbench run`: an imaginer + reader over a dataset split, resumable (the engine is `iagbench.runs.runner`)."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

from iagbench.commands.arguments import (
    CommandOptions,
    Invocation,
    add_batch_size,
    add_component_options,
    add_data_options,  # fmt: skip
    add_progress,
    names,
    positive,
)
from iagbench.commands.experiment import add_experiment_arguments, is_experiment
from iagbench.commands.experiment import jobs as experiment_jobs
from iagbench.commands.logs import info
from iagbench.commands.recipes import add_recipe_arguments
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.job import JobSpec
from iagbench.runs.batching import AUTO, DEFAULT_BATCH_TOKENS
from iagbench.runs.runner import RunSpec

NAME = "run"
HELP = "run (or resume) an imaginer + reader over a dataset split"
RUNS_ENV = "IAGBENCH_RUNS"
DEFAULTS = {f.name: f.default for f in fields(RunSpec)}


def configure(options: CommandOptions) -> None:
    add_data_options(
        options, fraction=True, limit_help="only the first N examples, or with 0 < X < 1 the first ceil(X * N)"
    )
    add_component_options(options)
    options.add("--metrics", default="", help="comma-separated metric names (default: all registered)")
    add_batch_size(options, DEFAULTS["batch_size"], auto=True, help=(
        "examples per imaginer/reader call (default: by --batch-tokens; with --batch-tokens: the most); auto: with "
        "CUDA the largest that fits (starts at 16, doubles while batches fit, halves and retries on out-of-memory), "
        "without CUDA 16"))  # fmt: skip
    options.add("--batch-tokens", type=int, metavar="N", help=(
        f"a batch holds examples (in length order) while examples x longest prompt in tokens stays within N "
        f"(default: {DEFAULT_BATCH_TOKENS} unless --batch-size is given; readers that cannot count: 16 examples)"))  # fmt: skip
    options.add("--seed", type=int, default=DEFAULTS["seed"], help="random seed (default: 0)")
    options.add("--output", type=Path, help="run folder (default: runs/<components>__<config hash>)")
    options.add(
        "--runs-dir", type=Path, default=Path(os.environ.get(RUNS_ENV, "runs")), help="where default run folders go"
    )
    add_progress(options)
    options.add("--wait-timeout", type=float, default=DEFAULTS["wait_timeout"], metavar="SECONDS",
                help="under torchrun and the like: how long a process waits for the others' files without progress "
                "(default: 1800)")  # fmt: skip
    add_recipe_arguments(options.parser)
    add_experiment_arguments(options.parser)


def run(invocation: Invocation) -> int:
    from iagbench.analysis.report import render
    from iagbench.runs.folder import RunFolder
    from iagbench.runs.processes import Processes
    from iagbench.runs.runner import run as run_job

    several = is_experiment(invocation.args)
    jobs = list(experiment_jobs(invocation.options, invocation.args)) if several else [invocation.job()]
    specs = [spec_of(job) for job in jobs]  # every entry checked before the first runs
    processes = Processes.from_environment()
    folders = []
    for number, (job, spec) in enumerate(zip(jobs, specs), 1):
        if several:
            info(f"run {number} of {len(jobs)}: {spec.dataset} {spec.imaginer}+{spec.reader}")
        folder, _ = run_job(spec, invocation.plugins, progress=job.progress, log=info, non_default=job.non_default,
                            processes=processes)  # fmt: skip
        folders.append(RunFolder(folder.path))
    if processes.main:  # one table from a multi-process run
        print(render(folders))
        print("\n" + "\n".join(f"run folder: {folder.path}" for folder in folders))
    return 0


def spec_of(job: JobSpec) -> RunSpec:
    """The runner's spec of one job, its settings checked."""
    settings = job.settings
    if settings["batch_size"] not in (AUTO, None) and settings["batch_size"] < 1:
        raise ConfigurationError(f"--batch-size {settings['batch_size']}: expected a positive integer or auto")
    if settings["batch_tokens"] is not None and settings["batch_tokens"] < 1:
        raise ConfigurationError(f"--batch-tokens {settings['batch_tokens']}: expected a positive integer")
    if settings["batch_size"] == AUTO and settings["batch_tokens"] is not None:
        raise ConfigurationError("--batch-tokens: not with --batch-size auto (give one of them)")
    if settings["wait_timeout"] <= 0:
        raise ConfigurationError(f"--wait-timeout {settings['wait_timeout']}: expected a positive number of seconds")
    if not isinstance(job.limit, float):  # a fraction was checked when read
        positive(job.limit, "--limit")
    return RunSpec(**job.components(), output=job.output, metrics=names(settings["metrics"]),
                   batch_size=settings["batch_size"], batch_tokens=settings["batch_tokens"], seed=settings["seed"],
                   runs_dir=settings["runs_dir"],
                   wait_timeout=settings["wait_timeout"])  # fmt: skip
