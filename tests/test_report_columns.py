"""`iagbench report`: columns for the options that differ, --label, --metrics, --sort, ± CI, folders that are not
runs, fid-json runs named by their file, and `report --train` curves."""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import pytest

from iagbench.analysis.stats import bootstrap_interval
from iagbench.runs.runner import RunSpec, run


def one_line_error(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("iagbench: error: "), stderr
    return stderr


def echo(plugins, root: Path, mode: str, limit: int, dataset: str = "sample", **dataset_args) -> Path:
    spec = RunSpec(dataset=dataset, split="test", imaginer="none", reader="echo", reader_args={"mode": mode},
                   dataset_args=dataset_args, limit=limit, batch_size=8, runs_dir=root)  # fmt: skip
    return run(spec, plugins, progress=False, log=lambda _: None)[0].path


@pytest.fixture(scope="module")
def runs(echo_plugins, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report_runs")
    return {"mixed": echo(echo_plugins, root, "mixed", 20), "first": echo(echo_plugins, root, "first-word", 20)}


def test_a_column_per_differing_option_and_none_for_equal_ones(runs, invoke_cli):
    code, out, err = invoke_cli("report", str(runs["mixed"]), str(runs["first"]), "--format", "csv")
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert table[0][:7] == ["run", "dataset", "split", "imaginer", "reader", "reader.mode", "n"]
    assert [row[5] for row in table[1:]] == ["mixed", "first-word"]
    assert "limit" not in table[0] and "seed" not in table[0]  # the same in both runs


def test_label_metrics_sort_and_ci(runs, invoke_cli):
    folders = [str(runs["first"]), str(runs["mixed"])]
    code, out, err = invoke_cli("report", *folders, "--label", "{reader}/{reader.mode} n={n}", "--metrics", "f1,em",
                                "--sort", "em", "--format", "json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    # the echo reader counts no tokens: its runs get the seconds column only
    assert report["columns"][0] == "label" and report["columns"][-3:] == ["f1", "em", "s/q"]
    assert [row[0] for row in report["rows"]] == ["echo/mixed n=20", "echo/first-word n=20"]  # best em first
    code, out, _ = invoke_cli("report", *folders, "--label", "a,b", "--ci", "--metrics", "em")
    assert code == 0
    em = [json.loads(line)["scores"]["em"] for line in (runs["mixed"] / "predictions.jsonl").read_text().splitlines()]
    half = bootstrap_interval(em).scaled(100).half_width
    mixed = next(line for line in out.splitlines() if line.startswith("| b "))
    assert f"± {half:.2f}" in mixed and "half-width of the 95% bootstrap interval" in out
    code, out, _ = invoke_cli("report", *folders, "--ci", "--format", "latex", "--metrics", "em")
    assert "$\\pm$" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--sort", "bleu"), "--sort bleu: not a metric column"),
        (("--metrics", "em,blue"), "--metrics: no metric 'blue'"),
        (("--label", "a,b,c"), "--label: 3 names for 2 runs"),
        (("--label", "{readr}"), "--label: unknown field '{readr}'"),
    ],
)
def test_bad_report_choices_are_one_line_errors(runs, invoke_cli, args, message):
    code, _, err = invoke_cli("report", str(runs["mixed"]), str(runs["first"]), *args)
    assert code == 2 and message in one_line_error(err)


def test_folders_that_are_not_runs_are_skipped_with_a_note(runs, invoke_cli, tmp_path):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    code, out, err = invoke_cli("report", str(corpora), str(runs["mixed"]))
    assert code == 0 and runs["mixed"].name in out
    assert f"skipping {corpora}: not a run folder (no config.json)" in err
    code, _, err = invoke_cli("report", str(corpora))
    assert code == 2 and f"{corpora}: not a run folder (no config.json)" in one_line_error(err)
    code, _, err = invoke_cli("report", str(corpora), str(tmp_path / "missing"))
    assert code == 2 and "is a run folder" in one_line_error(err)


def test_fid_json_runs_are_named_by_their_file(echo_plugins, tmp_path, invoke_cli):
    rows = [{"id": f"q{i}", "question": f"q {i}", "answers": ["a"]} for i in range(3)]
    paths = [tmp_path / "dev.jsonl", tmp_path / "test.jsonl"]
    for path in paths:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    folders = [echo(echo_plugins, tmp_path / "runs", "mixed", 3, "fid-json", path=str(path)) for path in paths]
    code, out, err = invoke_cli("report", *map(str, folders), "--format", "csv")
    assert code == 0, err
    table = list(csv.reader(io.StringIO(out)))
    assert [row[1] for row in table[1:]] == ["dev.jsonl", "test.jsonl"] and "dataset.path" not in table[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_train_draws_curves_and_prints_a_table(tmp_path, invoke_cli):
    folders = []
    for name, scale in (("small", 1.0), ("large", 0.6)):
        folder = tmp_path / name
        folder.mkdir()
        records = [{"step": step, "loss": scale * 3 / step, "lr": 1e-4} for step in range(1, 21)]
        records += [{"step": step, "eval_em": 10 + step / scale, "eval_n": 8} for step in (5, 10, 15, 20)]
        (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        folders.append(str(folder))
    plot = tmp_path / "curves.png"
    code, out, err = invoke_cli("report", "--train", *folders, "--plot", str(plot))
    assert code == 0, err
    assert png_size(plot) == (1000, 400)  # 10 x 4 inches at 100 dpi
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert "final loss" in lines[0] and "best eval_em" in lines[0]
    small = next(line for line in lines if "small" in line)
    assert "0.15" in small and "30" in small  # final loss 3/20, best eval em 10 + 20
    code, _, err = invoke_cli("report", "--train", str(tmp_path / "missing"))
    assert code == 2 and "no such folder" in one_line_error(err)
