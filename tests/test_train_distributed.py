"""`iagbench train` at scale: ZeRO-3, resuming with another number of processes, gradient checkpointing.

Multi-process runs use the toys of tests/toy_trainable.py on two CPU processes (gloo) and compare
with the one-process reference of tests/test_train.py (6 steps of a global batch of 20 examples).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from test_train import (  # noqa: F401  (reference and toy_plugins are fixtures)
    ACCUM,
    BIN,
    COMMON,
    EXAMPLES_PER_MICRO,
    REPO,
    STEPS,
    TOY,
    ZERO2,
    assert_same_weights,
    failure_excerpt,
    free_port,
    kill_group,
    needs_deepspeed,
    reference,
    remove_deepspeed_shm,
    spec,
    subprocess_env,
    toy_plugins,
    wait_for_step,
    weights,
)

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.training.distributed import read_deepspeed_config
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.stream import _Layout, _Stream
from iagbench.training.train import train

ZERO3 = REPO / "configs" / "deepspeed" / "zero3.json"
GLOBAL_BATCH = EXAMPLES_PER_MICRO * ACCUM


def zero3_partitioning_everything(folder: Path) -> Path:
    """The shipped ZeRO-3 config, except that no parameter stays whole (the toys' are all under its threshold)."""
    config = json.loads(ZERO3.read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / "zero3-partition-all.json"
    path.write_text(json.dumps(config))
    return path


class Launcher:
    """`iagbench train` subprocesses on one output folder: under the deepspeed launcher, torchrun, or alone."""

    def __init__(self, output: Path, request, extra: tuple[str, ...] = ()):
        self.output, self.extra, self.ports = output, extra, []
        request.addfinalizer(lambda: remove_deepspeed_shm(self.ports))

    def start(
        self, processes: int, launcher: str | None = None, stall_after_step: int | None = None
    ) -> subprocess.Popen:
        self.ports.append(free_port())
        port = str(self.ports[-1])
        train_args = [
            "train",
            *COMMON,
            "--batch-size",
            str(EXAMPLES_PER_MICRO // processes),
            "--output",
            str(self.output),
            *self.extra,
        ]
        if launcher == "deepspeed":
            args = [str(BIN / "deepspeed"), "--num_gpus", str(processes), "--master_port", port, str(BIN / "iagbench")]
        elif launcher == "torchrun":
            args = [
                str(BIN / "torchrun"),
                "--nproc_per_node",
                str(processes),
                "--master-port",
                port,
                str(BIN / "iagbench"),
            ]
        else:
            assert processes == 1
            args = [str(BIN / "iagbench")]
        env = {"MASTER_PORT": port}  # a launcher-less DeepSpeed process makes its own group on it
        if stall_after_step:
            env["TOY_STALL_AFTER_LOSS_CALLS"] = str(stall_after_step * ACCUM)
        return subprocess.Popen(
            [*args, *train_args],
            env=subprocess_env(**env),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def killed_after_step_4(self, processes: int, launcher: str | None = None) -> None:
        """Train until step 4 is logged (checkpoint at step 3), then kill -9 every process."""
        process = self.start(processes, launcher, stall_after_step=4)
        try:
            wait_for_step(self.output, 4, process, timeout=300)
        finally:
            kill_group(process)
        assert (self.output / "checkpoints" / "latest").read_text().strip() == "step-000003"

    def finish(self, processes: int, launcher: str | None = None) -> str:
        process = self.start(processes, launcher)
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0, failure_excerpt(out)
        return out


def assert_continues_like_the_reference(output: Path, reference: Path) -> None:
    """Steps 1-6 logged once each with the reference's losses, and the reference's final weights."""
    log = read_log(output)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in log[1:]] == pytest.approx([r["loss"] for r in read_log(reference)[1:]], rel=1e-4)
    assert_same_weights(output, reference, atol=1e-5)


def test_a_step_trains_on_the_same_examples_however_the_global_batch_is_split(toy_plugins):
    """Positions are global: (processes, batch size, accumulation) with the same product give every step the same
    examples, every epoch has each example once, and no example is repeated or skipped across epochs."""
    examples = toy_plugins["datasets"].get("sample").build().load("train")
    stream = _Stream(examples, seed=0)
    layouts = [(1, 20, 1), (1, 10, 2), (2, 5, 2), (1, 5, 4), (4, 5, 1), (2, 2, 5)]
    steps = 10  # 200 examples: 4 epochs of 50, steps 3, 5, 8 and 10 span epoch boundaries
    per_layout = []
    for processes, batch_size, accum in layouts:
        ids = []
        for step in range(1, steps + 1):
            step_ids = []
            for micro in range(accum):
                for rank in range(processes):
                    layout = _Layout(processes, rank, batch_size, accum)
                    assert layout.global_batch == GLOBAL_BATCH
                    step_ids += [e.id for e in layout.batch(stream, step, micro)]
            ids.append(sorted(step_ids))
        per_layout.append(ids)
    assert all(ids == per_layout[0] for ids in per_layout[1:])
    flat = [i for step in per_layout[0] for i in step]
    assert Counter(flat) == Counter({e.id: 4 for e in examples})
    assert [e.id for e in stream.take(0, 50)] != [e.id for e in stream.take(50, 50)]  # epochs are reshuffled


def test_resuming_with_another_global_batch_is_refused_with_the_batch_sizes_that_fit(tmp_path, toy_plugins):
    output = tmp_path / "out"
    train(spec(output, steps=2, eval_every=0), toy_plugins, progress=False, log=lambda message: None)
    with pytest.raises(
        RunFolderError,
        match=r"trained with a global batch of 20 examples per step, this command gives 10 "
        r"\(--batch-size 5 x 1 process\(es\) x --grad-accum 2\); to resume with 1 "
        r"process\(es\) choose --batch-size and --grad-accum whose product is 20",
    ):
        train(spec(output, steps=2, eval_every=0, batch_size=5), toy_plugins, progress=False, log=lambda message: None)
    # the same global batch in another split is the same run: finished, nothing to do
    messages = []
    train(
        spec(output, steps=2, eval_every=0, batch_size=5, grad_accum=4),
        toy_plugins,
        progress=False,
        log=messages.append,
    )
    assert messages[0].startswith("training already finished")


def test_zero3_config_must_gather_weights_on_save(tmp_path):
    config = json.loads(ZERO3.read_text())
    assert read_deepspeed_config(ZERO3)["zero_optimization"]["stage"] == 3
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = False
    path = tmp_path / "z3.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigurationError, match='ZeRO-3 needs "stage3_gather_16bit_weights_on_model_save": true'):
        read_deepspeed_config(path)


@needs_deepspeed
def test_zero3_two_processes_then_one_process_resumes_with_the_optimizer_resharded(
    tmp_path, reference, invoke_cli, request
):
    """ZeRO-3 with every parameter partitioned over 2 CPU processes, evaluated with a reader whose number of forward
    calls differs per process; killed after step 4; resumed by one process (batch 10 for the same global batch of
    20), which re-shards the optimizer state. Checkpoints hold whole weights, equal to the one-process reference,
    and a plain one-process run loads them. Without the whole optimizer state AdamW restarts, and says so."""
    output = tmp_path / "out"
    config = zero3_partitioning_everything(tmp_path)
    extra = ("--deepspeed", str(config), "--reader-args", "uneven_answer=true")
    launcher = Launcher(output, request, extra)
    launcher.killed_after_step_4(2, "deepspeed")
    fallback = tmp_path / "fallback"
    shutil.copytree(output, fallback)

    step3 = output / "checkpoints" / "step-000003"
    assert len(list((step3 / "state").rglob("*optim_states.pt"))) == 2  # ZeRO-3 shards of 2 processes
    assert (step3 / "state" / "optimizer_full.safetensors").is_file()
    assert_same_weights(step3, reference / "checkpoints" / "step-000003", atol=1e-5)  # gathered, whole
    evals = {r["step"]: r["eval_em"] for r in read_log(output) if "eval_em" in r}
    reference_evals = {r["step"]: r["eval_em"] for r in read_log(reference) if "eval_em" in r}
    assert evals == {0: reference_evals[0], 3: reference_evals[3]}

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
        f"checkpoint={step3}",
        "--reader",
        "toy-reader",
        "--reader-args",
        f"checkpoint={step3}",
        "--output",
        str(run_dir),
        plugin_files=(TOY,),
    )
    assert code == 0, err
    assert json.loads((run_dir / "results.json").read_text())["metrics"]["em"] == pytest.approx(evals[3])

    out = launcher.finish(1)
    assert "resuming" in out and "from step-000003 (step 3 of 6) with 1 process(es)" in out
    assert "world size changed 2 -> 1: DeepSpeed ZeRO-3 optimizer state re-sharded" in out
    assert_continues_like_the_reference(output, reference)
    state = json.loads((output / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state["execution"] == {
        "processes": 1,
        "batch_size": 10,
        "grad_accum": ACCUM,
        "global_batch": GLOBAL_BATCH,
        "gradient_checkpointing": False,
    }
    assert state["examples_seen"] == STEPS * GLOBAL_BATCH

    (fallback / "checkpoints" / "step-000003" / "state" / "optimizer_full.safetensors").unlink()  # as older checkpoints
    out = Launcher(fallback, request, extra).finish(1)
    assert (
        "world size changed 2 -> 1: step-000003 has no whole copy of the optimizer state "
        "(state/optimizer_full.safetensors)"
    ) in out and "optimizer restarted from the saved weights" in out
    log = read_log(fallback)
    assert [r["step"] for r in log] == [0, 1, 2, 3, 4, 5, 6] and log[-1]["loss"] < log[1]["loss"]
    assert log[4]["loss"] == pytest.approx(read_log(reference)[4]["loss"], rel=1e-4)  # the weights were restored
    assert log[6]["loss"] != pytest.approx(read_log(reference)[6]["loss"], rel=1e-4)  # the moments were not


@needs_deepspeed
def test_zero2_one_process_then_two_resume_with_the_optimizer_resharded(tmp_path, reference, request):
    output = tmp_path / "out"
    launcher = Launcher(output, request, ("--deepspeed", str(ZERO2)))
    launcher.killed_after_step_4(1)
    out = launcher.finish(2, "deepspeed")
    assert "world size changed 1 -> 2: DeepSpeed ZeRO-2 optimizer state re-sharded" in out
    assert_continues_like_the_reference(output, reference)


def test_torchrun_two_processes_then_one_resumes_with_the_whole_optimizer_state(
    tmp_path, reference, toy_plugins, request
):
    output = tmp_path / "out"
    Launcher(output, request).killed_after_step_4(2, "torchrun")
    messages = []
    train(spec(output), toy_plugins, progress=False, log=messages.append)  # one process, batch 10
    assert any(
        m.startswith("world size changed 2 -> 1: without DeepSpeed the optimizer state is whole") for m in messages
    )
    assert_continues_like_the_reference(output, reference)


def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_training(tmp_path, plugins):
    """tiny-llama with a peft LoRA: with --gradient-checkpointing each attention layer runs again in backward, and
    losses and trained weights equal those without it. HyperLoRA's adapters (forward hooks active only during the
    forward) cannot be recomputed: a one-line error says so."""
    import torch

    calls = Counter()

    def count(module, args, output):
        calls[type(module).__name__] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        runs = {}
        for checkpointing in (False, True):
            output = tmp_path / f"gc-{checkpointing}"
            calls.clear()
            train(
                TrainSpec(
                    dataset="sample",
                    imaginer="none",
                    reader="tiny-llama",
                    reader_args={"lora_rank": 2},
                    limit=8,
                    steps=2,
                    batch_size=4,
                    lr=0.01,
                    log_every=1,
                    save_every=2,
                    output=output,
                    gradient_checkpointing=checkpointing,
                ),
                plugins,
                progress=False,
                log=lambda message: None,
            )
            runs[checkpointing] = output, calls["LlamaAttention"]
    finally:
        handle.remove()
    (plain, plain_calls), (checkpointed, checkpointed_calls) = runs[False], runs[True]
    assert plain_calls > 0 and checkpointed_calls == 2 * plain_calls  # forward, then recomputed in backward
    assert [r["loss"] for r in read_log(checkpointed)] == pytest.approx([r["loss"] for r in read_log(plain)], rel=1e-5)
    for key, value in weights(plain, "reader").items():
        assert torch.allclose(value, weights(checkpointed, "reader")[key], atol=1e-6), key
    config = json.loads((checkpointed / "train_config.json").read_text())
    assert config["execution"]["gradient_checkpointing"] is True
    assert config["hash"] == json.loads((plain / "train_config.json").read_text())["hash"]  # the same training

    hyper = {"model": "tiny-llama", "encoder": "hashing", "rank": 2, "hidden": 16, "feature_dims": 8}
    with pytest.raises(ConfigurationError, match="--gradient-checkpointing: recomputing the checkpointed layers"):
        train(
            TrainSpec(
                dataset="sample",
                imaginer="hyperlora",
                reader="tiny-llama",
                imaginer_args=hyper,
                limit=16,
                steps=1,
                batch_size=4,
                output=tmp_path / "hyper",
                gradient_checkpointing=True,
            ),
            plugins,
            progress=False,
            log=lambda message: None,
        )


def test_gradient_checkpointing_needs_a_transformers_model(tmp_path, toy_plugins):
    with pytest.raises(
        ConfigurationError,
        match="--gradient-checkpointing: neither imaginer 'toy-imaginer' nor reader "
        "'toy-reader' has a transformers model",
    ):
        train(
            spec(tmp_path / "out", gradient_checkpointing=True), toy_plugins, progress=False, log=lambda message: None
        )
