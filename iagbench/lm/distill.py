"""Long-context distillation losses (ImcQA, Liao et al. 2024, section "long context distillation"):
a short-context student matched to a long-context teacher over the same answer tokens.

Design notes: docs/internals.md#iagbenchlmdistillpy"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
TEMPERATURE_EVERY = 500  # steps per temperature decrement (temperature_at)
KD_POSITIONS = ("answer", "all")  # what the KD loss averages over: real answer tokens, or every position


def temperature_at(step: int, t0: float) -> float:
    """The distillation temperature at optimizer step ``step``: ``t0 / (1 + ln(1 + step // 500))``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r}: expected a non-negative integer")
    if not t0 > 0:
        raise ValueError(f"t0={t0!r}: expected a positive temperature")
    return t0 / (1.0 + math.log(1 + step // TEMPERATURE_EVERY))


def _mask_of(target_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    mask = target_mask.bool()
    if mask.shape != shape:
        raise ValueError(f"target mask of shape {tuple(mask.shape)}, expected (examples, positions) {tuple(shape)}")
    if not bool(mask.any()):
        raise ValueError("no target positions in the mask")
    return mask


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target_mask: torch.Tensor,
    temperature: float,
    *,
    t_squared: bool = True,
    positions: str = "answer",
) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at ``temperature``, times T^2, averaged over target positions.

    Logits are (examples, positions, vocabulary); ``target_mask`` (examples, positions) is True on
    real target tokens. Per position: sum_v p_t(v) (log p_t(v) - log p_s(v)), p = softmax(logits / T).
    ``positions="all"`` averages over every position of the logits, padding included, as the ImcQA
    reference does (``cal_loss``, model/Imagemodel.py:210-221); ``t_squared=False`` drops the T^2 as it does.
    """
    if positions not in KD_POSITIONS:
        raise ValueError(f"positions={positions!r}: expected one of {', '.join(KD_POSITIONS)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in shape"
        )
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: expected a positive number")
    mask = _mask_of(target_mask, student_logits.shape[:-1])
    if positions == "all":
        mask = torch.ones_like(mask)
    student = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)  # (positions, vocabulary)
    teacher = F.log_softmax(teacher_logits.detach()[mask].float() / temperature, dim=-1)
    p_teacher = teacher.exp()
    # 0 * log 0 = 0: a token the teacher rules out (a -inf logit) adds nothing.
    per_position = torch.where(p_teacher > 0, p_teacher * (teacher - student), torch.zeros_like(student)).sum(-1)
    loss = per_position.mean()
    return loss * temperature**2 if t_squared else loss


def cross_entropy_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, target_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Token cross-entropy of the gold target at T = 1, averaged over target positions (FiD's answer loss).

    ``labels`` (examples, positions) are token ids; positions outside ``target_mask`` (default:
    labels != -100) are ignored, whatever their ids.
    """
    mask = _mask_of(labels != IGNORE_INDEX if target_mask is None else target_mask, student_logits.shape[:-1])
    return F.cross_entropy(student_logits[mask].float(), labels[mask].long())


def _layers(states: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [states] if isinstance(states, torch.Tensor) else list(states)


def hidden_cosine_loss(
    student_hidden: torch.Tensor | Sequence[torch.Tensor],
    teacher_hidden: torch.Tensor | Sequence[torch.Tensor],
    target_mask: torch.Tensor,
) -> torch.Tensor:
    """1 - cosine similarity of student and teacher states (examples, positions, d), averaged over
    target positions, then over layers when given one tensor per layer."""
    students, teachers = _layers(student_hidden), _layers(teacher_hidden)
    if len(students) != len(teachers) or not students:
        raise ValueError(f"{len(students)} student and {len(teachers)} teacher hidden-state layers")
    losses = []
    for student, teacher in zip(students, teachers):
        if student.shape != teacher.shape:
            raise ValueError(
                f"student hidden states {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ in shape"
            )
        mask = _mask_of(target_mask, student.shape[:-1])
        cosine = F.cosine_similarity(student[mask].float(), teacher.detach()[mask].float(), dim=-1)
        losses.append((1.0 - cosine).mean())
    return torch.stack(losses).mean()


def attention_mse_loss(
    student_attentions: torch.Tensor | Sequence[torch.Tensor],
    teacher_attentions: torch.Tensor | Sequence[torch.Tensor],
    query_mask: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared difference of attention maps (examples, heads, queries, keys) over the entries whose
    query and key are both real (``key_mask`` defaults to ``query_mask``: decoder self-attention),
    averaged over layers when given one tensor per layer."""
    students, teachers = _layers(student_attentions), _layers(teacher_attentions)
    if len(students) != len(teachers) or not students:
        raise ValueError(f"{len(students)} student and {len(teachers)} teacher attention layers")
    keys = query_mask if key_mask is None else key_mask
    losses = []
    for student, teacher in zip(students, teachers):
        if student.shape != teacher.shape or student.dim() != 4:
            raise ValueError(
                f"attention maps {tuple(student.shape)} and {tuple(teacher.shape)}: expected equal (examples, heads, queries, keys)"
            )
        queries = _mask_of(query_mask, torch.Size((student.shape[0], student.shape[2])))
        real_keys = _mask_of(keys, torch.Size((student.shape[0], student.shape[3])))
        entries = (queries[:, None, :, None] & real_keys[:, None, None, :]).expand_as(student)
        losses.append(F.mse_loss(student[entries].float(), teacher.detach()[entries].float()))
    return torch.stack(losses).mean()


def reference_kl_term(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, scale: float = 100.0
) -> torch.Tensor:
    """The ImcQA reference's extra term (``use_kl``, model/Imagemodel.py:310-316): ``sigmoid(k) * k`` with
    ``k = KL(teacher || student at T=4)`` summed over every position and the vocabulary, divided by the number
    of examples (``batchmean``) and by 100."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.softmax(teacher_logits.detach().float() / temperature, dim=-1)
    k = F.kl_div(student, teacher, reduction="batchmean") / scale
    return torch.sigmoid(k) * k


class DistillationLoss(NamedTuple):
    """The total training loss and its parts (for logging); ``hidden``/``attention`` are None when not used."""

    total: torch.Tensor
    kd: torch.Tensor
    ce: torch.Tensor
    hidden: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    kl_term: torch.Tensor | None = None


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    target_mask: torch.Tensor | None = None,
    *,
    alpha: float,
    temperature: float,
    t_squared: bool = True,
    kd_positions: str = "answer",
    kl_term: bool = False,
    hidden: tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]] | None = None,
    hidden_weight: float = 0.0,
    attention: tuple[torch.Tensor | Sequence[torch.Tensor], torch.Tensor | Sequence[torch.Tensor]] | None = None,
    attention_weight: float = 0.0,
) -> DistillationLoss:
    """``alpha * kd_loss + (1 - alpha) * cross_entropy_loss`` (+ weighted alignment losses).

    ``labels`` are the target token ids (examples, positions); ``target_mask`` marks real target
    tokens (default: labels != -100). ``hidden=(student, teacher)`` adds ``hidden_weight`` times
    ``hidden_cosine_loss``; ``attention=(student, teacher)`` adds ``attention_weight`` times
    ``attention_mse_loss`` (over the target mask for queries and keys). ``t_squared``, ``kd_positions``
    (`kd_loss`) and ``kl_term`` (adds `reference_kl_term`) reproduce the ImcQA reference's loss.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r}: expected a weight between 0 and 1")
    mask = labels != IGNORE_INDEX if target_mask is None else target_mask
    kd = kd_loss(student_logits, teacher_logits, mask, temperature, t_squared=t_squared, positions=kd_positions)
    ce = cross_entropy_loss(student_logits, labels, mask)
    total = alpha * kd + (1.0 - alpha) * ce
    extra = reference_kl_term(student_logits, teacher_logits) if kl_term else None
    if extra is not None:
        total = total + extra
    hidden_loss = attention_loss = None
    if hidden is not None:
        hidden_loss = hidden_cosine_loss(hidden[0], hidden[1], mask)
        total = total + hidden_weight * hidden_loss
    if attention is not None:
        attention_loss = attention_mse_loss(attention[0], attention[1], mask)
        total = total + attention_weight * attention_loss
    return DistillationLoss(total, kd, ce, hidden_loss, attention_loss, extra)
