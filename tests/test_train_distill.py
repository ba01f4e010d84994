"""`iagbench train` with a teacher (long-context distillation, ImcQA): the logged loss is
distillation_loss of the student's and the teacher's answer logits on that step's batch, computed here
directly from the previous checkpoint; KD goes down; resume keeps the teacher; refusals.

Student: hyperlora (trainable) + fid-tiny (frozen). Teacher: the sample set's gold passages (``given``)
+ another fid-tiny (seed=1). Both fid-tiny readers are frozen (train=none), so nothing in the forward is
random and a checkpoint's weights give back the logged loss exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trends import assert_falls

from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.contract.plugins import load_plugins
from iagbench.runs.runner import load_examples
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.stream import _Stream
from iagbench.training.train import train

HYPERLORA = {"model": "fid-tiny", "rank": 4, "hidden": 32, "feature_dims": 8, "encoder": "hashing", "device": "cpu"}
STUDENT_READER = {"train": "none", "train_answer": "first"}  # frozen T5, deterministic targets
TEACHER_READER = {"train": "none", "seed": 1}
BATCH = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def other_tokenizer_fid(**options):
    """fid-tiny whose tokenizer has one more token than the student's."""
    from iagbench_plugins.readers.fid import FiDReader

    class OtherTokenizerFiD(FiDReader):
        def __init__(self, **options):
            super().__init__(model="fid-tiny", **options)
            self.tokenizer.add_tokens(["<another-token>"])

    return OtherTokenizerFiD(**options)


other_tokenizer_fid.accepts = frozenset({"passages", "adapter"})  # type: ignore[attr-defined]


def plain_llama(**options):
    """tiny-llama behind a reader that is not Distillable (no answer_logits)."""
    from iagbench import Reader
    from iagbench.contract.components import Trainable
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    class PlainReader(Reader, Trainable):
        def __init__(self):
            self.inner = CausalLMReader(model="tiny-llama", **options)
            self.tokenizer = self.inner.tokenizer

        def answer(self, examples, contexts):
            return self.inner.answer(examples, contexts)

        def describe(self):
            return self.inner.describe()

        def trainable_module(self):
            return self.inner.trainable_module()

        def loss(self, examples, contexts):
            return self.inner.loss(examples, contexts)

    return PlainReader()


plain_llama.accepts = frozenset({"passages", "adapter"})  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def plugins():
    plugins = load_plugins(builtins_only=True, plugin_files=())
    plugins["readers"].register("fid-other-tokenizer", other_tokenizer_fid, plugin="tests")
    plugins["readers"].register("plain-llama", plain_llama, plugin="tests")
    return plugins


def spec(output: Path, **changes) -> TrainSpec:
    values = dict(
        dataset="sample", imaginer="hyperlora", reader="fid-tiny", imaginer_args=HYPERLORA, reader_args=STUDENT_READER,
        teacher_imaginer="given", teacher_reader="fid-tiny", teacher_reader_args=TEACHER_READER, alpha=0.7,
        temperature=2.0, steps=2, batch_size=BATCH, lr=1e-2, save_every=1, keep=0, log_every=1, output=output,
    )  # fmt: skip
    values.update(changes)
    return TrainSpec(**values)


def step_two_logits(output: Path, plugins, student_reader: dict, teacher_reader: dict):
    """Step 2's batch (global batch 8 = 8 x 1 process x 1) scored from the step-1 checkpoint of ``output``:
    (student logits, teacher logits over the gold passages, labels, target mask)."""
    from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
    from iagbench_plugins.readers.fid import FiDReader

    examples = load_examples(plugins["datasets"].get("sample").build(), "train", None, "sample")
    batch = _Stream(examples, 0).take(BATCH, BATCH)
    student = HyperLoRAImaginer(**HYPERLORA, checkpoint=str(output / "checkpoints" / "step-000001"))
    reader, teacher = FiDReader(model="fid-tiny", **student_reader), FiDReader(model="fid-tiny", **teacher_reader)
    targets = [example.answers[0] for example in batch]
    with torch.no_grad():
        contexts = [type(c)(passages=tuple(e.ctxs)) for c, e in zip(student.imagine(batch), batch)]
        teacher_logits, mask = teacher.answer_logits(batch, contexts, targets)
        student_logits, _ = reader.answer_logits(batch, student.imagine(batch), targets)
    labels, _ = reader.target_ids(targets)
    return student_logits, teacher_logits, labels, mask


def test_logged_loss_is_distillation_loss_of_the_batch(tmp_path, plugins):
    """Step 2's logged loss, kd and ce equal distillation_loss computed here from the step-1 checkpoint on step 2's examples."""
    from iagbench.lm.distill import distillation_loss, temperature_at

    output = tmp_path / "run"
    train(spec(output), plugins, progress=False, log=lambda m: None)
    log = {record["step"]: record for record in read_log(output)}
    assert set(log) == {1, 2} and {"loss", "kd", "ce", "temperature"} <= set(log[2])
    assert log[2]["temperature"] == temperature_at(1, 2.0) == 2.0

    student_logits, teacher_logits, labels, mask = step_two_logits(output, plugins, STUDENT_READER, TEACHER_READER)
    expected = distillation_loss(student_logits, teacher_logits, labels, mask, alpha=0.7, temperature=2.0)
    assert log[2]["loss"] == pytest.approx(expected.total.item(), rel=1e-5)
    assert log[2]["kd"] == pytest.approx(expected.kd.item(), rel=1e-5)
    assert log[2]["ce"] == pytest.approx(expected.ce.item(), rel=1e-5)
    assert log[2]["loss"] == pytest.approx(0.7 * log[2]["kd"] + 0.3 * log[2]["ce"], rel=1e-5)
    # the teacher matters: a peaked teacher (all its mass on one token) gives a far larger KD than fid-tiny's
    # nearly flat logits do. Rolling the tiny teacher's logits moved the loss by only 7e-4 on one CPU, too close
    # to float noise to tell a teacher that is used from one that is ignored.
    peaked = torch.full_like(teacher_logits, -30.0)
    peaked[..., 3] = 30.0
    other = distillation_loss(student_logits, peaked, labels, mask, alpha=0.7, temperature=2.0)
    assert other.kd.item() > expected.kd.item() + 1.0 and other.ce.item() == pytest.approx(expected.ce.item(), rel=1e-6)
    config = json.loads((output / "train_config.json").read_text())
    assert config["identity"]["distillation"]["teacher_reader"] == {"name": "fid-tiny", "options": TEACHER_READER}
    assert config["identity"]["distillation"]["alpha"] == 0.7


def test_kd_goes_down_and_resume_keeps_the_teacher(tmp_path, plugins):
    """12 steps, 6 epochs of 16 examples: KD falls; an interrupted run (4 steps, then 12) ends where the uninterrupted
    one does; a resume with another teacher (or alpha) is refused."""
    common = dict(limit=2 * BATCH, steps=12, lr=3e-2, save_every=4, alpha=1.0)
    whole = tmp_path / "whole"
    train(spec(whole, **common), plugins, progress=False, log=lambda m: None)
    kds = [record["kd"] for record in read_log(whole)]
    assert len(kds) == 12
    assert_falls(kds, to=0.85)  # about 1.02 -> 0.72 (means of the first and last two steps); 8 steps fell only to 0.82

    split = tmp_path / "split"
    shutil.copytree(whole, split)
    # as if killed after step 4: only the step-4 checkpoint is left (the log is truncated to it on resume)
    for later in ("step-000008", "step-000012"):
        shutil.rmtree(split / "checkpoints" / later, ignore_errors=True)
    (split / "checkpoints" / "latest").write_text("step-000004\n")
    with pytest.raises(RunFolderError, match="distillation"):
        train(spec(split, **{**common, "teacher_reader_args": {"train": "none", "seed": 2}}), plugins, progress=False,
              log=lambda m: None)  # fmt: skip
    with pytest.raises(RunFolderError, match="alpha"):
        train(spec(split, **{**common, "alpha": 0.5}), plugins, progress=False, log=lambda m: None)
    messages: list[str] = []
    train(spec(split, **common), plugins, progress=False, log=messages.append)
    assert any("resuming" in m and "step 4 of 12" in m for m in messages), messages
    resumed = read_log(split)
    assert [r["step"] for r in resumed] == list(range(1, 13))
    for a, b in zip(read_log(whole), resumed):
        assert b["kd"] == pytest.approx(a["kd"], rel=1e-4) and b["loss"] == pytest.approx(a["loss"], rel=1e-4)


def test_refusals(tmp_path, plugins):
    def refused(match: str, **changes) -> None:
        with pytest.raises(ConfigurationError, match=match):
            train(spec(tmp_path / "x", **changes), plugins, progress=False, log=lambda m: None)

    refused("different tokenizers", teacher_reader="fid-other-tokenizer")
    # a reader without answer_logits (as teacher, or as student)
    refused("teacher reader 'plain-llama' lacks answer_logits", teacher_imaginer="none", teacher_reader="plain-llama",
            teacher_reader_args={})  # fmt: skip
    refused("reader 'plain-llama' lacks answer_logits", imaginer="none", imaginer_args={}, reader="plain-llama",
            reader_args={"lora_rank": 4})  # fmt: skip
    refused("--alpha", teacher_reader=None, teacher_imaginer=None, teacher_reader_args={})
    refused("--alpha 1.5", alpha=1.5)


def test_command_line_with_hidden_and_attention_terms(tmp_path):
    """`iagbench train --teacher-* --hidden-weight --attention-weight`: the log has every part, and the total adds them."""
    output = tmp_path / "cli"
    command = [
        str(Path(sys.executable).parent / "iagbench"), "train", "--dataset", "sample", "--imaginer", "hyperlora", "--imaginer-args",
        ",".join(f"{k}={v}" for k, v in HYPERLORA.items()), "--reader", "fid-tiny", "--reader-args", "train=none,train_answer=first",
        "--teacher-imaginer", "given", "--teacher-imaginer-args", "k=2", "--teacher-reader", "fid-tiny",
        "--teacher-reader-args", "train=none,seed=1", "--alpha", "0.4", "--temperature", "3.0", "--hidden-weight", "0.5",
        "--attention-weight", "2.0", "--steps", "2", "--batch-size", "8", "--log-every", "1", "--output", str(output),
        "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for record in read_log(output):
        assert record["temperature"] == 3.0
        expected = 0.4 * record["kd"] + 0.6 * record["ce"] + 0.5 * record["hidden"] + 2.0 * record["attention"]
        assert record["loss"] == pytest.approx(expected, rel=1e-5) and record["hidden"] > 0 and record["attention"] > 0
    config = json.loads((output / "train_config.json").read_text())
    assert config["identity"]["distillation"]["teacher_imaginer"] == {"name": "given", "options": {"k": 2}}
    assert config["non_default_options"]["teacher_reader"] == "fid-tiny"


def test_a_composite_prepares_only_its_trainable_part(plugins):
    """imagine+hyperlora with imagine frozen (ImcQA's student): prepare fits hyperlora's whitening and asks the frozen
    imagine for nothing (it has no pairs: it would refuse to find training targets)."""
    examples = load_examples(plugins["datasets"].get("sample").build(), "train", None, "sample")
    composite = plugins["imaginers"].get("imagine+hyperlora").build(
        **{"imagine.model": "tiny-llama", "imagine.train": False, "imagine.max_new_tokens": 4, **{f"hyperlora.{k}": v for k, v in HYPERLORA.items()}}
    )  # fmt: skip
    composite.prepare(examples)
    assert [name for name, _ in composite.trainable_parts()] == ["hyperlora"]
    contexts = composite.imagine(examples[:2])
    assert all(c.adapter is not None and c.passages[0].title == "imagined" for c in contexts)
