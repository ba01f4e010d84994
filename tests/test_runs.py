"""End-to-end runs: run folders, resume after a crash or kill -9, refusals, report and score."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import iagbench
from iagbench.contract.errors import RunFolderError
from iagbench.contract.types import Passage
from iagbench.runs.folder import config_hash
from iagbench.runs.runner import RunSpec, run
from iagbench.text.normalize import exact_match, f1, subspan_em
from iagbench_plugins.datasets.sample import Sample
from iagbench_plugins.metrics import F1, ExactMatch, HasAnswer, SubspanEM
from iagbench_plugins.metrics.dpr_tokenizer import has_answer_at_k

TINY = (
    "--reader",
    "tiny-llama",
    "--limit",
    "12",
    "--batch-size",
    "4",
    "--reader-args",
    "max_new_tokens=3",
    "--no-progress",
)
RUN_FILES = ("config.json", "env.json", "predictions.jsonl", "results.json", "components.json")
ANSWER_METRICS = {"em", "f1", "subspan_em"}
METRIC_VERSIONS = {m.name: m.version for m in (ExactMatch, F1, SubspanEM, HasAnswer)}
SAMPLE_TEST = Sample().load("test")


@dataclass
class Done:
    """A finished run: where it was started, its folder, and what the command printed."""

    cwd: Path
    folder: Path
    stdout: str
    stderr: str


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text(encoding="utf-8"))


def one_line_error(stderr: str) -> str:
    assert stderr.count("\n") == 1 and stderr.startswith("iagbench: error: "), stderr
    assert "Traceback" not in stderr
    return stderr


def assert_scores_are_the_metrics(record: dict) -> None:
    prediction, answers = record["prediction"], record["answers"]
    expected = {
        "em": exact_match(prediction, answers),
        "f1": f1(prediction, answers),
        "subspan_em": subspan_em(prediction, answers),
    }
    assert record["scores"] == pytest.approx(expected, abs=1e-12)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cli) -> Done:
    """`iagbench run` with tiny-llama on 12 sample questions, in a subprocess, in a fresh folder."""
    cwd = tmp_path_factory.mktemp("tiny_run")
    result = cli("run", *TINY, cwd=cwd)
    assert result.returncode == 0, result.stderr
    folders = list((cwd / "runs").iterdir())
    assert len(folders) == 1
    return Done(cwd, folders[0], result.stdout, result.stderr)


@pytest.fixture(scope="module")
def echo_run(tmp_path_factory, echo_plugins) -> Done:
    """24 sample questions answered by the model-free echo reader in mixed mode (every score varies)."""
    logs: list[str] = []
    spec = RunSpec(
        "sample", "test", "none", "echo", reader_args={"mode": "mixed"}, limit=24, batch_size=5,
        runs_dir=tmp_path_factory.mktemp("echo_run") / "runs",
    )  # fmt: skip
    folder, _ = run(spec, echo_plugins, progress=False, log=logs.append)
    return Done(spec.runs_dir, folder.path, "", "\n".join(logs))


# ---- a run folder ----


def test_cli_run_writes_config_env_predictions_and_results(tiny_run):
    folder = tiny_run.folder
    assert all((folder / name).is_file() for name in RUN_FILES)
    assert f"run folder: runs/{folder.name}" in tiny_run.stdout
    assert "(0 of 12 examples already done)" in tiny_run.stderr

    config = read(folder, "config.json")
    identity = config["identity"]
    assert identity["dataset"]["name"] == "sample" and identity["dataset"]["split"] == "test"
    assert identity["dataset"]["n"] == 12 and identity["limit"] == 12 and identity["seed"] == 0
    assert identity["imaginer"] == {"name": "none", "options": {}}
    assert identity["reader"] == {"name": "tiny-llama", "options": {"max_new_tokens": 3}}
    assert config["hash"] == config_hash(identity) and len(config["hash"]) == 10
    assert config["name"] == folder.name == f"sample-test__none__tiny-llama__{config['hash']}"
    assert config["metrics"] == METRIC_VERSIONS
    version = iagbench.__version__
    assert config["plugins"] == {
        "iagbench-datasets": version,
        "iagbench-imaginers": version,
        "iagbench-readers": version,
    }
    assert config["batch_size"] == 4
    assert config["non_default_options"]["limit"] == 12 and config["non_default_options"]["reader"] == "tiny-llama"
    assert [f["path"].rsplit("/", 1)[-1] for f in config["dataset_source"]["files"]] == [
        "questions.jsonl",
        "passages.jsonl",
    ]

    env = read(folder, "env.json")
    assert env["python"] == platform.python_version()
    assert env["packages"]["iagbench"] == version and env["packages"]["torch"]
    assert "accelerator" in env and env["cwd"] == str(tiny_run.cwd)

    components = read(folder, "components.json")
    assert components["reader"]["model"]["kind"] == "random" and components["reader"]["max_new_tokens"] == 3


def test_cli_run_predictions_hold_one_scored_record_per_example(tiny_run):
    records = lines(tiny_run.folder / "predictions.jsonl")
    expected = {example.id: example for example in SAMPLE_TEST[:12]}
    assert sorted(record["id"] for record in records) == sorted(expected)
    for record in records:
        assert {"id", "question", "answers", "prediction", "context", "scores"} <= set(record)
        example = expected[record["id"]]
        assert record["question"] == example.question and record["answers"] == list(example.answers)
        assert record["context"] == {"passages": []}
        assert isinstance(record["prediction"], str) and "raw" in record
        assert_scores_are_the_metrics(record)


def test_cli_run_results_are_percent_means(tiny_run):
    records = lines(tiny_run.folder / "predictions.jsonl")
    results = read(tiny_run.folder, "results.json")
    assert results["n"] == 12 and set(results["metrics"]) == ANSWER_METRICS
    for key in ANSWER_METRICS:
        assert results["metrics"][key] == pytest.approx(100 * sum(r["scores"][key] for r in records) / 12)
        assert results["counts"][key] == 12
    assert results["metric_versions"] == METRIC_VERSIONS
    assert (
        results["run"] == tiny_run.folder.name
        and results["config_hash"] == read(tiny_run.folder, "config.json")["hash"]
    )
    described = (results["dataset"], results["split"], results["imaginer"], results["reader"])
    assert described == ("sample", "test", "none", "tiny-llama")


def test_runner_api_gives_the_same_folder_name_and_predictions_as_the_cli(tiny_run, plugins, tmp_path):
    spec = RunSpec(
        "sample", "test", "none", "tiny-llama", reader_args={"max_new_tokens": 3}, limit=12, batch_size=4,
        runs_dir=tmp_path / "runs",
    )  # fmt: skip
    folder, results = run(spec, plugins, progress=False, log=lambda message: None)
    assert folder.path.name == tiny_run.folder.name
    by_id = {r["id"]: r["prediction"] for r in lines(tiny_run.folder / "predictions.jsonl")}
    assert {r["id"]: r["prediction"] for r in lines(folder.predictions_path)} == by_id
    assert results["metrics"] == read(tiny_run.folder, "results.json")["metrics"]


def test_echo_run_scores_equal_the_metric_functions_and_average_in_percent(echo_run):
    records = lines(echo_run.folder / "predictions.jsonl")
    assert len(records) == 24 and len({r["id"] for r in records}) == 24
    for record in records:
        assert_scores_are_the_metrics(record)
        assert record["raw"] == f"raw: {record['prediction']}"
    # mixed mode answers gold / "the gold!" / "not gold" / "no idea": the three metrics all differ
    by_bucket = {int(r["id"].split("-")[1]) % 4: r["scores"] for r in records}
    assert by_bucket[0] == {"em": 1.0, "f1": 1.0, "subspan_em": 1.0}
    assert by_bucket[1] == {"em": 1.0, "f1": 1.0, "subspan_em": 1.0}
    assert by_bucket[2]["em"] == 0.0 and 0 < by_bucket[2]["f1"] < 1 and by_bucket[2]["subspan_em"] == 1.0
    assert by_bucket[3] == {"em": 0.0, "f1": 0.0, "subspan_em": 0.0}
    results = read(echo_run.folder, "results.json")
    for key in ANSWER_METRICS:
        assert results["metrics"][key] == pytest.approx(100 * sum(r["scores"][key] for r in records) / 24)
    assert results["metrics"]["em"] == pytest.approx(50.0) and results["metrics"]["subspan_em"] == pytest.approx(75.0)


# ---- running again ----


def test_same_command_again_is_not_recomputed(tiny_run, invoke_cli, monkeypatch):
    from iagbench_plugins.readers import causal_lm

    def refuse(*args, **kwargs):
        raise AssertionError("the reader was built for a finished run")

    monkeypatch.setattr(causal_lm.CausalLMReader, "__init__", refuse)
    before = {name: (tiny_run.folder / name).read_bytes() for name in RUN_FILES}
    monkeypatch.chdir(tiny_run.cwd)
    code, out, err = invoke_cli("run", *TINY)
    assert code == 0, err
    assert f"run already finished: runs/{tiny_run.folder.name} (not recomputed)" in err
    assert {name: (tiny_run.folder / name).read_bytes() for name in RUN_FILES} == before
    assert tiny_run.folder.name in out
    assert [p.name for p in (tiny_run.cwd / "runs").iterdir()] == [tiny_run.folder.name]


def test_predictions_cut_mid_line_are_repaired_on_resume(tiny_run, invoke_cli, tmp_path):
    folder = Path(shutil.copytree(tiny_run.folder, tmp_path / "copy"))
    (folder / "results.json").unlink()
    original = (folder / "predictions.jsonl").read_bytes()
    kept = original.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n"  # the first 11 lines
    last = original[len(kept) :]
    with open(folder / "predictions.jsonl", "r+b") as handle:  # a crash in the middle of the last write
        handle.truncate(len(kept) + len(last) // 2)

    code, _, err = invoke_cli("score", str(folder))
    assert code == 2 and "last line is incomplete" in one_line_error(err)

    code, _, err = invoke_cli("run", *TINY, "--output", str(folder))
    assert code == 0, err
    assert "(11 of 12 examples already done)" in err
    repaired = (folder / "predictions.jsonl").read_bytes()
    assert repaired.startswith(kept)
    records = lines(folder / "predictions.jsonl")
    assert sorted(r["id"] for r in records) == sorted(e.id for e in SAMPLE_TEST[:12])
    assert records[-1]["id"] == json.loads(last)["id"]
    assert read(folder, "results.json")["n"] == 12


def test_kill_9_mid_run_then_resume(cli, iagbench_cli, echo_plugin_file, tmp_path):
    args = ["run", "--reader", "echo", "--limit", "40", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "IAGBENCH_PLUGINS": str(echo_plugin_file)}
    # The echo reader stalls on its 4th batch, so the kill lands mid-run at a known point.
    with open(tmp_path / "killed.err", "w") as err:
        process = subprocess.Popen(
            [iagbench_cli, *args], cwd=tmp_path, env={**env, "ECHO_READER_STALL_AFTER": "3"},
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        predictions: list[Path] = []
        # wait for all three batches (6 lines): killing at the first lines seen raced the third batch
        while not predictions or len(predictions[0].read_bytes().splitlines()) < 6:
            assert process.poll() is None, (tmp_path / "killed.err").read_text()
            assert time.monotonic() < deadline, "not 6 predictions after 60 s"
            time.sleep(0.02)
            predictions = list(tmp_path.glob("runs/*/predictions.jsonl"))
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    path = predictions[0]
    before = path.read_bytes()
    assert len(before.splitlines()) == 6 and not (path.parent / "results.json").exists()

    result = cli(*args, cwd=tmp_path, env={"IAGBENCH_PLUGINS": str(echo_plugin_file)})
    assert result.returncode == 0, result.stderr
    assert "(6 of 40 examples already done)" in result.stderr
    assert path.read_bytes().startswith(before)
    records = lines(path)
    ids = [r["id"] for r in records]
    assert len(ids) == 40 and set(ids) == {e.id for e in SAMPLE_TEST[:40]}
    assert all(r["prediction"] == r["question"].split()[0] for r in records)
    assert read(path.parent, "results.json")["n"] == 40
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [path.parent.name]


def test_questions_with_unicode_line_separators_survive_a_run_and_a_resume(echo_plugins, tmp_path):
    # Real TriviaQA test questions hold U+2028; JSON keeps it raw (ensure_ascii=False), so records must
    # be split at "\n" only.
    data = tmp_path / "odd.jsonl"
    questions = ["first\u2028second line", "next\u0085line", "form\x0cfeed and\x1eseparator"]
    data.write_text("".join(json.dumps({"question": q, "answers": ["x"]}) + "\n" for q in questions), encoding="utf-8")
    spec = RunSpec(
        "fid-json", "test", "none", "echo", dataset_args={"path": str(data)}, batch_size=2, runs_dir=tmp_path / "runs"
    )
    folder, results = run(spec, echo_plugins, progress=False, log=lambda message: None)
    assert results["n"] == 3
    assert sorted(r["question"] for r in folder.records()) == sorted(questions)
    folder.results_path.unlink()
    folder, results = run(spec, echo_plugins, progress=False, log=lambda message: None)
    assert results["n"] == 3 and len(lines(folder.predictions_path)) == 3


# ---- refusals and names ----


def test_another_configuration_on_the_same_output_is_refused(tiny_run, invoke_cli):
    before = {name: (tiny_run.folder / name).read_bytes() for name in RUN_FILES}
    code, _, err = invoke_cli("run", *TINY[:3], "11", *TINY[4:], "--output", str(tiny_run.folder))
    assert code == 2
    message = one_line_error(err)
    assert f"{tiny_run.folder / 'config.json'}: this folder holds another configuration" in message
    assert "limit" in message and "choose another --output" in message
    assert {name: (tiny_run.folder / name).read_bytes() for name in RUN_FILES} == before


def test_another_configuration_is_refused_on_an_unfinished_folder_too(echo_run, echo_plugins, tmp_path):
    folder = Path(shutil.copytree(echo_run.folder, tmp_path / "copy"))
    (folder / "results.json").unlink()
    spec = RunSpec("sample", "test", "none", "echo", reader_args={"mode": "first-word"}, limit=24, output=folder)
    with pytest.raises(RunFolderError, match=r"differs in: reader\.options\.mode"):
        run(spec, echo_plugins, progress=False, log=lambda message: None)
    assert not (folder / "results.json").exists()


def test_identity_decides_the_folder_name(echo_plugins, tmp_path):
    def folder(**changes) -> str:
        options = {"limit": 3, "batch_size": 2, "reader_args": {}, "seed": 0, **changes}
        spec = RunSpec("sample", "test", "none", "echo", runs_dir=tmp_path / "runs", **options)
        return run(spec, echo_plugins, progress=False, log=lambda message: None)[0].path.name

    first = folder()
    assert folder() == first
    assert folder(batch_size=3) == first  # how it runs, not what it runs
    assert folder(batch_size=None, batch_tokens=50) == folder(batch_size=None) == first  # so is the token budget
    others = {folder(limit=4), folder(reader_args={"mode": "mixed"}), folder(seed=1)}
    assert len(others) == 3 and first not in others
    assert all(name.startswith("sample-test__none__echo__") for name in others)


@pytest.mark.parametrize(
    "flag, name, suggestion",
    [("--dataset", "nqq", "'nq'"), ("--reader", "tiny-lama", "'tiny-llama'"), ("--imaginer", "nne", "'none'")],
)
def test_unknown_component_name_exits_2_with_did_you_mean(invoke_cli, tmp_path, flag, name, suggestion):
    args = {"--dataset": "sample", "--reader": "tiny-llama", "--imaginer": "none", flag: name}
    argv = [item for pair in args.items() for item in pair]
    code, out, err = invoke_cli("run", *argv, "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and out == ""
    assert f"Did you mean {suggestion}?" in one_line_error(err)
    assert not (tmp_path / "runs").exists()


def test_malformed_dataset_line_is_one_line_naming_file_line_and_field(cli, echo_plugin_file, tmp_path):
    data = tmp_path / "questions.jsonl"
    data.write_text('{"question": "q1", "answers": ["a"]}\n\n{"question": "q2", "answers": "a"}\n', encoding="utf-8")
    result = cli(
        "run", "--dataset", "fid-json", "--dataset-args", f"path={data}", "--reader", "echo", "--no-progress",
        cwd=tmp_path, env={"IAGBENCH_PLUGINS": str(echo_plugin_file)},
    )  # fmt: skip
    assert result.returncode == 2
    message = one_line_error(result.stderr)
    assert f"{data}:3: field 'answers': expected a non-empty list" in message
    assert not (tmp_path / "runs").exists()


# ---- report ----


def test_report_in_every_format(tiny_run, echo_run, invoke_cli):
    folders = [tiny_run.folder, echo_run.folder]
    results = [read(folder, "results.json") for folder in folders]
    metrics = ["em", "f1", "subspan_em"]

    code, out, _ = invoke_cli("report", *map(str, folders), "--format", "csv", "--no-cost")
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    header = table[0]  # the options that differ between the two runs (limit, reader.mode...) come before n
    assert header[:5] == ["run", "dataset", "split", "imaginer", "reader"] and header[-4:] == ["n", *metrics]
    assert "limit" in header and "reader.mode" in header and len(table) == 3
    for row, result in zip(table[1:], results):
        assert row[:5] == [result["run"], "sample", "test", "none", result["reader"]] and row[-4] == str(result["n"])
        assert [float(cell) for cell in row[-3:]] == [round(result["metrics"][k], 2) for k in metrics]

    code, out, _ = invoke_cli("report", *map(str, folders), "--format", "json", "--no-cost")
    assert code == 0
    report = json.loads(out)
    assert report["columns"] == header and report["metric_versions"] == METRIC_VERSIONS
    assert [row[0] for row in report["rows"]] == [r["run"] for r in results]
    assert report["rows"][1][-3:] == [round(results[1]["metrics"][k], 2) for k in metrics]

    code, out, _ = invoke_cli("report", *map(str, folders), "--no-cost")
    assert code == 0
    text = out.splitlines()
    assert text[0].startswith("| run ") and [c.strip() for c in text[0].strip("|").split("|")] == header
    assert tiny_run.folder.name in text[2] and echo_run.folder.name in text[3]
    assert f"{results[1]['metrics']['em']:.2f}" in text[3]
    assert "metric versions: em v1, f1 v1, has_answer v1, subspan_em v1" in out
    code, out, _ = invoke_cli("report", *map(str, folders), "--format", "csv")  # cost columns by default
    assert code == 0 and out.splitlines()[0].split(",")[-3:] == ["s/q", "input tok/q", "GFLOP/q"]

    code, out, _ = invoke_cli("report", *map(str, folders), "--format", "latex", "--no-cost")
    assert code == 0
    assert "\\begin{tabular}" in out and "\\toprule" in out and "\\end{tabular}" in out
    assert echo_run.folder.name.replace("_", "\\_") in out and "% metric versions:" in out


def test_report_refuses_unfinished_runs_and_mixed_metric_versions(echo_run, tiny_run, invoke_cli, tmp_path):
    unfinished = Path(shutil.copytree(echo_run.folder, tmp_path / "unfinished"))
    (unfinished / "results.json").unlink()
    code, _, err = invoke_cli("report", str(tiny_run.folder), str(unfinished))
    assert code == 2 and "run not finished" in one_line_error(err)

    newer = Path(shutil.copytree(echo_run.folder, tmp_path / "newer"))
    results = read(newer, "results.json")
    results["metric_versions"]["em"] = "2"
    (newer / "results.json").write_text(json.dumps(results))
    code, _, err = invoke_cli("report", str(tiny_run.folder), str(newer))
    assert code == 2 and "metric 'em' is version 2 here but 1" in one_line_error(err)


# ---- score ----


def test_score_a_predictions_file_gives_the_runs_results(echo_run, invoke_cli):
    code, out, _ = invoke_cli("score", str(echo_run.folder / "predictions.jsonl"))
    assert code == 0
    summary = json.loads(out)
    results = read(echo_run.folder, "results.json")
    assert summary["n"] == 24 and summary["metric_versions"] == METRIC_VERSIONS
    assert summary["metrics"] == pytest.approx(results["metrics"])

    code, out, _ = invoke_cli("score", str(echo_run.folder / "predictions.jsonl"), "--metrics", "em")
    assert code == 0 and json.loads(out)["metrics"] == pytest.approx({"em": results["metrics"]["em"]})


def test_score_a_file_with_passages_and_the_answer_alias(invoke_cli, tmp_path):
    passages = [
        {"title": "France", "text": "The capital of France is Paris."},
        {"title": "Paris", "text": "A city on the Seine."},
    ]
    records = [
        {"prediction": "Paris", "answers": ["Paris"], "ctxs": passages},
        {
            "prediction": "the city of Lyon",
            "answer": ["Lyon", "Lyons"],
            "ctxs": [passages[1], {"title": "", "text": "Lyons"}],
        },
    ]
    path = tmp_path / "scorable.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, out, _ = invoke_cli("score", str(path))
    assert code == 0
    summary = json.loads(out)
    expected: dict[str, list[float]] = {}
    for record in records:
        answers = record.get("answers", record.get("answer"))
        ctxs = [Passage(text=c["text"], title=c["title"]) for c in record["ctxs"]]
        scores = {"em": exact_match(record["prediction"], answers), "f1": f1(record["prediction"], answers)}
        scores["subspan_em"] = subspan_em(record["prediction"], answers)
        scores.update({f"has_answer@{k}": v for k, v in has_answer_at_k(answers, ctxs, (1, 2)).items()})
        for key, value in scores.items():
            expected.setdefault(key, []).append(value)
    assert summary["metrics"] == pytest.approx({k: 100 * sum(v) / len(v) for k, v in expected.items()})
    assert (summary["metrics"]["has_answer@1"], summary["metrics"]["has_answer@2"], summary["metrics"]["em"]) == (
        50,
        100,
        50,
    )
    assert summary["n"] == 2


def test_score_a_run_folder_and_write_the_new_scores(echo_run, invoke_cli, tmp_path):
    folder = Path(shutil.copytree(echo_run.folder, tmp_path / "copy"))
    records = lines(folder / "predictions.jsonl")
    wrong = next(i for i, r in enumerate(records) if r["scores"]["em"] == 0.0)
    records[wrong]["prediction"] = records[wrong]["answers"][0]  # fixed by hand; its scores are now stale
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    stale = (folder / "predictions.jsonl").read_bytes()
    old_em = read(folder, "results.json")["metrics"]["em"]

    code, out, _ = invoke_cli("score", str(folder))
    assert code == 0
    assert json.loads(out)["metrics"]["em"] == pytest.approx(old_em + 100 / 24)
    assert (folder / "predictions.jsonl").read_bytes() == stale

    code, out, _ = invoke_cli("score", str(folder), "--write")
    assert code == 0
    rescored = lines(folder / "predictions.jsonl")
    assert rescored[wrong]["scores"] == {"em": 1.0, "f1": 1.0, "subspan_em": 1.0}
    assert [r["id"] for r in rescored] == [r["id"] for r in records]
    results = read(folder, "results.json")
    assert results["metrics"]["em"] == pytest.approx(old_em + 100 / 24) and "rescored_at" in results
    assert results["run"] == echo_run.folder.name and results["n"] == 24

    code, _, err = invoke_cli("score", str(folder / "predictions.jsonl"), "--write")
    assert code == 2 and "--write applies to run folders only" in one_line_error(err)


@pytest.mark.parametrize(
    "bad_line, needle",
    [
        ('{"prediction": "x"}', ":2: field 'answers': expected a non-empty list of strings"),
        ('{"prediction": 3, "answers": ["x"]}', ":2: field 'prediction': expected a string"),
        ('{"prediction": "x", "answers": ["x"], "ctxs": [{"title": "t"}]}', ":2: field 'ctxs[0].text'"),
        ('{"prediction": "x", "answers": ["x"]', ":2: not valid JSON"),
    ],
)
def test_score_a_malformed_line_exits_2_naming_file_line_and_field(invoke_cli, tmp_path, bad_line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prediction": "a", "answers": ["a"]}\n' + bad_line + "\n")
    code, out, err = invoke_cli("score", str(path))
    assert code == 2 and out == ""
    assert f"{path}{needle}" in one_line_error(err)


def test_an_option_the_reader_does_not_take_is_refused_and_leaves_no_folder(invoke_cli, tmp_path):
    code, out, err = invoke_cli(
        "run",
        "--dataset",
        "sample",
        "--limit",
        "2",
        "--reader",
        "tiny-llama",
        "--reader-args",
        "max_new_token=3",
        "--runs-dir",
        str(tmp_path / "runs"),
    )
    assert code == 2 and out == ""
    message = one_line_error(err)
    assert "reader 'tiny-llama'" in message and "max_new_token" in message and "max_new_tokens" in message
    assert not (tmp_path / "runs").exists()


def test_a_failed_start_does_not_block_the_corrected_command(invoke_cli, tmp_path):
    output = tmp_path / "run"
    base = ("run", "--dataset", "sample", "--limit", "2", "--reader", "tiny-llama", "--output", str(output))
    code, _, err = invoke_cli(*base, "--reader-args", "max_new_tokens=3,dtype=int3")
    assert code == 2 and "dtype" in one_line_error(err)
    assert not output.exists()
    code, _, err = invoke_cli(*base, "--reader-args", "max_new_tokens=3", "--no-progress")
    assert code == 0, err
    assert len((output / "predictions.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_components_that_describe_themselves_otherwise(tmp_path, plugins):
    """A prompt version (or model) that changed under the same options must not mix into one run's predictions."""
    folder = tmp_path / "run"
    spec = RunSpec(
        "sample",
        "test",
        "none",
        "tiny-llama",
        reader_args={"prompt": "plain", "max_new_tokens": 2},
        limit=3,
        output=folder,
    )
    run(spec, plugins, progress=False, log=lambda message: None)
    (folder / "results.json").unlink()
    lines = (folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "predictions.jsonl").write_text("".join(lines[:1]), encoding="utf-8")
    components = json.loads((folder / "components.json").read_text(encoding="utf-8"))
    components["reader"]["device"] = "cuda:3"  # where it ran: may differ on resume
    (folder / "components.json").write_text(json.dumps(components), encoding="utf-8")
    run(spec, plugins, progress=False, log=lambda message: None)
    assert len((folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 3

    (folder / "results.json").unlink()
    (folder / "predictions.jsonl").write_text("".join(lines[:1]), encoding="utf-8")
    components["reader"]["prompt"]["version"] = "0"
    (folder / "components.json").write_text(json.dumps(components), encoding="utf-8")
    with pytest.raises(RunFolderError, match=r"components.json: .*differs in: reader\.prompt\.version"):
        run(spec, plugins, progress=False, log=lambda message: None)
    assert len((folder / "predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 1
