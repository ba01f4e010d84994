"""The pytest plugin, as another project uses it: a benchmark with a baseline, run with plain `pytest`."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from iagbench.analysis.baselines import MetricCheck
from iagbench.analysis.stats import Interval

BENCHMARK = textwrap.dedent(
    """
    def test_echo_sample(iagbench_run, iagbench_baseline):
        results = iagbench_run(dataset="sample", split="test", reader="echo", reader_args={"mode": "mixed"}, limit=40)
        assert results["n"] == 40 and len(results.scores) == 40
        assert results.command.startswith("iagbench run --dataset sample")
        iagbench_baseline(results, "echo-sample-40")
    """
)
NEEDS_DATA = textwrap.dedent(
    """
    from pathlib import Path


    def test_needs_data(iagbench_run):
        iagbench_run(dataset="nq", split="test", reader="echo", limit=5)


    def test_needs_the_data_folder(iagbench_data_dir):
        pass


    def test_runs_dir(iagbench_runs_dir):
        assert iagbench_runs_dir == Path.cwd() / "elsewhere"
    """
)


def pytest_in(project: Path, *args: str, plugin: Path) -> subprocess.CompletedProcess:
    """Plain `pytest` in another project (the plugin comes from iagbench's `pytest11` entry point)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTEST_") and k not in ("IAGBENCH_DATA", "IAGBENCH_RUNS")
    }
    env["IAGBENCH_PLUGINS"] = str(plugin)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def project(tmp_path) -> Path:
    """A project outside the package declaring one benchmark, with an empty pytest.ini."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "test_bench.py").write_text(BENCHMARK, encoding="utf-8")
    return tmp_path


def test_the_plugin_is_a_pytest11_entry_point_and_imports_nothing_heavy():
    points = [ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "iagbench"]
    assert [ep.value for ep in points] == ["iagbench.analysis.pytest_plugin"]
    code = "import sys, iagbench.analysis.pytest_plugin; print(sorted(m for m in ('torch', 'numpy', 'transformers', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_benchmark_with_a_baseline_passes_and_a_worsened_baseline_fails_readably(project, echo_plugin_file):
    baseline = project / "benchmarks" / "baselines" / "echo-sample-40.json"

    missing = pytest_in(project, plugin=echo_plugin_file)
    assert missing.returncode == 1
    assert f"no baseline {baseline}: record one with `pytest --iagbench-update-baselines`" in missing.stdout

    update = pytest_in(project, "--iagbench-update-baselines", plugin=echo_plugin_file)
    assert update.returncode == 0, update.stdout + update.stderr
    assert f"baseline written: {baseline}" in update.stdout
    recorded = json.loads(baseline.read_text())
    results = json.loads(next((project / "runs").glob("sample-test__none__echo__*/results.json")).read_text())
    assert recorded["metrics"] == results["metrics"] and recorded["n"] == 40
    assert recorded["config_hash"] == results["config_hash"]
    assert recorded["metric_versions"] == results["metric_versions"]
    assert recorded["command"] == (
        "iagbench run --dataset sample --split test --imaginer none --reader echo --limit 40 --reader-args mode=mixed"
    )
    assert recorded["benchmark"] == "benchmarks/test_bench.py::test_echo_sample" and recorded["date"]
    assert "question" not in baseline.read_text() and "gold" not in baseline.read_text()  # numbers only, no data text
    low, high = recorded["intervals"]["em"]
    assert low < recorded["metrics"]["em"] < high

    passing = pytest_in(project, plugin=echo_plugin_file)
    assert passing.returncode == 0, passing.stdout
    assert "1 passed" in passing.stdout and "read back, not recomputed" in passing.stdout

    em = recorded["metrics"]["em"]
    recorded["metrics"]["em"] = em + 30  # a baseline the current run falls short of by 30 points
    baseline.write_text(json.dumps(recorded))
    failing = pytest_in(project, plugin=echo_plugin_file)
    assert failing.returncode == 1
    out = failing.stdout
    assert "benchmark 'echo-sample-40' regressed against" in out
    line = next(line for line in out.splitlines() if line.strip().startswith("em:"))
    assert f"em: {em:.2f} now vs {em + 30:.2f} baseline (-30.00)" in line
    assert "half-width of the current 95% bootstrap CI [" in line and line.endswith("REGRESSED")
    assert "f1: " in out and "ok" in out
    assert "(baseline - current) exceeds the half-width of the percentile bootstrap CI of the current mean" in out
    assert "pytest --iagbench-update-baselines" in out
    assert "Traceback" not in out and "During handling" not in out

    recorded["metrics"]["em"] = em + 1  # within the tolerance: noise, not a regression
    baseline.write_text(json.dumps(recorded))
    assert pytest_in(project, plugin=echo_plugin_file).returncode == 0

    recorded["metric_versions"]["em"] = "0"
    baseline.write_text(json.dumps(recorded))
    versions = pytest_in(project, plugin=echo_plugin_file)
    assert versions.returncode == 1
    assert "metric 'em' is version 1 now but version 0 in the baseline: not comparable" in versions.stdout


def test_ini_settings_and_a_missing_data_folder(project, echo_plugin_file, tmp_path):
    (project / "pytest.ini").write_text(
        "[pytest]\niagbench_baselines_dir = stored\niagbench_runs_dir = elsewhere\niagbench_data_dir = no-such-folder\n"
    )
    (project / "benchmarks" / "test_data.py").write_text(NEEDS_DATA, encoding="utf-8")
    result = pytest_in(project, "--iagbench-update-baselines", "-rs", plugin=echo_plugin_file)
    assert result.returncode == 0, result.stdout
    assert (project / "stored" / "echo-sample-40.json").is_file() and list((project / "elsewhere").iterdir())
    assert f"the data folder {project / 'no-such-folder'} is absent" in result.stdout
    assert (
        f"no data folder (--iagbench-data-dir, $IAGBENCH_DATA or ini iagbench_data_dir): {project / 'no-such-folder'}"
        in result.stdout
    )
    assert "2 passed, 2 skipped" in result.stdout
    runs = tmp_path / "given-runs"
    result = pytest_in(project, "--iagbench-runs-dir", str(runs), "benchmarks/test_bench.py", plugin=echo_plugin_file)
    assert result.returncode == 0 and list(runs.iterdir()) and "read back" not in result.stdout


def test_metric_check_arithmetic():
    current = Interval(40.0, 30.0, 52.0)  # half-width 11
    assert MetricCheck("em", 51.0, current).regressed is False  # 11 below: within
    assert MetricCheck("em", 51.5, current).regressed is True
    assert MetricCheck("em", 28.0, current).improved is True
    assert "tolerance 11.00" in MetricCheck("em", 51.5, current).describe()
