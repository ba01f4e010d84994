"""Faults around models: questions longer than a reader's input, bad devices, custom-code folders, an unreachable hub."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from pathlib import Path

import pytest

from iagbench import ConfigurationError, Context, Example
from iagbench.lm.devices import pick_device
from iagbench_plugins.readers.causal_lm import CausalLMReader
from iagbench_plugins.readers.fid import FiDReader
from iagbench_plugins.readers.question_cut import count_tokens, cut_question

SHORT = "who wrote the iliad"
HUGE = ("how many words can a question hold before the reader cuts it " * 20_000)[: 1 << 20]  # 1 MB
MEMORY_LIMIT = 12 << 30  # address space of a run: the uncut 1 MB question asked for far more (attention of 1M tokens)
NOT_RUN = "custom_code_ran"  # the file a custom-code folder's module would write if anything imported it


def error_line(err: str) -> str:
    """The CLI's one error line (and nothing else: no traceback, no retry messages)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("iagbench: error: "), err
    return lines[0]


def run_limited(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 180):
    """Run the `iagbench` script under an address-space limit; return (CompletedProcess, wall seconds)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    started = time.perf_counter()
    result = subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ), preexec_fn=limit
    )
    return result, time.perf_counter() - started


def write_questions(path: Path, questions: list[str]) -> Path:
    path.write_text("".join(json.dumps({"question": q, "answers": ["x"]}) + "\n" for q in questions), encoding="utf-8")
    return path


# ---- 1. questions are cut to the reader's input length ----


def test_cut_question_keeps_a_head_and_records_the_cut():
    reader_tokenizer = CausalLMReader(model="tiny-llama", max_new_tokens=2).tokenizer
    assert cut_question(reader_tokenizer, SHORT, 100) == (SHORT, None)
    kept, record = cut_question(reader_tokenizer, HUGE, 50)
    assert HUGE.startswith(kept) and len(reader_tokenizer(kept, add_special_tokens=False)["input_ids"]) <= 50
    assert record == {"tokens": count_tokens(reader_tokenizer, HUGE), "kept": 50}
    assert record["tokens"] == len(HUGE.encode())  # the byte tokenizer: one token a byte, counted in chunks


@pytest.mark.parametrize(
    ("reader", "make"),
    [
        ("tiny-llama", lambda: CausalLMReader(model="tiny-llama")),
        ("fid-tiny", lambda: FiDReader(model="fid-tiny")),
    ],
)
def test_a_1mb_question_is_cut_to_the_readers_input_and_a_short_one_is_unchanged(iagbench_cli, tmp_path, reader, make):
    questions = write_questions(tmp_path / "questions.jsonl", [SHORT, HUGE])
    output = tmp_path / "run"
    result, seconds = run_limited(
        iagbench_cli, "run", "--dataset", "fid-json", "--dataset-args", f"path={questions}", "--reader", reader,
        "--batch-size", "1", "--no-progress", "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert seconds < 90, seconds
    records = {len(r["question"]): r for r in map(json.loads, (output / "predictions.jsonl").read_text().splitlines())}
    short, huge = records[len(SHORT)], records[len(HUGE)]
    cut = huge["details"]["question_cut"]
    assert cut["tokens"] == len(HUGE.encode()) and 0 < cut["kept"] < cut["tokens"]
    instance = make()
    if reader == "tiny-llama":
        assert cut["kept"] < instance.max_input_tokens and huge["details"]["prompt_tokens"] <= instance.max_input_tokens
    else:
        assert cut["kept"] < instance.text_maxlength and huge["details"]["input_tokens"] <= instance.text_maxlength
    assert "question_cut" not in short.get("details", {})
    alone = instance.answer([Example("s", SHORT, ("x",))], [Context()])[0]
    assert (short["prediction"], short["raw"]) == (str(alone), alone.raw)


def test_causal_lm_short_prompts_are_the_templates_own():
    reader = CausalLMReader(model="tiny-llama", max_new_tokens=2)
    prompt, info = reader.fit(SHORT, [])
    assert prompt == reader.render(SHORT, []) and "question_cut" not in info


def test_causal_lm_cuts_a_long_question_with_passages_too():
    from iagbench import Passage

    reader = CausalLMReader(model="tiny-llama", max_new_tokens=2, max_input_tokens=2000)
    passages = [Passage("some passage text", "Title")]
    closed_book_room = 2000 - reader.count(reader.render("", []))
    assert reader.count(reader.render("", [Passage("", "Title")])) < 2000 - 100  # a short question would get them
    prompt, info = reader.fit(HUGE[:20_000], passages)  # too long for the passages' prompt: the one without them
    assert info["prompt_tokens"] <= 2000 and info["passages_given"] == 1 and info["passages_in_prompt"] == 0
    assert info["question_cut"]["tokens"] == 20_000 and closed_book_room - 4 <= info["question_cut"]["kept"]
    assert prompt == reader.render(HUGE[: info["question_cut"]["kept"]], [])
    fitted = reader.fit(HUGE[:100], passages)[1]
    assert fitted["passages_in_prompt"] == 1 and "question_cut" not in fitted
    with pytest.raises(ConfigurationError, match=r"^reader option max_input_tokens=5: .*template"):
        CausalLMReader(model="tiny-llama", max_new_tokens=2, max_input_tokens=5).fit(SHORT, [])


def test_fid_cuts_a_long_question_before_its_rows_and_leaves_short_ones_alone():
    from iagbench import Passage

    reader = FiDReader(model="fid-tiny", text_maxlength=100)
    passages = (Passage("The Iliad is a poem.", "Iliad"), Passage("Troy is a city.", "Troy"))
    examples = [Example("a", HUGE, ("x",)), Example("b", SHORT, ("x",)), Example("c", HUGE[:5000], ("x",))]
    ids, rows, info = reader.encoder_inputs(examples, [Context(passages), Context(passages), Context()])
    assert rows == [0, 0, 1, 1, 2] and all(len(row) <= 100 for row in ids)
    assert info[0]["question_cut"] == {"tokens": len(HUGE.encode()), "kept": reader.question_room()}
    assert info[0]["passages_cut"] == 2  # the question fills each row: the passages are cut (to nothing)
    assert "question_cut" not in info[1] and info[1]["passages_cut"] == 0
    expected = reader.tokenizer(reader.format.texts(SHORT, passages), add_special_tokens=False)["input_ids"]
    assert ids[2:4] == [row + [reader.eos_id] for row in expected]
    assert info[2]["question_cut"]["tokens"] == 5000 and info[2]["passages_cut"] == 0  # no passage to cut


# ---- 2. devices ----


@pytest.mark.parametrize("device", ["gpu9", "cuda", "cuda:7", "mps"])
def test_unavailable_devices_are_one_line_naming_the_option(device):
    import torch

    if (device == "cuda" and torch.cuda.is_available()) or (device == "cuda:7" and torch.cuda.device_count() > 7):
        pytest.skip("this machine has the GPU asked for")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ConfigurationError, match=rf"^device={device}: .*available here: .*cpu") as caught:
        pick_device(device)
    assert "\n" not in str(caught.value)


def test_available_devices_pass_as_given():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cpu", "cuda")


def test_a_bad_device_on_the_command_line_is_one_line(invoke_cli):
    code, _, err = invoke_cli("run", "--reader", "tiny-llama", "--reader-args", "device=gpu9", "--limit", "1")
    assert code == 2 and "device=gpu9" in error_line(err)


# ---- 3. folders that need custom code ----


def custom_code_folder(root: Path, kind: str) -> Path:
    """A model folder whose config asks for its own code (``auto_map``) or names a model type transformers lacks."""
    folder = root / kind
    folder.mkdir()
    marker = root / NOT_RUN
    (folder / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")
    config: dict = {"model_type": "iagbench-custom-model"}
    if kind == "auto_map":
        config["auto_map"] = {
            "AutoConfig": "modeling_custom.CustomConfig",
            "AutoModel": "modeling_custom.CustomModel",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def sentence_transformers_custom_module(root: Path) -> Path:
    """A sentence-transformers folder whose modules.json names a module class of its own."""
    folder = root / "st_module"
    folder.mkdir()
    (folder / "custom_module.py").write_text(f"open({str(root / NOT_RUN)!r}, 'w').close()\n", encoding="utf-8")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "custom_module.MyModule"}]
    (folder / "modules.json").write_text(json.dumps(modules), encoding="utf-8")
    return folder


@pytest.mark.parametrize("kind", ["auto_map", "unknown_type"])
def test_causal_lm_refuses_a_custom_code_folder_in_one_line(tmp_path, invoke_cli, kind):
    folder = custom_code_folder(tmp_path, kind)
    code, _, err = invoke_cli("run", "--reader", "causal-lm", "--reader-args", f"model={folder}", "--limit", "1")
    line = error_line(err)
    assert code == 2 and str(folder) in line and "custom code, which iagbench does not run" in line
    assert not (tmp_path / NOT_RUN).exists()


@pytest.mark.parametrize("kind", ["auto_map", "unknown_type", "st_module"])
def test_dense_refuses_a_custom_code_folder_in_one_line(tmp_path, kind):
    from iagbench_plugins.retrieval.dense import Encoder

    folder = (
        sentence_transformers_custom_module(tmp_path) if kind == "st_module" else custom_code_folder(tmp_path, kind)
    )
    with pytest.raises(ConfigurationError, match="custom code, which iagbench does not run") as caught:
        Encoder(str(folder), device="cpu")
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)
    assert not (tmp_path / NOT_RUN).exists()


def test_fid_refuses_a_custom_code_folder_in_one_line(tmp_path):
    folder = custom_code_folder(tmp_path, "auto_map")
    with pytest.raises(ConfigurationError, match="custom code, which iagbench does not run") as caught:
        FiDReader(model=str(folder))
    assert "\n" not in str(caught.value)


# ---- 4. no network: a hub id fails fast ----


@pytest.fixture
def unreachable_hub(tmp_path) -> dict[str, str]:
    """The environment of a machine without network: not offline by setting, the hub at a closed loopback port."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf_home"))
    return env


@pytest.mark.parametrize(
    "args",
    [
        ("--reader", "causal-lm", "--reader-args", "model=someone/some-model"),
        ("--reader", "fid-t5", "--reader-args", "model=someone/some-model"),
        ("--imaginer", "dense", "--imaginer-args", "model=someone/some-model,corpus={corpus}", "--reader", "echo"),
    ],
    ids=["causal-lm", "fid-t5", "dense"],
)
def test_a_hub_id_without_network_fails_fast_in_one_line(
    iagbench_cli, tmp_path, unreachable_hub, echo_plugin_file, args
):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "1", "title": "Iliad", "text": "The Iliad is a poem."}) + "\n")
    env = {**unreachable_hub, "IAGBENCH_PLUGINS": str(echo_plugin_file)}
    args = tuple(arg.format(corpus=corpus) for arg in args)
    started = time.perf_counter()
    result = subprocess.run(
        [iagbench_cli, "run", *args, "--limit", "1", "--no-progress", "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    line = error_line(result.stderr)
    assert result.returncode == 2 and seconds < 30, (result.returncode, seconds)
    assert "someone/some-model" in line and "cannot be reached" in line
    assert "HF_HUB_OFFLINE=1" in line and "folder" in line
