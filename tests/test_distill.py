"""Long-context distillation losses: hand-made logits with padding against direct computations; the
temperature schedule; and the recipe of the module docstring with fid-tiny teacher and HyperLoRA student."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from trends import assert_falls

from iagbench import Context, Example, Passage
from iagbench.lm.distill import (
    attention_mse_loss,
    cross_entropy_loss,
    distillation_loss,
    hidden_cosine_loss,
    kd_loss,
    reference_kl_term,
    temperature_at,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 7
# Two examples with 4 and 2 real target tokens in a batch padded to 5 positions.
MASK = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
REAL = [(b, t) for b in range(2) for t in range(5) if MASK[b, t]]


def logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, VOCAB, generator=torch.Generator().manual_seed(seed)) * 2.0


GARBAGE = torch.tensor([float("nan"), float("inf"), -1e30, 1e30, 0.0, 3.0, -float("inf")])


def with_garbage(tensor: torch.Tensor) -> torch.Tensor:
    """Padding positions (of MASK) set to values that would wreck any mean they entered: nan, inf, +-1e30."""
    garbage = tensor.clone()
    garbage[~MASK] = GARBAGE[torch.arange(tensor.shape[-1]) % len(GARBAGE)]
    return garbage


def kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> float:
    """Explicit loops: sum_v p_t (log p_t - log p_s) at each real position, mean over them, times T^2."""
    total = 0.0
    for b, t in REAL:
        s = [float(x) / temperature for x in student[b, t]]
        q = [float(x) / temperature for x in teacher[b, t]]
        log_zs = math.log(sum(math.exp(x) for x in s))
        log_zq = math.log(sum(math.exp(x) for x in q))
        total += sum(math.exp(qv - log_zq) * ((qv - log_zq) - (sv - log_zs)) for sv, qv in zip(s, q))
    return total / len(REAL) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_kd_loss_is_kl_teacher_student_times_t_squared_over_real_positions(temperature):
    student, teacher = logits(0), logits(1)
    loss = kd_loss(student, teacher, MASK, temperature)
    assert loss.item() == pytest.approx(kl_by_hand(student, teacher, temperature), rel=1e-5)
    # the same with torch's kl_div on the real positions only (batchmean = mean over positions)
    rows = torch.tensor(REAL)
    s, t = student[rows[:, 0], rows[:, 1]], teacher[rows[:, 0], rows[:, 1]]
    expected = (
        F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")
        * temperature**2
    )
    torch.testing.assert_close(loss, expected)
    unscaled = kd_loss(student, teacher, MASK, temperature, t_squared=False)
    torch.testing.assert_close(unscaled * temperature**2, loss)
    assert kd_loss(teacher, teacher, MASK, temperature).abs().item() < 1e-6


def test_padding_values_change_nothing_and_get_no_gradient():
    student, teacher = logits(0), logits(1)
    clean = kd_loss(student, teacher, MASK, 2.0)
    garbage_student = with_garbage(student).requires_grad_(True)
    garbage_teacher = with_garbage(teacher).requires_grad_(True)
    assert not torch.isfinite(garbage_student).all()
    loss = kd_loss(garbage_student, garbage_teacher, MASK, 2.0)
    torch.testing.assert_close(loss, clean)
    loss.backward()
    assert torch.isfinite(garbage_student.grad).all()
    assert (garbage_student.grad[~MASK] == 0).all() and (garbage_student.grad[MASK] != 0).any()
    assert garbage_teacher.grad is None  # the teacher is a target, not trained
    # Averaging the padding positions in (as the reference code does) would give another value:
    padded_in = (
        F.kl_div(F.log_softmax(student / 2.0, -1), F.softmax(teacher / 2.0, -1), reduction="none").sum(-1).mean() * 4.0
    )
    assert not torch.isclose(padded_in, clean)


def kl_at(student: torch.Tensor, teacher: torch.Tensor, temperature: float, b: int, t: int) -> float:
    """sum_v p_t (log p_t - log p_s) at one position, by hand."""
    s = [float(x) / temperature for x in student[b, t]]
    q = [float(x) / temperature for x in teacher[b, t]]
    log_zs = math.log(sum(math.exp(x) for x in s))
    log_zq = math.log(sum(math.exp(x) for x in q))
    return sum(math.exp(qv - log_zq) * ((qv - log_zq) - (sv - log_zs)) for sv, qv in zip(s, q))


def test_reference_kd_averages_over_every_position_without_t_squared():
    """The ImcQA reference's cal_loss (model/Imagemodel.py:210-221): mean over all 2 x 5 positions, padding too."""
    student, teacher = logits(0), logits(1)
    everywhere = [(b, t) for b in range(2) for t in range(5)]
    by_hand = sum(kl_at(student, teacher, 2.0, b, t) for b, t in everywhere) / len(everywhere)
    loss = kd_loss(student, teacher, MASK, 2.0, t_squared=False, positions="all")
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    answer_only = sum(kl_at(student, teacher, 2.0, b, t) for b, t in REAL) / len(REAL)
    assert abs(by_hand - answer_only) > 0.05  # the padding positions really count
    with pytest.raises(ValueError, match="positions='padding'"):
        kd_loss(student, teacher, MASK, 2.0, positions="padding")


def test_reference_kl_term_is_sigmoid_k_times_k_of_batchmean_kl_at_t4_over_100():
    """use_kl (model/Imagemodel.py:310-316): k = sum over every position and token of KL at T=4 / examples / 100."""
    student, teacher = logits(0) * 5, logits(1) * 5  # sharp enough for k to matter
    k = sum(kl_at(student, teacher, 4.0, b, t) for b in range(2) for t in range(5)) / 2 / 100
    expected = k / (1 + math.exp(-k)) if k > 0 else 0.0
    assert reference_kl_term(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    labels = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3)).masked_fill(~MASK, -100)
    plain = distillation_loss(student, teacher, labels, alpha=0.4, temperature=1.0, t_squared=False, kd_positions="all")
    extra = distillation_loss(
        student, teacher, labels, alpha=0.4, temperature=1.0, t_squared=False, kd_positions="all", kl_term=True
    )
    assert plain.kl_term is None and extra.kl_term.item() == pytest.approx(expected, rel=1e-5)
    assert extra.total.item() == pytest.approx(plain.total.item() + expected, rel=1e-5)
    assert plain.total.item() == pytest.approx(0.4 * plain.kd.item() + 0.6 * plain.ce.item(), rel=1e-6)


def test_temperature_schedule():
    t0 = 2.0
    assert temperature_at(0, t0) == t0
    assert temperature_at(499, t0) == t0
    assert temperature_at(500, t0) == pytest.approx(t0 / (1 + math.log(2)))  # 1.1815
    assert temperature_at(1500, t0) == pytest.approx(t0 / (1 + math.log(4)))  # 0.8381
    assert temperature_at(10000, t0) == pytest.approx(t0 / (1 + math.log(21)))  # 0.4945
    assert temperature_at(999, t0) == temperature_at(500, t0)  # a step function of step // 500
    for step, bad_t0 in ((-1, t0), (1.5, t0), (0, 0.0)):
        with pytest.raises(ValueError):
            temperature_at(step, bad_t0)


def test_distillation_loss_mixes_kd_and_cross_entropy_over_real_positions():
    student, teacher = logits(0), logits(1)
    labels = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    garbage_labels = labels.masked_fill(~MASK, 10**6)  # out of the vocabulary: would fail if used
    ce_by_hand = sum(-F.log_softmax(student[b, t], -1)[labels[b, t]].item() for b, t in REAL) / len(REAL)
    ce = cross_entropy_loss(with_garbage(student), garbage_labels, MASK)
    assert ce.item() == pytest.approx(ce_by_hand, rel=1e-5)
    assert cross_entropy_loss(student, labels.masked_fill(~MASK, -100)).item() == pytest.approx(ce_by_hand, rel=1e-5)

    alpha, temperature = 0.3, 1.5
    result = distillation_loss(
        with_garbage(student), with_garbage(teacher), garbage_labels, MASK, alpha=alpha, temperature=temperature
    )
    assert result.kd.item() == pytest.approx(kl_by_hand(student, teacher, temperature), rel=1e-5)
    assert result.ce.item() == pytest.approx(ce_by_hand, rel=1e-5)
    assert result.total.item() == pytest.approx(alpha * result.kd.item() + (1 - alpha) * ce_by_hand, rel=1e-5)
    assert result.hidden is None and result.attention is None
    # labels with -100 padding give the mask themselves
    same = distillation_loss(student, teacher, labels.masked_fill(~MASK, -100), alpha=alpha, temperature=temperature)
    torch.testing.assert_close(same.total, result.total)
    assert distillation_loss(student, teacher, labels, MASK, alpha=1.0, temperature=2.0).total.item() == pytest.approx(
        kd_loss(student, teacher, MASK, 2.0).item()
    )
    assert distillation_loss(student, teacher, labels, MASK, alpha=0.0, temperature=2.0).total.item() == pytest.approx(
        ce_by_hand, rel=1e-5
    )
    with pytest.raises(ValueError, match="alpha=1.5"):
        distillation_loss(student, teacher, labels, MASK, alpha=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="no target positions"):
        kd_loss(student, teacher, torch.zeros_like(MASK), 1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(student, teacher[..., :-1], MASK, 1.0)


def test_alignment_losses_over_real_positions():
    generator = torch.Generator().manual_seed(3)
    student_hidden = [torch.randn(2, 5, 6, generator=generator) for _ in range(2)]
    teacher_hidden = [torch.randn(2, 5, 6, generator=generator) for _ in range(2)]
    by_hand = (
        sum(
            sum(1 - F.cosine_similarity(s[b, t], q[b, t], dim=0).item() for b, t in REAL) / len(REAL)
            for s, q in zip(student_hidden, teacher_hidden)
        )
        / 2
    )
    garbage = [with_garbage(h) for h in student_hidden]
    assert hidden_cosine_loss(garbage, [with_garbage(h) for h in teacher_hidden], MASK).item() == pytest.approx(
        by_hand, rel=1e-5
    )
    assert hidden_cosine_loss(student_hidden[0], student_hidden[0], MASK).abs().item() < 1e-6

    student_attention = torch.softmax(torch.randn(2, 3, 5, 5, generator=generator), -1)
    teacher_attention = torch.softmax(torch.randn(2, 3, 5, 5, generator=generator), -1)
    squares = [
        (student_attention[b, h, q, k] - teacher_attention[b, h, q, k]).item() ** 2
        for b in range(2) for h in range(3) for q in range(5) for k in range(5) if MASK[b, q] and MASK[b, k]
    ]  # fmt: skip
    junk_student, junk_teacher = student_attention.clone(), teacher_attention.clone()
    junk_student[0, :, 4] = float("nan")  # a padded query row
    junk_teacher[1, :, :, 3] = 1e9  # a padded key column
    mse = attention_mse_loss(junk_student, junk_teacher, MASK)
    assert mse.item() == pytest.approx(sum(squares) / len(squares), rel=1e-5)

    student, teacher, labels = logits(0), logits(1), torch.zeros(2, 5, dtype=torch.long)
    base = distillation_loss(student, teacher, labels, MASK, alpha=0.5, temperature=1.0)
    full = distillation_loss(student, teacher, labels, MASK, alpha=0.5, temperature=1.0,
                             hidden=(student_hidden, teacher_hidden), hidden_weight=0.2,
                             attention=(student_attention, teacher_attention), attention_weight=3.0)  # fmt: skip
    assert full.hidden.item() == pytest.approx(by_hand, rel=1e-5) and full.attention.item() == pytest.approx(
        mse.item(), rel=1e-5
    )
    assert full.total.item() == pytest.approx(base.total.item() + 0.2 * by_hand + 3.0 * mse.item(), rel=1e-5)


def test_distilling_a_fid_teacher_with_passages_into_a_hyperlora_student_closed_book():
    """The recipe of the module docstring, end to end with tiny models: the KD loss goes down."""
    from iagbench_plugins.hyperlora.imaginer import HyperLoRAImaginer
    from iagbench_plugins.readers.fid import FiDReader

    examples = [Example(str(i), q, (a,)) for i, (q, a) in enumerate(
        [("who wrote the iliad", "Homer"), ("where is lake titicaca", "Peru"), ("how many moons does mars have", "two")])]  # fmt: skip
    passages = [Passage("The Iliad is attributed to Homer.", "Iliad"), Passage("Lake Titicaca lies in Peru.", "Titicaca"),
                Passage("Mars has two moons.", "Mars")]  # fmt: skip
    teacher = FiDReader(model="fid-tiny", train="none", seed=1)  # another T5 with the same tokenizer, long context
    student = FiDReader(model="fid-tiny", train="none")  # question only, plus the imagined LoRA
    imaginer = HyperLoRAImaginer(model="fid-tiny", rank=4, hidden=32, feature_dims=8, encoder="hashing", device="cpu")
    imaginer.prepare([Example(str(i), f"question number {i} about topic {i % 7}", ("x",)) for i in range(40)])
    network = imaginer.trainable_module()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    targets = [e.answers[0] for e in examples]
    with torch.no_grad():
        teacher_logits, mask = teacher.answer_logits(
            examples, [Context(passages[:2]), Context(passages), Context(passages[2:])], targets
        )
    labels, _ = student.target_ids(targets)
    network.train()
    kds = []
    for step in range(8):
        student_logits, student_mask = student.answer_logits(examples, imaginer.imagine(examples), targets)
        assert torch.equal(student_mask, mask)
        loss = distillation_loss(
            student_logits, teacher_logits, labels, mask, alpha=0.9, temperature=temperature_at(step, 2.0)
        )
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
        kds.append(loss.kd.item())
    network.eval()
    assert_falls(kds, by=0.05)
    assert all(p.grad is None for p in student.model.parameters()) and all(
        p.grad is None for p in teacher.model.parameters()
    )
