"""`iagbench run --config exp.toml|exp.yaml` (a grid of runs), comma lists, and `--limit` fractions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from iagbench.runs.folder import read_json
from iagbench.runs.runner import RunSpec, run

TOML = """\
description = "echo modes"
[grid]
reader = "echo"
reader_args = ["mode=first-word", "mode=mixed"]
[options]
limit = 6
batch_size = 4
[[entry]]
match = {reader_args = "mode=mixed"}
seed = 3
[[entry]]
reader = "echo"
limit = 0.05
"""

YAML = """\
grid:
  reader: [echo]
  reader_args: ["mode=first-word", "mode=mixed"]
options:
  limit: 6
  batch_size: 4
entry:
  - match: {reader_args: "mode=mixed"}
    seed: 3
  - reader: echo
    limit: 0.05
"""


def one_line_error(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("iagbench: error: "), stderr
    return stderr


def configs(root: Path) -> list[dict]:
    return sorted((read_json(path) for path in root.glob("*/config.json")), key=lambda c: c["name"] + c["hash"])


@pytest.mark.parametrize(("name", "text"), [("exp.toml", TOML), ("exp.yaml", YAML)])
def test_an_experiment_file_runs_every_entry_once_and_resumes(tmp_path, invoke_cli, echo_plugin_file, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    args = ("run", "--config", str(path), "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    code, out, err = invoke_cli(*args, plugin_files=(echo_plugin_file,))
    assert code == 0, err
    found = configs(tmp_path / "runs")
    assert len(found) == 3 and out.count("run folder: ") == 3
    identities = sorted((c["identity"]["reader"]["options"].get("mode", ""), c["identity"]["seed"], c["identity"]["limit"],
                         c["identity"]["dataset"]["n"]) for c in found)  # fmt: skip
    assert identities == [("", 0, 0.05, 5), ("first-word", 0, 6, 6), ("mixed", 3, 6, 6)]
    assert "reader.mode" in out.splitlines()[0] and "seed" in out.splitlines()[0]  # one report of all of them
    code, _, err = invoke_cli(*args, plugin_files=(echo_plugin_file,))
    assert code == 0 and err.count("run already finished") == 3


def test_comma_lists_make_a_grid(tmp_path, invoke_cli, echo_plugin_file):
    code, out, err = invoke_cli("run", "--dataset", "sample,sample", "--reader", "echo", "--reader-args", "mode=mixed",
                                "--limit", "4", "--runs-dir", str(tmp_path / "runs"), "--no-progress",
                                plugin_files=(echo_plugin_file,))  # fmt: skip
    assert code == 0, err
    assert "run 2 of 2" in err and "run already finished" in err  # the same run twice: once computed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[grid]\nreader = ['echo']\nbatch = 3\n", "entry 1 key 'batch': iagbench run has no option --batch"),
        ("[grid]\nreader = ['echo']\n[runs]\n", "unknown key 'runs'"),
        ("[grid]\nreader = 'echo'\n[[entry]]\nmatch = {reader = 'x'}\nseed = 1\n", "entry 1: match"),
        ("[grid]\nreader = 'echo'\n[options]\noutput = 'x'\n", "key 'output': not in experiment files"),
        ("[grid\n", "not valid TOML"),
        ("description = 'nothing'\n", "no runs"),
    ],
)
def test_bad_experiment_files_are_one_line_errors(tmp_path, invoke_cli, echo_plugin_file, text, message):
    path = tmp_path / "exp.toml"
    path.write_text(text, encoding="utf-8")
    code, _, err = invoke_cli("run", "--config", str(path), "--runs-dir", str(tmp_path / "runs"),
                              plugin_files=(echo_plugin_file,))  # fmt: skip
    assert code == 2 and message in one_line_error(err) and str(path) in err
    assert not (tmp_path / "runs").exists()


def test_experiment_file_formats(tmp_path, invoke_cli, echo_plugin_file):
    path = tmp_path / "exp.json"
    path.write_text("{}", encoding="utf-8")
    code, _, err = invoke_cli("run", "--config", str(path), plugin_files=(echo_plugin_file,))
    assert code == 2 and "expected a .toml, .yaml or .yml file" in one_line_error(err)
    path = tmp_path / "exp.yaml"
    path.write_text("grid: [1, 2\n", encoding="utf-8")
    code, _, err = invoke_cli("run", "--config", str(path), plugin_files=(echo_plugin_file,))
    assert code == 2 and f"{path}: not valid YAML" in one_line_error(err)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.333])
def test_limit_fraction_takes_the_first_ceil_of_the_split(echo_plugins, tmp_path, fraction):
    rows = [{"id": f"q{i}", "question": f"q {i}", "answers": ["a"]} for i in range(30)]
    data = tmp_path / "qs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    spec = RunSpec("fid-json", "test", "none", "echo", dataset_args={"path": str(data)}, limit=fraction,
                   runs_dir=tmp_path / "runs")  # fmt: skip
    folder, results = run(spec, echo_plugins, progress=False, log=lambda _: None)
    expected = {0.1: 3, 0.25: 8, 0.333: math.ceil(9.99)}[fraction]
    assert results["n"] == expected and [r["id"] for r in folder.records()] == [f"q{i}" for i in range(expected)]
    assert folder.config()["identity"]["limit"] == fraction  # recorded as given


def test_integer_limits_keep_their_identity(echo_plugins, tmp_path):
    spec = RunSpec("sample", "test", "none", "echo", limit=5, runs_dir=tmp_path / "runs")
    folder, _ = run(spec, echo_plugins, progress=False, log=lambda _: None)
    limit = folder.config()["identity"]["limit"]
    assert limit == 5 and isinstance(limit, int)


@pytest.mark.parametrize("value", ["1.5", "-0.2", "1.0", "abc"])
def test_bad_limits_are_refused(value):
    import argparse

    from iagbench.commands.arguments import limit

    assert limit("3") == 3 and limit("0.5") == 0.5
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer or a fraction between 0 and 1"):
        limit(value)


def test_a_zero_limit_is_a_one_line_error(invoke_cli, echo_plugin_file):
    code, _, err = invoke_cli("run", "--reader", "echo", "--limit", "0", plugin_files=(echo_plugin_file,))
    assert code == 2 and "--limit 0: expected a positive integer" in one_line_error(err)
