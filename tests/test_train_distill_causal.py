"""Distillation with causal-LM readers: `CausalLMReader` is Distillable, and `iagbench train --teacher-imaginer given
--teacher-reader tiny-llama --imaginer hyperlora --reader tiny-llama` logs the distillation_loss of its batch
(computed here from a checkpoint): a passage-reading teacher distilled into a closed-book student."""

from __future__ import annotations

import pytest
import torch

from iagbench.contract.components import Distillable
from iagbench.contract.plugins import load_plugins
from iagbench.contract.types import Context
from iagbench.runs.runner import load_examples
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.stream import _Stream
from iagbench.training.train import train

HYPERLORA = {"model": "tiny-llama", "rank": 4, "hidden": 32, "feature_dims": 8, "encoder": "hashing", "device": "cpu"}
READER = {"device": "cpu"}
TEACHER = {"device": "cpu", "seed": 1}
BATCH = 4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(builtins_only=True, plugin_files=())


@pytest.fixture(scope="module")
def examples(plugins):
    return load_examples(plugins["datasets"].get("sample").build(), "train", None, "sample")


def test_answer_logits_are_the_loss_tokens_after_each_prompt(examples):
    """answer_logits of a batch equal each example's own forward over prompt + answer; padding is masked; the mean
    cross-entropy over the mask is the reader's loss."""
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    reader = CausalLMReader(model="tiny-llama", **READER)
    assert isinstance(reader, Distillable)
    batch = examples[:3]
    contexts = [Context(passages=tuple(e.ctxs[: i + 1])) for i, e in enumerate(batch)]  # prompts of different lengths
    targets = reader.training_targets(batch)
    with torch.no_grad():
        logits, mask = reader.answer_logits(batch, contexts, targets)
        ids, _ = reader.target_ids(targets)
        for row, (example, context) in enumerate(zip(batch, contexts)):
            prompt = reader.tokenizer(reader.prompts([example], [context])[0], add_special_tokens=not reader.chat)
            target = ids[row][mask[row]].tolist()
            alone = reader.model(torch.tensor([prompt["input_ids"] + target])).logits[0]
            start = len(prompt["input_ids"]) - 1
            assert torch.allclose(logits[row][mask[row]], alone[start : start + len(target)], atol=1e-4)
        loss = reader.loss(batch, contexts)
    expected = torch.nn.functional.cross_entropy(logits[mask].float(), ids[mask])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert not bool(mask.all()) and mask.shape == logits.shape[:2]


def test_closed_book_student_from_a_passage_teacher(tmp_path, plugins, examples):
    """Step 2's logged loss, kd and ce equal distillation_loss of step 2's batch from the step-1 checkpoint."""
    from iagbench.lm.distill import distillation_loss
    from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
    from iagbench_plugins.readers.causal_lm import CausalLMReader

    output = tmp_path / "run"
    spec = TrainSpec(
        dataset="sample", imaginer="hyperlora", reader="tiny-llama", imaginer_args=HYPERLORA, reader_args=READER,
        teacher_imaginer="given", teacher_reader="tiny-llama", teacher_reader_args=TEACHER, alpha=0.6,
        temperature=2.0, steps=2, batch_size=BATCH, lr=1e-2, save_every=1, keep=0, log_every=1, output=output,
    )  # fmt: skip
    train(spec, plugins, progress=False, log=lambda m: None)
    log = {record["step"]: record for record in read_log(output)}
    assert {"loss", "kd", "ce"} <= set(log[2])

    batch = _Stream(examples, 0).take(BATCH, BATCH)
    student = HyperLoRAImaginer(**HYPERLORA, checkpoint=str(output / "checkpoints" / "step-000001"))
    reader, teacher = CausalLMReader(model="tiny-llama", **READER), CausalLMReader(model="tiny-llama", **TEACHER)
    targets = reader.training_targets(batch)
    with torch.no_grad():
        student_contexts = student.imagine(batch)
        assert all(c.adapter is not None and not c.passages for c in student_contexts)  # closed-book, adapters
        teacher_logits, mask = teacher.answer_logits(batch, [Context(passages=tuple(e.ctxs)) for e in batch], targets)
        student_logits, _ = reader.answer_logits(batch, student_contexts, targets)
    labels, _ = reader.target_ids(targets)
    expected = distillation_loss(student_logits, teacher_logits, labels, mask, alpha=0.6, temperature=2.0)
    assert log[2]["loss"] == pytest.approx(expected.total.item(), rel=1e-5)
    assert log[2]["kd"] == pytest.approx(expected.kd.item(), rel=1e-5)
    assert log[2]["ce"] == pytest.approx(expected.ce.item(), rel=1e-5)
    assert expected.kd.item() > 0
