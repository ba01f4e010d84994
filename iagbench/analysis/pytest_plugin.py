"""pytest plugin (entry point ``pytest11``): benchmark runs as tests, checked against stored baselines.
Loads in every pytest session where iagbench is installed: only the standard library and pytest at load time.

Design notes: docs/internals.md#iagbenchanalysispytest_pluginpy"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

DATA_ENV = "IAGBENCH_DATA"
RUNS_ENV = "IAGBENCH_RUNS"
DEFAULT_BASELINES = "benchmarks/baselines"
DEFAULT_RUNS = "runs"

_UPDATED = pytest.StashKey[list]()
_REUSED = pytest.StashKey[list]()
_IMPROVED = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iagbench", "iagbench benchmarks")
    group.addoption(
        "--iagbench-update-baselines",
        action="store_true",
        help="record the benchmarks' current scores as their baselines instead of checking against them",
    )
    group.addoption(
        "--iagbench-runs-dir",
        metavar="DIR",
        help=f"run folders go here (default: ${RUNS_ENV}, ini iagbench_runs_dir, else runs)",
    )
    group.addoption(
        "--iagbench-data-dir",
        metavar="DIR",
        help=f"data folder for the datasets (default: ${DATA_ENV}, ini iagbench_data_dir)",
    )
    parser.addini("iagbench_baselines_dir", f"folder of baseline JSON files (default: {DEFAULT_BASELINES})", default="")
    parser.addini("iagbench_runs_dir", f"folder of benchmark run folders (default: {DEFAULT_RUNS})", default="")
    parser.addini("iagbench_data_dir", "data folder for the datasets", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "iagbench: a benchmark run checked against a stored baseline (deselect: -m 'not iagbench')"
    )
    config.stash[_UPDATED] = []
    config.stash[_REUSED] = []
    config.stash[_IMPROVED] = []


def _base(config: pytest.Config) -> Path:
    return config.inipath.parent if config.inipath else config.rootpath


def _setting(
    config: pytest.Config, option: str, env: str | None, ini: str, default: str | None
) -> tuple[Path, str] | None:
    """(resolved path, text as given): the command-line option, else the environment, else the ini key, else default."""
    given = config.getoption(option)
    if given:
        return Path(given).expanduser().resolve(), given
    if env and os.environ.get(env):
        return Path(os.environ[env]).expanduser().resolve(), os.environ[env]
    text = config.getini(ini) or default
    if not text:
        return None
    return (_base(config) / Path(text).expanduser()).resolve(), text


def baselines_dir(config: pytest.Config) -> Path:
    text = config.getini("iagbench_baselines_dir") or DEFAULT_BASELINES
    return (_base(config) / text).resolve()


class RunResults(dict):
    """A run's results.json, plus ``folder``, ``config``, ``command``, ``reused`` and per-example ``records``/``scores``."""

    def __init__(self, results: dict[str, Any], folder: Path, config: dict[str, Any], command: str, reused: bool):
        super().__init__(results)
        self.folder, self.config, self.command, self.reused = folder, config, command, reused
        self._records: list[dict[str, Any]] | None = None

    @property
    def records(self) -> list[dict[str, Any]]:
        """The run's predictions.jsonl records (id, question, answers, prediction, context, scores)."""
        if self._records is None:
            from iagbench.runs.folder import RunFolder

            self._records = RunFolder(self.folder).records()
        return self._records

    @property
    def scores(self) -> dict[str, dict[str, float]]:
        """Per-example scores keyed by example id."""
        return {record["id"]: record["scores"] for record in self.records}


def _option_text(options: dict[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        text = value if isinstance(value, str) else json.dumps(value)
        if isinstance(value, str) and ("," in value or value != value.strip() or _looks_json(value)):
            text = json.dumps(value)
        parts.append(f"{key}={text}")
    return ",".join(parts)


def _looks_json(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return not isinstance(value, (list, dict))


def command_line(spec: Any, data_dir: str | None) -> str:
    """The `iagbench run` command that makes the same run."""
    words = [
        "iagbench",
        "run",
        "--dataset",
        spec.dataset,
        "--split",
        spec.split,
        "--imaginer",
        spec.imaginer,
        "--reader",
        spec.reader,
    ]
    if spec.limit is not None:
        words += ["--limit", str(spec.limit)]
    for flag, options in (
        ("--dataset-args", spec.dataset_args),
        ("--imaginer-args", spec.imaginer_args),
        ("--reader-args", spec.reader_args),
    ):
        options = {k: v for k, v in options.items() if not (flag == "--dataset-args" and k == "data_dir")}
        if options:
            words += [flag, _option_text(options)]
    if spec.metrics:
        words += ["--metrics", ",".join(spec.metrics)]
    if spec.batch_size != 16:
        words += ["--batch-size", str(spec.batch_size)]
    if spec.seed != 0:
        words += ["--seed", str(spec.seed)]
    if data_dir:
        words += ["--data-dir", data_dir]
    return " ".join(_quote(word) for word in words)


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(word)


def _takes_data_dir(entry: Any) -> bool:
    import inspect

    try:
        parameters = inspect.signature(entry.load()).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "data_dir" or p.kind is p.VAR_KEYWORD for p in parameters)


@pytest.fixture(scope="session")
def iagbench_runs_dir(pytestconfig: pytest.Config) -> Path:
    """Where benchmark run folders go (--iagbench-runs-dir, $IAGBENCH_RUNS, ini iagbench_runs_dir, else runs)."""
    return _setting(pytestconfig, "iagbench_runs_dir", RUNS_ENV, "iagbench_runs_dir", DEFAULT_RUNS)[0]


@pytest.fixture(scope="session")
def iagbench_data_dir(pytestconfig: pytest.Config) -> Path:
    """The configured data folder (--iagbench-data-dir, $IAGBENCH_DATA, ini iagbench_data_dir); skips when absent."""
    data = _setting(pytestconfig, "iagbench_data_dir", DATA_ENV, "iagbench_data_dir", None)
    if data is None or not data[0].is_dir():
        pytest.skip(f"no data folder (--iagbench-data-dir, ${DATA_ENV} or ini iagbench_data_dir): {data and data[0]}")
    return data[0]


@pytest.fixture(scope="session")
def iagbench_run(pytestconfig: pytest.Config) -> Callable[..., RunResults]:
    """``iagbench_run(dataset=, split=, imaginer=, reader=, limit=, dataset_args=, imaginer_args=, reader_args=,
    metrics=, batch_size=, seed=)``: run (or read back) that configuration; return its ``RunResults``."""
    runs = _setting(pytestconfig, "iagbench_runs_dir", RUNS_ENV, "iagbench_runs_dir", DEFAULT_RUNS)
    data = _setting(pytestconfig, "iagbench_data_dir", DATA_ENV, "iagbench_data_dir", None)
    done: dict[str, RunResults] = {}

    def run_configuration(
        *,
        dataset: str = "sample",
        split: str = "test",
        imaginer: str = "none",
        reader: str,
        limit: int | None = None,
        dataset_args: dict[str, Any] | None = None,
        imaginer_args: dict[str, Any] | None = None,
        reader_args: dict[str, Any] | None = None,
        metrics: Sequence[str] | None = None,
        batch_size: int = 16,
        seed: int = 0,
    ) -> RunResults:
        key = json.dumps(
            [
                dataset,
                split,
                imaginer,
                reader,
                limit,
                dataset_args,
                imaginer_args,
                reader_args,
                metrics,
                batch_size,
                seed,
            ],
            sort_keys=True,
            default=str,
        )
        if key not in done:
            spec = _run_spec(
                runs[0], dataset=dataset, split=split, imaginer=imaginer, reader=reader, limit=limit,
                dataset_args=dataset_args, imaginer_args=imaginer_args, reader_args=reader_args, metrics=metrics,
                batch_size=batch_size, seed=seed,
            )  # fmt: skip
            done[key] = _run_results(pytestconfig, spec, data)
        return done[key]

    return run_configuration


def _run_spec(
    runs_dir: Path,
    *,
    dataset: str,
    split: str,
    imaginer: str,
    reader: str,
    limit: int | None,
    dataset_args: dict[str, Any] | None,
    imaginer_args: dict[str, Any] | None,
    reader_args: dict[str, Any] | None,
    metrics: Sequence[str] | None,
    batch_size: int,
    seed: int,
) -> Any:
    """The ``RunSpec`` of one ``iagbench_run`` call, its run folder under ``runs_dir``."""
    from iagbench.runs.runner import RunSpec

    return RunSpec(
        dataset=dataset,
        split=split,
        imaginer=imaginer,
        reader=reader,
        dataset_args=dict(dataset_args or {}),
        imaginer_args=dict(imaginer_args or {}),
        reader_args=dict(reader_args or {}),
        metrics=list(metrics) if metrics else None,
        limit=limit,
        batch_size=batch_size,
        seed=seed,
        runs_dir=runs_dir,
    )


def _run_results(pytestconfig: pytest.Config, spec: Any, data: tuple[Path, str] | None) -> RunResults:
    """Run ``spec`` (or read back its finished folder); an iagbench error fails the test in one line."""
    from iagbench.contract.errors import IagbenchError
    from iagbench.contract.plugins import default_plugins
    from iagbench.runs.runner import run

    log: list[str] = []
    try:
        plugins = default_plugins()
        data_text = _give_data_dir(spec, plugins, data)
        folder, results = run(spec, plugins, progress=False, log=log.append)
        config = folder.config()
    except IagbenchError as error:
        failure = f"iagbench: {error}"
    else:
        failure = None
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    reused = any(line.startswith("run already finished") for line in log)
    if reused:
        pytestconfig.stash[_REUSED].append(str(folder.path))
    return RunResults(results, folder.path, config, command_line(spec, data_text), reused)


def _give_data_dir(spec: Any, plugins: Any, data: tuple[Path, str] | None) -> str | None:
    """Point the dataset at the configured data folder when it takes one and was given none; the folder as written."""
    if data and "data_dir" not in spec.dataset_args and _takes_data_dir(plugins["datasets"].get(spec.dataset)):
        if not data[0].is_dir():
            pytest.skip(
                f"the data folder {data[0]} is absent (--iagbench-data-dir, ${DATA_ENV} or ini iagbench_data_dir)"
            )
        spec.dataset_args["data_dir"] = str(data[0])
        return data[1]
    return None


@pytest.fixture
def iagbench_baseline(request: pytest.FixtureRequest) -> Callable[..., list[Any]]:
    """``iagbench_baseline(results, name=None, metrics=None)``: check ``results`` against the baseline
    ``<baselines dir>/<name>.json`` (default name: the test's name), or record it under
    ``--iagbench-update-baselines``. Returns the per-metric checks."""
    config = request.config

    def check(results: RunResults, name: str | None = None, *, metrics: Sequence[str] | None = None) -> list[Any]:
        from iagbench.analysis.baselines import (
            BaselineError,
            Regression,
            assert_no_regression,
            check_name,
            make_baseline,
            write_baseline,
        )

        name = name or re.sub(r"[^A-Za-z0-9._+-]+", "_", request.node.name.removeprefix("test_"))
        failure = None
        try:
            path = baselines_dir(config) / f"{check_name(name)}.json"
            if config.getoption("iagbench_update_baselines"):
                baseline = make_baseline(
                    name,
                    results,
                    results.config,
                    results.records,
                    command=results.command,
                    metrics=metrics,
                    benchmark=request.node.nodeid,
                )
                if write_baseline(path, baseline):
                    config.stash[_UPDATED].append(str(path))
                return []
            checks = assert_no_regression(results, results.config, results.records, path, name=name)
        except (BaselineError, Regression) as error:
            failure = str(error)
        if failure is not None:  # outside the except: no "during handling of the above exception" in the report
            pytest.fail(failure, pytrace=False)
        improved = [c for c in checks if c.improved]
        if improved:
            config.stash[_IMPROVED].append(f"{path}: " + "; ".join(c.describe() for c in improved))
        return checks

    return check


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    updated, reused, improved = config.stash[_UPDATED], config.stash[_REUSED], config.stash[_IMPROVED]
    if not (updated or reused or improved):
        return
    terminalreporter.section("iagbench")
    for path in updated:
        terminalreporter.write_line(f"baseline written: {path}")
    for line in improved:
        terminalreporter.write_line(f"above the baseline by more than the tolerance (update to raise the bar): {line}")
    if reused:
        terminalreporter.write_line(
            f"{len(reused)} finished run folder(s) read back, not recomputed (point --iagbench-runs-dir at an empty "
            "folder to recompute): " + ", ".join(reused)
        )
