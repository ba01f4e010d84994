"""Faults around training folders: secrets kept out of env.json, no pickle read on resume (planted ones run no
code), damaged checkpoints passed over for the one before (a one-line warning) or a one-line error, broken weights
given as ``checkpoint=``, and option values no training can have.

The toys of tests/toy_trainable.py train in seconds; `uninterrupted` is one run of 6 steps with checkpoints at
steps 2, 4 and 6, and a damaged copy of it cut back to step 4 must resume to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from test_train import (  # noqa: F401  (toy_plugins is a fixture)
    BIN,
    TOY,
    ZERO2,
    assert_same_weights,
    failure_excerpt,
    free_port,
    needs_deepspeed,
    remove_deepspeed_shm,
    subprocess_env,
    toy_plugins,
)
from test_train import spec as train_spec

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.lm.checkpoints import load_trainable
from iagbench.runs.env import REDACTED, recorded_variables
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.state import Saved, read_state
from iagbench.training.train import train

SECRETS = {"HF_TOKEN": "hf_SECRETtoken0123456789", "IAGBENCH_API_KEY": "sk-SECRETkey9876543210"}
STEPS, SAVE_EVERY = 6, 2
TRAIN_ARGS = (  # the command-line twin of spec() below
    "--imaginer", "toy-imaginer", "--reader", "toy-reader", "--steps", str(STEPS), "--grad-accum", "2",
    "--lr", "0.05", "--warmup-steps", "2", "--save-every", str(SAVE_EVERY), "--log-every", "1", "--no-progress",
)  # fmt: skip
ACCELERATE_PICKLES = ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scaler.pt")


def spec(output: Path, **changes) -> TrainSpec:
    """test_train's toy training, checkpointing every SAVE_EVERY steps, without evaluation."""
    return train_spec(output, **{"save_every": SAVE_EVERY, "eval_every": 0, **changes})


def holding(folder: Path, values) -> list[str]:
    """Files under ``folder`` whose bytes contain any of ``values``."""
    return [
        str(path)
        for path in folder.rglob("*")
        if path.is_file() and any(value.encode() in path.read_bytes() for value in values)
    ]


@contextlib.contextmanager
def resume_warnings():
    """The warnings of the resume (the CLI's logging configuration keeps them from pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("iagbench.training.resume")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


class Planted:
    """Unpickling it runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(state: Path, marker: Path) -> list[Path]:
    """A code-running pickle in every pickle-ish file of ``state`` and at each name accelerate's state had."""
    targets = {path for path in state.rglob("*") if path.suffix in (".pkl", ".bin", ".pt", ".pth")}
    targets |= {state / name for name in ACCELERATE_PICKLES}
    for path in targets:
        path.write_bytes(pickle.dumps(Planted(marker)))
    return sorted(targets)


def cut_back(source: Path, target: Path, step: int) -> Path:
    """A copy of the training folder ``source`` as if killed after its checkpoint at ``step``."""
    shutil.copytree(source, target)
    checkpoints = target / "checkpoints"
    for folder in checkpoints.glob("step-*"):
        if int(folder.name.split("-")[1]) > step:
            shutil.rmtree(folder)
    (checkpoints / "latest").write_text(f"step-{step:06d}\n")
    return target


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_plugins) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "out"
    train(spec(output), toy_plugins, progress=False, log=lambda message: None)
    return output


def resume(output: Path, toy_plugins) -> tuple[list[str], list[str]]:
    """Train ``output`` to the end; its info messages and the resume's warnings."""
    messages: list[str] = []
    with resume_warnings() as records:
        train(spec(output), toy_plugins, progress=False, log=messages.append)
    return messages, [record.getMessage() for record in records]


def assert_ends_like(output: Path, uninterrupted: Path) -> None:
    log = read_log(output)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in read_log(uninterrupted)], rel=1e-6)
    assert_same_weights(output, uninterrupted, atol=1e-6)


# ---- secrets ----


def test_variables_that_name_a_secret_are_recorded_without_their_value():
    environ = {
        "HF_TOKEN": "a",
        "HF_HUB_OFFLINE": "1",
        "IAGBENCH_API_KEY": "b",
        "IAGBENCH_db_Password": "c",
        "HF_CREDENTIALS_FILE": "d",
        "IAGBENCH_SECRET": "e",
        "IAGBENCH_CACHE": "/cache",
        "AWS_SECRET_ACCESS_KEY": "f",  # not recorded at all
    }
    assert recorded_variables(environ) == {
        "HF_TOKEN": REDACTED,
        "HF_HUB_OFFLINE": "1",
        "IAGBENCH_API_KEY": REDACTED,
        "IAGBENCH_db_Password": REDACTED,
        "HF_CREDENTIALS_FILE": REDACTED,
        "IAGBENCH_SECRET": REDACTED,
        "IAGBENCH_CACHE": "/cache",
    }


def test_no_secret_reaches_a_run_folder_or_a_training_folder(cli, echo_plugin_file, tmp_path):
    run_dir, train_dir = tmp_path / "run", tmp_path / "trained"
    result = cli(
        "run", "--dataset", "sample", "--imaginer", "none", "--reader", "echo", "--limit", "4", "--no-progress",
        "--output", str(run_dir), env={"IAGBENCH_PLUGINS": str(echo_plugin_file), **SECRETS},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    args = [
        str(BIN / "iagbench"),
        "train",
        *TRAIN_ARGS,
        "--steps",
        "2",
        "--batch-size",
        "10",
        "--output",
        str(train_dir),
    ]
    result = subprocess.run(args, env=subprocess_env(**SECRETS), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for folder in (run_dir, train_dir):
        assert holding(folder, SECRETS.values()) == []
        recorded = json.loads((folder / "env.json").read_text())["env"]
        assert {name: recorded[name] for name in SECRETS} == dict.fromkeys(SECRETS, REDACTED)
        assert recorded["HF_HUB_OFFLINE"] == "1"  # what is no secret is still recorded


# ---- no pickles ----


def test_the_planted_pickle_runs_code_when_unpickled(tmp_path):
    """The attack the resume tests plant is real: plain unpickling runs it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Planted(marker)))
    assert marker.exists()


def test_pickles_planted_in_a_checkpoint_run_no_code_and_the_resume_is_exact(tmp_path, uninterrupted, toy_plugins):
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    state = output / "checkpoints" / "step-000004" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.safetensors", "resume.json", "rng_0.safetensors"]
    marker = tmp_path / "ran"
    assert len(plant(state, marker)) == len(ACCELERATE_PICKLES)
    messages, warnings = resume(output, toy_plugins)
    assert not marker.exists()
    assert warnings == [] and any("from step-000004 (step 4 of 6)" in m for m in messages)
    assert_ends_like(output, uninterrupted)
    saved = output / "checkpoints" / "step-000006" / "state"
    assert not [p for p in saved.rglob("*") if p.suffix in (".pkl", ".bin", ".pt")]  # and none is written


def to_accelerate_format(checkpoint: Path) -> None:
    """Rewrite a checkpoint's state as older iagbench versions saved it (accelerate's torch.save files)."""
    import torch

    saved = Saved(4, 1, scheduler={})
    read_state(checkpoint, saved, 0, deepspeed=False)
    state = checkpoint / "state"
    torch.save(saved.optimizer, state / "optimizer.bin")
    torch.save(saved.scheduler, state / "custom_checkpoint_0.pkl")
    rng = saved.rng
    states = {
        "step": 0,
        "random_state": rng["python"],
        "numpy_random_seed": rng["numpy"],
        "torch_manual_seed": rng["torch"],
    }
    torch.save(states, state / "random_states_0.pkl")
    for name in ("optimizer.safetensors", "resume.json", "rng_0.safetensors"):
        (state / name).unlink()


def test_a_checkpoint_of_an_older_version_resumes_through_weights_only_loading(tmp_path, uninterrupted, toy_plugins):
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    to_accelerate_format(output / "checkpoints" / "step-000004")
    messages, warnings = resume(output, toy_plugins)
    assert warnings == [] and any("from step-000004" in m for m in messages)
    assert_ends_like(output, uninterrupted)


def test_pickles_planted_in_an_older_checkpoint_are_refused_and_the_one_before_is_used(
    tmp_path, uninterrupted, toy_plugins
):
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    to_accelerate_format(output / "checkpoints" / "step-000004")
    marker = tmp_path / "ran"
    plant(output / "checkpoints" / "step-000004" / "state", marker)
    messages, warnings = resume(output, toy_plugins)
    assert not marker.exists()
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "step-000004 does not load (state/custom_checkpoint_0.pkl: Weights only load failed" in warnings[0]
    assert any("from step-000002 (step 2 of 6)" in m for m in messages)
    assert_ends_like(output, uninterrupted)


@needs_deepspeed
def test_pickles_planted_in_deepspeed_state_run_no_code(tmp_path, request):
    """DeepSpeed's own shards (pickles) are written but never read: the resume re-shards from safetensors."""
    ports: list[int] = []
    request.addfinalizer(lambda: remove_deepspeed_shm(ports))

    def launch(output: Path) -> None:
        ports.append(free_port())
        args = [str(BIN / "iagbench"), "train", *TRAIN_ARGS, "--steps", "4", "--batch-size", "10"]
        args += ["--deepspeed", str(ZERO2), "--output", str(output)]
        result = subprocess.run(
            args, env=subprocess_env(MASTER_PORT=str(ports[-1])), capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, failure_excerpt(result.stderr)

    whole = tmp_path / "whole"
    launch(whole)
    output = cut_back(whole, tmp_path / "out", 2)
    marker = tmp_path / "ran"
    planted = plant(output / "checkpoints" / "step-000002" / "state", marker)
    assert any(path.name.endswith("optim_states.pt") for path in planted)  # DeepSpeed's ZeRO shard
    launch(output)
    assert not marker.exists()
    assert [r["loss"] for r in read_log(output)] == pytest.approx([r["loss"] for r in read_log(whole)], rel=1e-6)
    assert_same_weights(output, whole, atol=1e-6)


# ---- damaged checkpoints ----


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def reshape_moments(path: Path) -> None:
    """The optimizer state, each moment replaced by one of another shape."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file({k: v if k.endswith(".step") else torch.zeros(3, 1) for k, v in tensors.items()}, str(path))


DAMAGE = {
    "optimizer cut short": ("state/optimizer.safetensors", truncate, "state/optimizer.safetensors: "),
    "resume state not JSON": ("state/resume.json", lambda p: p.write_text("{not json"), "state/resume.json: "),
    "resume state missing": ("state/resume.json", Path.unlink, "state/resume.json: missing"),
    "RNG states empty": ("state/rng_0.safetensors", lambda p: p.write_bytes(b""), "state/rng_0.safetensors: "),
    "weights cut short": ("reader.safetensors", truncate, "reader.safetensors: not a readable safetensors file"),
    "weights missing": ("imaginer.safetensors", Path.unlink, "imaginer.safetensors: missing"),
    "trainer state garbage": ("trainer_state.json", lambda p: p.write_bytes(b"\x00\xff"), "trainer_state.json: "),
    "moments of other shapes": ("state/optimizer.safetensors", reshape_moments, "state/optimizer.safetensors: 0."),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_checkpoint_is_passed_over_for_the_one_before(tmp_path, uninterrupted, toy_plugins, damage):
    name, spoil, reason = damage
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    spoil(output / "checkpoints" / "step-000004" / name)
    messages, warnings = resume(output, toy_plugins)
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert warnings[0].startswith(f"checkpoint {output / 'checkpoints' / 'step-000004'} does not load ({reason}")
    assert warnings[0].endswith("; trying the one before it")
    assert any("from step-000002 (step 2 of 6)" in m for m in messages)
    assert_ends_like(output, uninterrupted)


def test_a_damaged_latest_marker_falls_back_to_the_checkpoint_folders(tmp_path, uninterrupted, toy_plugins):
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    (output / "checkpoints" / "latest").write_bytes(b"\x89garb\nage\xff" * 40)
    messages, warnings = resume(output, toy_plugins)
    assert len(warnings) == 1 and "\n" not in warnings[0] and len(warnings[0]) < 400, warnings
    assert warnings[0].endswith("which is not a checkpoint folder next to it; trying the checkpoint folders beside it")
    assert any("from step-000004" in m for m in messages)
    assert_ends_like(output, uninterrupted)

    for folder in (output / "checkpoints").glob("step-*"):
        shutil.rmtree(folder)
    (output / "checkpoints" / "latest").write_text("step-000009\n")
    with pytest.raises(RunFolderError, match=r"no checkpoint loads \(there is none beside latest\); move the folder"):
        resume(output, toy_plugins)


def test_when_no_checkpoint_loads_the_error_is_one_line(tmp_path, uninterrupted, invoke_cli):
    output = cut_back(uninterrupted, tmp_path / "out", 4)
    (output / "checkpoints" / "step-000004" / "state" / "resume.json").write_text("[]")
    truncate(output / "checkpoints" / "step-000002" / "imaginer.safetensors")
    code, _, err = invoke_cli("train", *TRAIN_ARGS, "--batch-size", "10", "--output", str(output), plugin_files=(TOY,))
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("iagbench: error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    assert f"{output / 'checkpoints'}: no checkpoint loads (step-000004: state/resume.json: " in errors[0]
    assert "; step-000002: imaginer.safetensors: not a readable safetensors file" in errors[0]
    assert "Traceback" not in err


def test_processes_agree_on_the_checkpoint_when_only_one_cannot_load_it(tmp_path):
    """Under torchrun, rank 1's RNG states of step 4 are garbage: both processes resume from step 2."""

    def launch(output: Path) -> str:
        args = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master-port", str(free_port())]
        args += [str(BIN / "iagbench"), "train", *TRAIN_ARGS, "--batch-size", "5", "--output", str(output)]
        result = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, failure_excerpt(result.stderr)
        return result.stderr

    whole = tmp_path / "whole"
    launch(whole)
    output = cut_back(whole, tmp_path / "out", 4)
    (output / "checkpoints" / "step-000004" / "state" / "rng_1.safetensors").write_bytes(b"garbage")
    err = launch(output)
    assert err.count("does not load") == 1 and "(state/rng_1.safetensors: " in err, err
    assert "from step-000002 (step 2 of 6) with 2 process(es)" in err
    assert [r["loss"] for r in read_log(output)] == pytest.approx([r["loss"] for r in read_log(whole)], rel=1e-6)
    assert_same_weights(output, whole, atol=1e-6)


# ---- checkpoint= of a component ----


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 64, b"not safetensors at all, but long enough to have a header length", None],
    ids=["empty", "zeros", "text", "cut-short"],
)
def test_a_broken_weights_file_given_as_checkpoint_is_one_line_naming_it(tmp_path, uninterrupted, invoke_cli, content):
    folder = tmp_path / "checkpoint"
    shutil.copytree(uninterrupted / "checkpoints" / "step-000006", folder)
    file = folder / "reader.safetensors"
    if content is None:
        truncate(file)
    else:
        file.write_bytes(content)
    code, _, err = invoke_cli(
        "run", "--dataset", "sample", "--split", "train", "--limit", "4", "--no-progress",
        "--imaginer", "toy-imaginer", "--imaginer-args", f"checkpoint={folder}",
        "--reader", "toy-reader", "--reader-args", f"checkpoint={folder}", "--output", str(tmp_path / "run"),
        plugin_files=(TOY,),
    )  # fmt: skip
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith(f"iagbench: error: {file}: not a readable safetensors file ("), err


def test_load_trainable_names_a_broken_file(tmp_path, uninterrupted):
    import sys

    sys.path.insert(0, str(TOY.parent))
    try:
        import toy_trainable
    finally:
        sys.path.remove(str(TOY.parent))
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "reader.safetensors").write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"reader.safetensors: not a readable safetensors file \(.*header"):
        load_trainable(toy_trainable.ToyReader(), folder, "reader")


# ---- option values ----


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--lr", "nan"), "--lr nan: expected a finite number above 0"),
        (("--lr", "inf"), "--lr inf: expected a finite number above 0"),
        (("--lr=-0.1",), "--lr -0.1: expected a finite number above 0"),
        (("--weight-decay", "nan"), "--weight-decay nan: expected a finite number of 0 or more"),
        (("--weight-decay=-1",), "--weight-decay -1.0: expected a finite number of 0 or more"),
        (("--max-grad-norm", "inf"), "--max-grad-norm inf: expected a finite number of 0 or more"),
        (("--epochs", "nan"), "--epochs nan: expected a finite number above 0"),
        (("--teacher-reader", "toy-reader", "--alpha", "nan"), "--alpha nan: expected a number between 0 and 1"),
        (("--teacher-reader", "toy-reader", "--alpha", "1.5"), "--alpha 1.5: expected a number between 0 and 1"),
        (("--teacher-reader", "toy-reader", "--temperature", "inf"), "--temperature inf: expected a finite number"),
        (("--teacher-reader", "toy-reader", "--temperature", "0"), "--temperature 0.0: expected a finite number"),
        (("--teacher-reader", "toy-reader", "--hidden-weight", "nan"), "--hidden-weight nan: expected a finite"),
        (("--teacher-reader", "toy-reader", "--attention-weight=-1"), "--attention-weight -1.0: expected a finite"),
    ],
)
def test_float_options_no_training_can_have_are_one_line_errors(tmp_path, invoke_cli, args, message):
    output = tmp_path / "out"
    base = ["train", "--imaginer", "toy-imaginer", "--reader", "toy-reader", "--no-progress", "--output", str(output)]
    code, _, err = invoke_cli(*base, *([] if "--epochs" in args else ["--steps", "2"]), *args, plugin_files=(TOY,))
    assert code == 2, err
    assert err.startswith("iagbench: error: ") and err.count("\n") == 1 and message in err, err
    assert not output.exists()
