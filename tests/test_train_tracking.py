"""`iagbench train` (issue 16): --report-to trackers, console lines, --keep-best, continuing to more --steps.

The components are the toys of tests/toy_trainable.py, as in tests/test_train.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.contract.plugins import load_plugins
from iagbench.lm.checkpoints import prune, resolve_checkpoint, write_latest
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "toy_trainable.py"


@pytest.fixture(scope="module")
def toy_plugins():
    return load_plugins(builtins_only=True, plugin_files=(str(TOY),))


def spec(output: Path, **changes) -> TrainSpec:
    values = dict(dataset="sample", imaginer="toy-imaginer", reader="toy-reader", steps=8, batch_size=10, lr=0.05,
                  save_every=4, log_every=2, eval_every=4, eval_split="train", eval_limit=20, output=output)  # fmt: skip
    values.update(changes)
    return TrainSpec(**values)


def quiet(message: str) -> None:
    pass


def test_tensorboard_events_hold_the_logged_scalars_and_do_not_change_the_hash(tmp_path, toy_plugins):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain, _ = train(spec(None, train_dir=tmp_path), toy_plugins, progress=False, log=quiet)
    output, _ = train(
        spec(None, train_dir=tmp_path / "tb", report_to="tensorboard"), toy_plugins, progress=False, log=quiet
    )
    assert output.name == plain.name  # --report-to is not part of the identity
    events = EventAccumulator(str(output / "tensorboard"))
    events.Reload()
    log = read_log(output)
    losses = {r["step"]: r["loss"] for r in log if "loss" in r}
    assert {e.step: e.value for e in events.Scalars("loss")} == pytest.approx(losses, rel=1e-6)
    assert {"lr", "grad_norm", "examples_per_s", "eval_em"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("eval_em")] == [r["step"] for r in log if "eval_em" in r]
    assert all("grad_norm" in r for r in log if "loss" in r)


def test_wandb_offline_writes_under_the_output_folder(tmp_path, toy_plugins, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    output, _ = train(spec(tmp_path / "out", report_to="wandb", steps=4), toy_plugins, progress=False, log=quiet)
    assert list((output / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_missing_tracker_package_is_a_one_line_error(tmp_path, toy_plugins, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find(name, *a))
    with pytest.raises(ConfigurationError, match=r"^--report-to tensorboard: .*pip install") as error:
        train(spec(tmp_path / "out", report_to="tensorboard"), toy_plugins, progress=False, log=quiet)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_console_lines_every_log_step_with_eval_results(tmp_path, toy_plugins, caplog):
    with caplog.at_level(logging.INFO, logger="iagbench.training.tracking"):
        train(spec(tmp_path / "out", steps=4), toy_plugins, progress=False, log=quiet)
    lines = [r.getMessage() for r in caplog.records if r.name == "iagbench.training.tracking"]
    assert lines[0].startswith("step 0: eval_em ")
    assert lines[1].startswith("step 2: loss ") and "lr " in lines[1] and "grad_norm " in lines[1]
    assert lines[-1].startswith("step 4: loss ") and "eval_em" in lines[-1]


def test_keep_best_survives_pruning_and_resume_and_loads_as_a_checkpoint(tmp_path, toy_plugins, invoke_cli):
    output = tmp_path / "out"
    _, summary = train(spec(output, keep=1, keep_best="em", steps=8, save_every=100), toy_plugins, progress=False,
                       log=quiet)  # fmt: skip
    best = summary["best"]
    assert best["metric"] == "eval_em" and best["checkpoint"] == str(output / "checkpoints" / "best")
    evals = {r["step"]: r["eval_em"] for r in read_log(output) if "eval_em" in r and r["step"] > 0}
    assert best["value"] == max(evals.values()) and best["step"] == min(
        s for s, v in evals.items() if v == best["value"]
    )
    step_folder = resolve_checkpoint(output / "checkpoints" / "best")
    assert step_folder.name == f"step-{best['step']:06d}" and step_folder.is_dir()
    state = json.loads((resolve_checkpoint(output) / "trainer_state.json").read_text())
    assert state["best"]["step"] == best["step"]  # what a resume reads
    # pruning never deletes the best
    checkpoints = output / "checkpoints"
    for step in (20, 30):
        (checkpoints / f"step-{step:06d}").mkdir()
    write_latest(checkpoints, "step-000030")
    prune(checkpoints, 1)
    assert step_folder.is_dir() and not (checkpoints / "step-000020").exists()


def test_keep_best_refusals_are_one_line(tmp_path, toy_plugins):
    with pytest.raises(ConfigurationError, match=r"^--keep-best em: needs --eval-every"):
        train(spec(tmp_path / "a", keep_best="em", eval_every=0), toy_plugins, progress=False, log=quiet)
    with pytest.raises(ConfigurationError, match=r"^--keep-best f1: expected"):
        train(spec(tmp_path / "b", keep_best="f1"), toy_plugins, progress=False, log=quiet)
    with pytest.raises(ConfigurationError, match=r"^--report-to nope: expected"):
        train(spec(tmp_path / "c", report_to="nope"), toy_plugins, progress=False, log=quiet)


def test_keep_best_is_restored_on_resume(tmp_path, toy_plugins):
    import shutil

    output, checkpoints = tmp_path / "out", tmp_path / "out" / "checkpoints"
    run = spec(output, keep_best="em", steps=4, eval_every=2, save_every=2, keep=0)
    _, first = train(run, toy_plugins, progress=False, log=quiet)
    named = (checkpoints / "best").read_text()
    # as if the run had stopped after step 2, its best marker (and step 4) lost
    shutil.rmtree(checkpoints / "step-000004")
    write_latest(checkpoints, "step-000002")
    (checkpoints / "best").unlink()
    (output / "log.jsonl").write_text(
        "".join(line + "\n" for line in (output / "log.jsonl").read_text().split("\n")[:2])
    )
    _, again = train(run, toy_plugins, progress=False, log=quiet)
    assert again["step"] == 4 and again["best"] == first["best"] and (checkpoints / "best").read_text() == named


def test_a_constant_schedule_run_continues_to_more_steps_with_its_hash(tmp_path, toy_plugins):
    first, _ = train(spec(None, train_dir=tmp_path, schedule="constant", steps=4, eval_every=0),
                     toy_plugins, progress=False, log=quiet)  # fmt: skip
    digest = json.loads((first / "train_config.json").read_text())["hash"]
    longer, summary = train(spec(None, train_dir=tmp_path, schedule="constant", steps=8, eval_every=0),
                            toy_plugins, progress=False, log=quiet)  # fmt: skip
    assert longer == first and summary["step"] == 8
    config = json.loads((first / "train_config.json").read_text())
    assert config["hash"] == digest and config["identity"]["training"]["steps"] == 4
    assert [e["steps"] for e in config["extensions"]] == [8]
    assert [r["step"] for r in read_log(first)] == [2, 4, 6, 8]
    # the same as training 8 steps at once
    whole, _ = train(spec(tmp_path / "whole", schedule="constant", steps=8, eval_every=0), toy_plugins,
                     progress=False, log=quiet)  # fmt: skip
    assert [r["loss"] for r in read_log(whole)] == pytest.approx([r["loss"] for r in read_log(first)], rel=1e-5)


def test_a_decaying_schedule_refuses_more_steps_in_one_line(tmp_path, toy_plugins):
    output = tmp_path / "out"
    train(spec(output, steps=4, eval_every=0), toy_plugins, progress=False, log=quiet)
    with pytest.raises(RunFolderError, match=r"^--steps 8: .* --schedule linear, whose shape depends") as error:
        train(spec(output, steps=8, eval_every=0), toy_plugins, progress=False, log=quiet)
    assert "\n" not in str(error.value)
