"""`iagbench compare` (paired bootstrap, McNemar, flips) and `iagbench report --plot / --format html`."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from iagbench.analysis.compare import compare
from iagbench.analysis.stats import bootstrap_interval, mcnemar, paired_bootstrap
from iagbench.runs.runner import RunSpec, run

PNG = b"\x89PNG\r\n\x1a\n"


def echo_run(plugins, runs_dir: Path, mode: str, limit: int, dataset: str = "sample", **dataset_args) -> Path:
    spec = RunSpec(
        dataset=dataset,
        split="test",
        imaginer="none",
        reader="echo",
        reader_args={"mode": mode},
        dataset_args=dataset_args,
        limit=limit,
        batch_size=8,
        runs_dir=runs_dir,
    )
    folder, _ = run(spec, plugins, progress=False, log=lambda _: None)
    return folder.path


@pytest.fixture(scope="module")
def runs(echo_plugins, tmp_path_factory) -> dict[str, Path]:
    """Echo runs on the sample set: mixed answers (40 and 30 questions) and first words (40 questions)."""
    root = tmp_path_factory.mktemp("compare_runs")
    return {
        "mixed": echo_run(echo_plugins, root, "mixed", 40),
        "mixed30": echo_run(echo_plugins, root, "mixed", 30),
        "first": echo_run(echo_plugins, root, "first-word", 40),
    }


def records(folder: Path) -> dict[str, dict]:
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_compare_gives_the_paired_difference_its_interval_and_a_p_value(runs, invoke_cli):
    code, out, err = invoke_cli("compare", str(runs["first"]), str(runs["mixed"]), "--format", "json")
    assert code == 0, err
    report = json.loads(out)
    a, b = records(runs["first"]), records(runs["mixed"])
    assert report["n_common"] == 40 and report["left_out"] == {"a": 0, "b": 0}
    by_metric = {row["metric"]: row for row in report["metrics"]}
    assert set(by_metric) == {"em", "f1", "subspan_em"}
    for key, row in by_metric.items():
        sa, sb = [a[i]["scores"][key] for i in a], [b[i]["scores"][key] for i in a]
        assert row["a"] == pytest.approx(100 * sum(sa) / 40) and row["b"] == pytest.approx(100 * sum(sb) / 40)
        assert row["diff"] == pytest.approx(row["b"] - row["a"])
        assert row["low"] <= row["diff"] <= row["high"]  # the interval contains the observed difference
        expected = paired_bootstrap(sa, sb).scaled(100)
        assert (row["low"], row["high"]) == pytest.approx((expected.low, expected.high))
    assert by_metric["em"]["diff"] > 0 and by_metric["em"]["low"] > 0
    test = report["mcnemar"]
    expected = mcnemar([a[i]["scores"]["em"] for i in a], [b[i]["scores"]["em"] for i in a])
    assert (test["only_a"], test["only_b"]) == (expected.only_a, expected.only_b)
    assert 0 < test["p_value"] < 0.05 and test["p_value"] == pytest.approx(expected.p_value)
    gained = {i for i in a if a[i]["scores"]["em"] == 0 and b[i]["scores"]["em"] == 1}
    assert {flip["id"] for flip in report["flips"]["gained"]} == gained and len(gained) == test["only_b"]
    assert [flip["id"] for flip in report["flips"]["lost"]] == []
    flip = report["flips"]["gained"][0]
    assert (flip["a"], flip["b"]) == (a[flip["id"]]["prediction"], b[flip["id"]]["prediction"])


def test_compare_text_shows_the_table_the_test_and_the_flips(runs, invoke_cli):
    code, out, _ = invoke_cli("compare", str(runs["first"]), str(runs["mixed"]), "--show", "2")
    assert code == 0
    assert "| metric" in out and "B - A" in out and "95% CI" in out
    assert re.search(r"McNemar exact test on em \(40 examples\): right only in A 0, right only in B \d+, p = ", out)
    assert "paired bootstrap over examples, percentile interval, 1000 resamples, seed 0" in out
    assert re.search(r"right in B, wrong in A: \d+\n  sample-\d+: ", out)
    assert re.search(r"\.\.\. \d+ more", out)


def test_identical_runs_differ_by_zero_with_no_flips(runs, invoke_cli):
    code, out, _ = invoke_cli("compare", str(runs["mixed"]), str(runs["mixed"]), "--format", "json")
    assert code == 0
    report = json.loads(out)
    for row in report["metrics"]:
        assert (row["diff"], row["low"], row["high"]) == (0.0, 0.0, 0.0)
    assert report["mcnemar"]["only_a"] == report["mcnemar"]["only_b"] == 0 and report["mcnemar"]["p_value"] == 1.0
    assert report["flips"] == {"gained": [], "lost": []}


def test_runs_are_compared_over_their_shared_examples_saying_how_many_were_left_out(runs, invoke_cli):
    code, out, _ = invoke_cli("compare", str(runs["mixed"]), str(runs["mixed30"]))
    assert code == 0
    assert "compared over the 30 examples both runs have (left out: 10 of A, 0 of B)" in out
    report = compare(runs["mixed"], runs["mixed30"], metrics=["em"])
    assert [row["metric"] for row in report["metrics"]] == ["em"] and report["metrics"][0]["n"] == 30


def test_runs_sharing_no_examples_are_refused(runs, echo_plugins, tmp_path, invoke_cli):
    corpus = tmp_path / "other.jsonl"
    corpus.write_text('{"id": "x-1", "question": "q one", "answers": ["a"]}\n', encoding="utf-8")
    other = echo_run(echo_plugins, tmp_path, "first-word", 1, dataset="fid-json", path=str(corpus))
    code, _, err = invoke_cli("compare", str(runs["mixed"]), str(other))
    assert code == 2 and "share no example ids: nothing to compare" in err and "(40 examples)" in err


def test_shared_ids_with_other_questions_and_other_metric_versions_are_refused(runs, invoke_cli, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(runs["mixed"], changed)
    lines = (changed / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["question"] += " (edited)"
    (changed / "predictions.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n", encoding="utf-8")
    code, _, err = invoke_cli("compare", str(runs["mixed"]), str(changed))
    assert code == 2 and f"example '{first['id']}' has another question" in err

    newer = tmp_path / "newer"
    shutil.copytree(runs["mixed"], newer)
    results = json.loads((newer / "results.json").read_text())
    results["metric_versions"]["em"] = "2"
    (newer / "results.json").write_text(json.dumps(results))
    code, _, err = invoke_cli("compare", str(runs["mixed"]), str(newer))
    assert code == 2 and "metric 'em' is version 1" in err and "but 2" in err


def test_compare_refuses_unknown_metrics_and_bad_options(runs, invoke_cli):
    code, _, err = invoke_cli("compare", str(runs["mixed"]), str(runs["first"]), "--metrics", "bleu")
    assert code == 2 and "no scores 'bleu'" in err
    code, _, err = invoke_cli("compare", str(runs["mixed"]), str(runs["first"]), "--level", "95")
    assert code == 2 and "--level 95" in err


def test_report_plot_writes_a_png_with_bootstrap_intervals(runs, invoke_cli, tmp_path):
    plot = tmp_path / "metrics.png"
    code, out, err = invoke_cli("report", str(runs["mixed"]), str(runs["first"]), "--plot", str(plot))
    assert code == 0, err
    assert "| run" in out  # the table is printed as before
    data = plot.read_bytes()
    assert data.startswith(PNG) and len(data) > 5000
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(plot).shape
    assert width > 400 and height > 300


def test_report_bars_and_error_bars_are_the_means_and_bootstrap_intervals(runs, monkeypatch):
    """The plotted bars: each run's mean per metric, error bars from the bootstrap of its examples."""
    from matplotlib.axes import Axes

    from iagbench.analysis import plot
    from iagbench.runs.folder import RunFolder

    drawn = []
    original = Axes.bar
    monkeypatch.setattr(
        Axes, "bar", lambda self, x, h, w, **kw: drawn.append((list(h), kw["yerr"])) or original(self, x, h, w, **kw)
    )
    plot.figure_png([RunFolder(runs["mixed"]), RunFolder(runs["first"])])
    mixed = records(runs["mixed"])
    heights, (below, above) = drawn[0]
    for index, key in enumerate(["em", "f1", "subspan_em"]):
        interval = bootstrap_interval([r["scores"][key] for r in mixed.values()]).scaled(100)
        assert heights[index] == pytest.approx(interval.estimate)
        assert (heights[index] - below[index], heights[index] + above[index]) == pytest.approx(
            (interval.low, interval.high)
        )


def test_report_html_has_the_table_the_intervals_and_the_plot(runs, invoke_cli, tmp_path):
    plot = tmp_path / "p.png"
    code, out, err = invoke_cli(
        "report", str(runs["mixed"]), str(runs["first"]), "--format", "html", "--plot", str(plot)
    )
    assert code == 0, err
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    for column in ("run", "dataset", "split", "imaginer", "reader", "n", "em", "f1", "subspan_em"):
        assert f"<th>{column}</th>" in out
    results = json.loads((runs["mixed"] / "results.json").read_text())
    assert f"<td>{results['run']}</td>" in out
    em = bootstrap_interval([r["scores"]["em"] for r in records(runs["mixed"]).values()]).scaled(100)
    assert f"{results['metrics']['em']:.2f}<br><small>[{em.low:.2f}, {em.high:.2f}]</small>" in out
    image = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', out)
    assert image and base64.b64decode(image.group(1)) == plot.read_bytes()
    code, out, _ = invoke_cli("report", str(runs["mixed"]), "--format", "html")
    assert code == 0 and "data:image/png;base64," in out
