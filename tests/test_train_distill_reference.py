"""`iagbench train` with the ImcQA reference's KD loss (--kd-scale none --kd-positions all --kl-term) and fid-t5
answer_positions: the logged loss equals `distillation_loss` with those options computed here from a checkpoint;
the defaults leave a run's identity as it was."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_distill import BATCH, HYPERLORA, step_two_logits

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.plugins import load_plugins
from iagbench.runs.runner import load_examples
from iagbench.training.folder import read_log
from iagbench.training.spec import TrainSpec
from iagbench.training.train import train

POSITIONS = 24
STUDENT_READER = {"train": "none", "train_answer": "first", "answer_positions": POSITIONS}
TEACHER_READER = {"train": "none", "seed": 1, "answer_positions": POSITIONS}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(builtins_only=True, plugin_files=())


def spec(output, **changes) -> TrainSpec:
    values = dict(
        dataset="sample", imaginer="hyperlora", reader="fid-tiny", imaginer_args=HYPERLORA, reader_args=STUDENT_READER,
        teacher_imaginer="given", teacher_reader="fid-tiny", teacher_reader_args=TEACHER_READER, alpha=0.4,
        temperature=3.0, steps=2, batch_size=BATCH, lr=1e-2, save_every=1, keep=0, log_every=1, output=output,
        kd_scale="none", kd_positions="all", kl_term=True,
    )  # fmt: skip
    values.update(changes)
    return TrainSpec(**values)


def test_logged_loss_is_the_reference_loss_of_the_batch(tmp_path, plugins):
    """Step 2's loss, kd, ce and kl_term equal distillation_loss(t_squared=False, kd_positions="all", kl_term=True)
    of step 2's batch, computed from the step-1 checkpoint, over answer_positions target positions."""
    from iagbench.lm.distill import distillation_loss

    output = tmp_path / "run"
    train(spec(output), plugins, progress=False, log=lambda m: None)
    log = {record["step"]: record for record in read_log(output)}
    assert {"loss", "kd", "ce", "kl_term"} <= set(log[2])

    student_logits, teacher_logits, labels, mask = step_two_logits(output, plugins, STUDENT_READER, TEACHER_READER)
    assert student_logits.shape[1] == POSITIONS and not bool(mask.all())  # padded positions are there
    expected = distillation_loss(student_logits, teacher_logits, labels, mask, alpha=0.4, temperature=3.0,
                                 t_squared=False, kd_positions="all", kl_term=True)  # fmt: skip
    default = distillation_loss(student_logits, teacher_logits, labels, mask, alpha=0.4, temperature=3.0)
    assert abs(default.kd.item() - expected.kd.item()) > 1e-3  # the options change the numbers
    for name in ("total", "kd", "ce", "kl_term"):
        logged = log[2]["loss" if name == "total" else name]
        assert logged == pytest.approx(getattr(expected, name).item(), rel=1e-5), name
    distillation = json.loads((output / "train_config.json").read_text())["identity"]["distillation"]
    assert {k: distillation[k] for k in ("kd_scale", "kd_positions", "kl_term")} == {
        "kd_scale": "none", "kd_positions": "all", "kl_term": True}  # fmt: skip


def test_answer_positions_pads_as_hf_t5(plugins):
    """target_ids pads to answer_positions; the logits at real positions equal those of the unpadded reader."""
    from iagbench.contract.types import Context
    from iagbench_plugins.readers.fid import FiDReader

    examples = load_examples(plugins["datasets"].get("sample").build(), "train", 3, "sample")
    contexts = [Context(passages=tuple(e.ctxs)) for e in examples]
    targets = [e.answers[0] for e in examples]
    padded, plain = FiDReader(model="fid-tiny", answer_positions=POSITIONS), FiDReader(model="fid-tiny")
    ids, mask = padded.target_ids(targets)
    assert ids.shape == (3, POSITIONS) and padded.describe()["answer_positions"] == POSITIONS
    assert "answer_positions" not in plain.describe()
    with torch.no_grad():
        long, long_mask = padded.answer_logits(examples, contexts, targets)
        short, short_mask = plain.answer_logits(examples, contexts, targets)
    width = short.shape[1]
    assert torch.equal(long_mask[:, :width], short_mask) and not bool(long_mask[:, width:].any())
    assert torch.allclose(long[:, :width][short_mask], short[short_mask], atol=1e-5)
    assert padded.target_ids(["a " * 60])[0].shape == (1, POSITIONS)  # longer answers are cut, end token kept
    assert padded.target_ids(["a " * 60])[0][0, -1].item() == padded.eos_id
    with pytest.raises(ConfigurationError, match="answer_positions"):
        FiDReader(model="fid-tiny", answer_positions=0)


def test_defaults_keep_the_identity_and_options_need_a_teacher(tmp_path, plugins):
    """Without the options the identity has none of their keys (earlier runs keep their hash); refusals name them."""
    from iagbench.training.spec import validate

    default = spec(tmp_path / "x", kd_scale="t2", kd_positions="answer", kl_term=False)
    from iagbench.training.folder import _changed
    from iagbench.training.spec import REFERENCE_KD_OPTIONS

    assert _changed(default, REFERENCE_KD_OPTIONS) == {}
    with pytest.raises(ConfigurationError, match="--kl-term"):
        validate(spec(tmp_path / "x", teacher_reader=None, teacher_imaginer=None, teacher_reader_args={},
                      alpha=0.5, temperature=1.0, kd_scale="t2", kd_positions="answer"))  # fmt: skip
    with pytest.raises(ConfigurationError, match="--kd-scale"):
        validate(spec(tmp_path / "x", kd_scale="t3"))
    with pytest.raises(ConfigurationError, match="--kd-positions"):
        validate(spec(tmp_path / "x", kd_positions="some"))
