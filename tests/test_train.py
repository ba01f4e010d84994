"""`iagbench train`: learning, evaluation, checkpoints, kill -9 and resume, refusals, loading for runs,
and the same training under torchrun (DDP, gloo) and DeepSpeed ZeRO-2 with two CPU processes.

The components are the toys of tests/toy_trainable.py (a hashed-words "hypernetwork" imaginer and a
linear-head reader); one HyperLoRA + tiny-llama test checks the real pair end to end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trends import assert_falls

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.contract.plugins import load_plugins
from iagbench.lm.checkpoints import load_trainable, resolve_checkpoint
from iagbench.training.distributed import read_deepspeed_config
from iagbench.training.folder import read_log
from iagbench.training.objective import lr_scheduler
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train

REPO = Path(__file__).resolve().parents[1]
TOY = REPO / "tests" / "toy_trainable.py"
ZERO2 = REPO / "configs" / "deepspeed" / "zero2.json"
BIN = Path(sys.executable).parent

# The reference configuration: 6 steps of 2 micro-batches of 10 examples (one process), or of 5 per
# process with two processes: the same examples per optimizer step either way.
STEPS, ACCUM, EXAMPLES_PER_MICRO = 6, 2, 10
COMMON = (
    "--imaginer",
    "toy-imaginer",
    "--reader",
    "toy-reader",
    "--steps",
    str(STEPS),
    "--grad-accum",
    str(ACCUM),
    "--lr",
    "0.05",
    "--warmup-steps",
    "2",
    "--save-every",
    "3",
    "--log-every",
    "1",
    "--eval-every",
    "3",
    "--eval-split",
    "train",
    "--eval-limit",
    "20",
    "--no-progress",
)


def spec(output: Path, **changes) -> TrainSpec:
    """The in-process twin of COMMON, one process."""
    values = dict(
        dataset="sample",
        imaginer="toy-imaginer",
        reader="toy-reader",
        steps=STEPS,
        grad_accum=ACCUM,
        batch_size=EXAMPLES_PER_MICRO,
        lr=0.05,
        warmup_steps=2,
        save_every=3,
        log_every=1,
        eval_every=3,
        eval_split="train",
        eval_limit=20,
        output=output,
    )
    values.update(changes)
    return TrainSpec(**values)


def weights(output: Path, role: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(resolve_checkpoint(output) / f"{role}.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float, roles: tuple[str, ...] = ("imaginer", "reader")) -> None:
    import torch

    for role in roles:
        wa, wb = weights(a, role), weights(b, role)
        assert sorted(wa) == sorted(wb)
        for key in wa:
            assert torch.allclose(wa[key], wb[key], atol=atol, rtol=0), (role, key, (wa[key] - wb[key]).abs().max())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "IAGBENCH_PLUGINS": str(TOY), "OMP_NUM_THREADS": "1", **extra}


def wait_for_step(output: Path, step: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until log.jsonl has a line for ``step`` (the process then blocks in the toy reader's loss)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(record.get("step") == step for record in _read_log_lenient(output)):
            return
        if process.poll() is not None:
            output_text = (process.stderr or process.stdout).read()
            pytest.fail(f"training exited early ({process.returncode}): {failure_excerpt(output_text)}")
        time.sleep(0.2)
    pytest.fail(f"no step {step} in {output / 'log.jsonl'} after {timeout}s")


def _read_log_lenient(output: Path) -> list[dict]:
    path = output / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def failure_excerpt(output: str) -> str:
    """The tracebacks of a failed launch (every rank's), else its tail."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if "Traceback" in line]
    if not starts:
        return "\n".join(lines[-60:])
    return "\n".join(line for start in starts for line in lines[start : start + 40])


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the process and everything it started (a launcher's workers: torchrun starts each in a session
    of its own, which killing the launcher's process group does not reach)."""
    import psutil

    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def toy_plugins():
    return load_plugins(builtins_only=True, plugin_files=(str(TOY),))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_plugins) -> Path:
    """The reference configuration trained without interruption in this process."""
    output = tmp_path_factory.mktemp("reference") / "out"
    train(spec(output), toy_plugins, progress=False, log=lambda message: None)
    return output


def test_lr_schedules_are_transformers_schedules():
    import torch
    from transformers import get_scheduler

    for ours, theirs in (("linear", "linear"), ("cosine", "cosine"), ("constant", "constant_with_warmup")):
        optimizers = [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1) for _ in range(2)]
        a = lr_scheduler(optimizers[0], ours, 3, 10)
        b = get_scheduler(theirs, optimizers[1], num_warmup_steps=3, num_training_steps=10)
        for _ in range(12):
            assert a.get_last_lr() == pytest.approx(b.get_last_lr(), abs=1e-12)
            optimizers[0].step(), optimizers[1].step(), a.step(), b.step()


def test_training_learns_evaluates_checkpoints_and_a_run_loads_it(tmp_path, toy_plugins, invoke_cli):
    output = tmp_path / "out"
    messages = []
    folder, summary = train(
        spec(output, steps=40, save_every=20, eval_every=20, eval_limit=50, log_every=5, keep=1, grad_accum=1),
        toy_plugins,
        progress=False,
        log=messages.append,
    )
    assert folder == output and summary["step"] == 40
    log = read_log(output)
    assert [r["step"] for r in log] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    evals = {r["step"]: r["eval_em"] for r in log if "eval_em" in r}
    assert set(evals) == {0, 20, 40} and all(r["eval_n"] == 50 for r in log if "eval_em" in r)
    assert evals[0] < 10 and evals[40] >= 90, evals  # it learns the train questions
    losses = [r["loss"] for r in log if "loss" in r]
    assert_falls(losses, to=1 / 3)
    assert log[1]["lr"] == pytest.approx(0.05 * 36 / 38)  # the lr of step 5: 2 warm-up steps, then 2 of 38 decaying

    # keep=1: only the last checkpoint, named by latest; only trainable weights, plus resume state
    checkpoints = output / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000040"]
    assert (checkpoints / "latest").read_text() == "step-000040\n"
    final = checkpoints / "step-000040"
    assert {"config.json", "trainer_state.json", "imaginer.safetensors", "reader.safetensors", "state"} <= {
        p.name for p in final.iterdir()
    }
    assert set(weights(output, "imaginer")) == {"0.weight", "0.bias", "prepared_on"}
    assert set(weights(output, "reader")) == {"weight", "bias"}
    assert float(weights(output, "imaginer")["prepared_on"]) == 50  # prepare() saw every training example
    config = json.loads((final / "config.json").read_text())
    assert (
        config["step"] == 40
        and config["imaginer"]["name"] == "toy-imaginer"
        and config["reader"]["weights"] == "reader.safetensors"
    )
    train_config = json.loads((output / "train_config.json").read_text())
    assert train_config["identity"]["training"]["steps"] == 40
    assert train_config["identity"]["dataset"]["n"] == 50
    assert (output / "env.json").is_file()

    # a run loads the trained weights through checkpoint=DIR (latest) and scores what evaluation logged
    run_dir = tmp_path / "run"
    code, _, err = invoke_cli(
        "run",
        "--dataset",
        "sample",
        "--split",
        "train",
        "--limit",
        "50",
        "--metrics",
        "em",
        "--no-progress",
        "--imaginer",
        "toy-imaginer",
        "--imaginer-args",
        f"checkpoint={output}",
        "--reader",
        "toy-reader",
        "--reader-args",
        f"checkpoint={final}",
        "--output",
        str(run_dir),
        plugin_files=(TOY,),
    )
    assert code == 0, err
    assert json.loads((run_dir / "results.json").read_text())["metrics"]["em"] == pytest.approx(evals[40])
    assert json.loads((run_dir / "components.json").read_text())["imaginer"]["checkpoint"] == str(final)

    # the same command again: finished, nothing recomputed
    before = (final / "trainer_state.json").stat().st_mtime_ns, (output / "log.jsonl").read_text()
    messages.clear()
    train(
        spec(output, steps=40, save_every=20, eval_every=20, eval_limit=50, log_every=5, keep=1, grad_accum=1),
        toy_plugins,
        progress=False,
        log=messages.append,
    )
    assert messages and messages[0].startswith("training already finished")
    assert ((final / "trainer_state.json").stat().st_mtime_ns, (output / "log.jsonl").read_text()) == before

    # another configuration on the same output is refused
    with pytest.raises(RunFolderError, match=r"another training configuration \(differs in: training.lr\)"):
        train(
            spec(
                output,
                steps=40,
                save_every=20,
                eval_every=20,
                eval_limit=50,
                log_every=5,
                keep=1,
                grad_accum=1,
                lr=0.01,
            ),
            toy_plugins,
            progress=False,
            log=messages.append,
        )


def test_kill_9_then_the_same_command_resumes_where_the_checkpoint_left_off(tmp_path, reference):
    """Killed in step 5 (checkpoint at step 3): the rerun continues at step 4 and ends where an uninterrupted run does."""
    output = tmp_path / "out"
    args = [str(BIN / "iagbench"), "train", *COMMON, "--batch-size", str(EXAMPLES_PER_MICRO), "--output", str(output)]
    first = subprocess.Popen(
        args,
        env=subprocess_env(TOY_STALL_AFTER_LOSS_CALLS=str(4 * ACCUM)),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_step(output, 4, first)
    finally:
        kill_group(first)
    killed_log = read_log(output)
    assert [r["step"] for r in killed_log] == [0, 1, 2, 3, 4]
    assert (output / "checkpoints" / "latest").read_text().strip() == "step-000003"
    (output / "checkpoints" / "step-000006.tmp").mkdir()  # as if killed while writing a checkpoint

    second = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stderr and "from step-000003 (step 3 of 6)" in second.stderr
    log = read_log(output)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6]  # continues after step 3; step 4 redone, once
    assert log[:4] == killed_log[:4]
    assert log[4]["loss"] == pytest.approx(killed_log[4]["loss"], rel=1e-6)  # the curve continues, same data and state
    assert [r["loss"] for r in log[1:]] == pytest.approx([r["loss"] for r in read_log(reference)[1:]], rel=1e-5)
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["latest", "step-000003", "step-000006"]
    assert json.loads((output / "env.json").read_text())["resumed"]
    assert_same_weights(output, reference, atol=1e-6)


def remove_deepspeed_shm(ports: list[int]) -> None:
    """DeepSpeed's CPU all-reduce leaves two 66 MiB shared-memory buffers per launch, named by port: remove ours."""
    for port in ports:
        for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            path.unlink(missing_ok=True)


needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None or not (BIN / "deepspeed").is_file(),
    reason="deepspeed is not installed",
)


@needs_deepspeed
def test_deepspeed_zero2_two_cpu_processes_train_resume_and_a_run_loads_it(tmp_path, reference, invoke_cli, request):
    """`deepspeed --num_gpus 2` (CPU, gloo): killed after step 4, resumed with each rank's ZeRO-2 optimizer shard,
    ends with the weights of the one-process reference; a single-process run loads the checkpoint."""
    output = tmp_path / "out"
    ports = []
    request.addfinalizer(lambda: remove_deepspeed_shm(ports))

    def launch(**env):
        ports.append(free_port())
        args = [
            str(BIN / "deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(ports[-1]),
            str(BIN / "iagbench"),
            "train",
            *COMMON,
            "--batch-size",
            str(EXAMPLES_PER_MICRO // 2),
            "--output",
            str(output),
            "--deepspeed",
            str(ZERO2),
        ]
        return subprocess.Popen(
            args,
            env=subprocess_env(**env),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    first = launch(TOY_STALL_AFTER_LOSS_CALLS=str(4 * ACCUM))
    try:
        wait_for_step(output, 4, first, timeout=300)
    finally:
        kill_group(first)
    assert (output / "checkpoints" / "latest").read_text().strip() == "step-000003"
    second = launch()
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, failure_excerpt(out)
    assert "from step-000003 (step 3 of 6)" in out
    # the killed launch leaves its all-reduce buffers in /dev/shm; one that ends removes its own
    assert list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{ports[0]}_*"))
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{ports[1]}_*"))

    config = json.loads((output / "train_config.json").read_text())
    assert config["identity"]["training"]["deepspeed"]["zero_optimization"]["stage"] == 2
    assert config["identity"]["training"]["global_batch"] == EXAMPLES_PER_MICRO * ACCUM
    assert config["execution"] == {
        "processes": 2,
        "batch_size": EXAMPLES_PER_MICRO // 2,
        "grad_accum": ACCUM,
        "global_batch": EXAMPLES_PER_MICRO * ACCUM,
        "gradient_checkpointing": False,
    }
    state = output / "checkpoints" / "step-000006" / "state"
    shards = sorted(p.name for p in state.rglob("*optim_states.pt"))
    assert len(shards) == 2 and any("rank_1" in name for name in shards), shards  # partitioned optimizer state
    log = read_log(output)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log[1:]] == pytest.approx([r["loss"] for r in read_log(reference)[1:]], rel=1e-4)
    assert_same_weights(output, reference, atol=1e-5)

    run_dir = tmp_path / "run"
    code, _, err = invoke_cli(
        "run",
        "--dataset",
        "sample",
        "--split",
        "train",
        "--limit",
        "20",
        "--metrics",
        "em",
        "--no-progress",
        "--imaginer",
        "toy-imaginer",
        "--imaginer-args",
        f"checkpoint={output}",
        "--reader",
        "toy-reader",
        "--reader-args",
        f"checkpoint={output}",
        "--output",
        str(run_dir),
        plugin_files=(TOY,),
    )
    assert code == 0, err
    assert json.loads((run_dir / "results.json").read_text())["metrics"]["em"] == pytest.approx(log[-1]["eval_em"])


def test_torchrun_two_cpu_processes_average_gradients_like_one_process(tmp_path, reference):
    """DDP over gloo: each process takes its half of every micro-batch; the result is the one-process reference."""
    output = tmp_path / "out"
    args = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master-port",
        str(free_port()),
        str(BIN / "iagbench"),
        "train",
        *COMMON,
        "--batch-size",
        str(EXAMPLES_PER_MICRO // 2),
        "--output",
        str(output),
    ]
    result = subprocess.run(args, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, failure_excerpt(result.stderr)
    assert result.stdout.count('"output":') == 1  # one summary: from the main process only
    assert json.loads(result.stdout[result.stdout.index("{\n") :])["step"] == STEPS
    assert json.loads((output / "train_config.json").read_text())["execution"]["processes"] == 2
    assert [r["loss"] for r in read_log(output)[1:]] == pytest.approx(
        [r["loss"] for r in read_log(reference)[1:]], rel=1e-5
    )
    assert_same_weights(output, reference, atol=1e-5)


@pytest.mark.parametrize("progress", [True, False])
def test_the_libraries_progress_bars_follow_progress_while_components_load(
    tmp_path, toy_plugins, monkeypatch, progress
):
    """As `iagbench run`: without progress, transformers' "Loading weights" bar is off while the components build
    (what `library_progress_bars` does is tested in tests/test_start_up.py)."""
    import iagbench.training.build as build

    seen: list[bool] = []
    real = build.library_progress_bars
    monkeypatch.setattr(build, "library_progress_bars", lambda enabled: seen.append(enabled) or real(enabled))
    train(spec(tmp_path / "out", steps=1, eval_every=0), toy_plugins, progress=progress, log=lambda message: None)
    assert seen == [progress]


def test_only_the_reader_trains_and_the_imaginer_checkpoint_is_refused(tmp_path, toy_plugins, invoke_cli):
    output = tmp_path / "out"
    train(
        spec(output, steps=2, eval_every=0, imaginer_args={"trainable": False}),
        toy_plugins,
        progress=False,
        log=lambda message: None,
    )
    final = output / "checkpoints" / "step-000002"
    assert (final / "reader.safetensors").is_file() and not (final / "imaginer.safetensors").exists()
    assert json.loads((final / "config.json").read_text())["imaginer"]["weights"] is None
    code, _, err = invoke_cli(
        "run",
        "--dataset",
        "sample",
        "--split",
        "train",
        "--limit",
        "4",
        "--metrics",
        "em",
        "--no-progress",
        "--imaginer",
        "toy-imaginer",
        "--imaginer-args",
        f"checkpoint={output}",
        "--reader",
        "toy-reader",
        "--output",
        str(tmp_path / "run"),
        plugin_files=(TOY,),
    )
    assert code == 2 and err.count("\n") == 1
    assert f"checkpoint {final} has no imaginer.safetensors (it holds reader.safetensors)" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--imaginer-args", "trainable=false", "--reader-args", "trainable=false"),
            "nothing to train: neither imaginer 'toy-imaginer' nor reader 'toy-reader' has trainable parts",
        ),
        (("--reader", "toy-frozen-reader"), "reader 'toy-frozen-reader' cannot compute a training loss"),
        (("--batch-size", "60"), "50 training examples make no batch of 60 x 1 processes"),
        (("--eval-every", "2"), "dataset 'sample' has no split 'dev'"),
        (("--grad-accum", "0"), "--grad-accum 0: expected a positive integer"),
        (("--deepspeed", "missing.json"), "--deepspeed missing.json: no such file"),
    ],
)
def test_refusals_are_one_line_and_leave_nothing_behind(tmp_path, invoke_cli, args, message):
    output = tmp_path / "out"
    base = [
        "train",
        "--imaginer",
        "toy-imaginer",
        "--reader",
        "toy-reader",
        "--steps",
        "2",
        "--no-progress",
        "--output",
        str(output),
    ]
    code, _, err = invoke_cli(*base, *args, plugin_files=(TOY,))
    assert code == 2, err
    assert err.startswith("iagbench: error: ") and err.count("\n") == 1 and message in err, err
    assert not output.exists()


def test_deepspeed_config_may_not_set_the_optimizer(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigurationError, match="remove the 'optimizer' section"):
        read_deepspeed_config(path)
    assert read_deepspeed_config(ZERO2)["zero_optimization"]["stage"] == 2


def test_load_trainable_checks_keys_and_shapes(tmp_path, reference):
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(TOY.parent))
    try:
        import toy_trainable
    finally:
        sys.path.remove(str(TOY.parent))
    reader = toy_trainable.ToyReader()
    assert load_trainable(reader, reference, "reader") == reference / "checkpoints" / "step-000006"
    assert torch.equal(reader.head.weight, weights(reference, "reader")["weight"])
    with pytest.raises(
        ConfigurationError, match=r"reader.safetensors: does not fit ToyReader: size mismatch for weight"
    ):
        load_trainable(toy_trainable.ToyReader(hidden=8), reference, "reader")
    extra = tmp_path / "extra"
    extra.mkdir()
    save_file({**weights(reference, "reader"), "scale": torch.ones(1)}, str(extra / "reader.safetensors"))
    with pytest.raises(
        ConfigurationError,
        match=r"extra/reader.safetensors: does not fit ToyReader: unexpected 1 keys \(first: scale\)",
    ):
        load_trainable(reader, extra, "reader")
    with pytest.raises(ConfigurationError, match="neither a training output"):
        load_trainable(reader, tmp_path, "reader")
    shutil.rmtree(extra)


def test_hyperlora_trains_with_tiny_llama_and_a_run_loads_it(tmp_path, plugins, invoke_cli):
    """The real pair: HyperLoRA's hypernetwork trains through the frozen (random) tiny-llama's loss."""
    imaginer_args = {"model": "tiny-llama", "encoder": "hashing", "rank": 2, "hidden": 16, "feature_dims": 8}
    output = tmp_path / "out"
    _, summary = train(
        TrainSpec(
            dataset="sample",
            imaginer="hyperlora",
            reader="tiny-llama",
            imaginer_args=imaginer_args,
            limit=16,
            steps=3,
            batch_size=4,
            lr=0.01,
            log_every=1,
            save_every=3,
            output=output,
        ),
        plugins,
        progress=False,
        log=lambda message: None,
    )
    log = read_log(output)
    assert [r["step"] for r in log] == [1, 2, 3] and log[-1]["loss"] < log[0]["loss"]
    final = output / "checkpoints" / "step-000003"
    assert (final / "imaginer.safetensors").is_file() and not (final / "reader.safetensors").exists()
    options = ",".join(f"{k}={v}" for k, v in {**imaginer_args, "checkpoint": output}.items())
    code, _, err = invoke_cli(
        "run",
        "--split",
        "test",
        "--limit",
        "4",
        "--metrics",
        "em",
        "--no-progress",
        "--imaginer",
        "hyperlora",
        "--imaginer-args",
        options,
        "--reader",
        "tiny-llama",
        "--reader-args",
        "max_new_tokens=2",
        "--output",
        str(tmp_path / "run"),
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "components.json").read_text())["imaginer"]["whitening_fitted"] is True
