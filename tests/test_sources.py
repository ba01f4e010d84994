"""Content fingerprints of the paths a component's options name, and the run identity that follows them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from iagbench.files.cache import file_sha256
from iagbench.lm.checkpoints import CHECKPOINTS, step_folder_name, write_latest
from iagbench.runs.runner import RunSpec, run
from iagbench.runs.sources import component_identity, path_fingerprint, source_fingerprints

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PASSAGES = REPO / "plugins" / "sample_data" / "passages.jsonl"


def quiet(message: str) -> None:
    pass


def test_options_naming_files_and_folders_are_fingerprinted_by_content(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    corpus.write_text("id\ttext\ttitle\n1\tsome text\tA\n", encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}", encoding="utf-8")
    options = {
        "corpus": str(corpus),
        "bm25.model": model,
        "k": 5,
        "prompt": "short-answer",
        "names": ["x", str(corpus)],
    }
    found = source_fingerprints(options)
    assert found == {
        "corpus": f"sha256:{file_sha256(corpus)}",
        "bm25.model": path_fingerprint(model),
        "names[1]": f"sha256:{file_sha256(corpus)}",
    }
    assert source_fingerprints({"model": "meta-llama/Llama-2-13b-hf", "k": 3, "text": "a\nb", "empty": ""}) == {}
    (model / "config.json").write_text('{"layers": 2}', encoding="utf-8")
    assert path_fingerprint(model) != found["bm25.model"]
    (model / "weights.bin").write_bytes(b"\0")
    with_weights = path_fingerprint(model)
    (model / "weights.bin").rename(model / "other.bin")  # same bytes under another name
    assert path_fingerprint(model) != with_weights
    assert component_identity("bm25", {"k": 3}) == {"name": "bm25", "options": {"k": 3}}  # no paths: no sources key


def test_a_training_output_is_fingerprinted_by_the_checkpoint_latest_names(tmp_path):
    output = tmp_path / "train"
    checkpoints = output / CHECKPOINTS
    for step, weights in ((100, b"first"), (200, b"second")):
        folder = checkpoints / step_folder_name(step)
        folder.mkdir(parents=True)
        (folder / "reader.safetensors").write_bytes(weights)
    write_latest(checkpoints, step_folder_name(100))
    first = path_fingerprint(output)
    assert first.startswith("step-000100 sha256:")
    assert path_fingerprint(checkpoints) == first  # its checkpoints folder names the same checkpoint
    (output / "log.jsonl").write_text('{"step": 150}\n', encoding="utf-8")  # training goes on, latest stays
    assert path_fingerprint(output) == first
    write_latest(checkpoints, step_folder_name(200))
    assert path_fingerprint(output).startswith("step-000200 sha256:")


def test_a_corpus_edited_in_place_makes_another_run_not_the_old_results(echo_plugins, tmp_path):
    corpus = shutil.copy(SAMPLE_PASSAGES, tmp_path / "passages.jsonl")
    spec = RunSpec(
        "sample",
        "test",
        "bm25",
        "echo",
        imaginer_args={"corpus": str(corpus), "k": 2},
        limit=6,
        runs_dir=tmp_path / "runs",
    )
    before, _ = run(spec, echo_plugins, progress=False, log=quiet)
    identity = before.config()["identity"]["imaginer"]
    assert identity["sources"] == {"corpus": f"sha256:{file_sha256(corpus)}"}
    messages: list[str] = []
    again, _ = run(spec, echo_plugins, progress=False, log=messages.append)
    assert again.path == before.path and any("run already finished" in m for m in messages)

    lines = Path(corpus).read_text(encoding="utf-8").splitlines()
    edited = [json.loads(line) for line in lines]
    for passage in edited:
        passage["title"] = "Edited " + passage["title"]
    Path(corpus).write_text("".join(json.dumps(p) + "\n" for p in edited), encoding="utf-8")
    after, _ = run(spec, echo_plugins, progress=False, log=quiet)
    assert after.path != before.path
    titles = [p["title"] for record in after.records() for p in record["context"]["passages"]]
    assert titles and all(title.startswith("Edited ") for title in titles)
    assert not any(p["title"].startswith("Edited ") for r in before.records() for p in r["context"]["passages"])
