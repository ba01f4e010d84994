"""Long-context distillation (ImcQA) in `iagbench train`: the frozen teacher (`_Distiller`), the decoder
states it and the student expose for the alignment terms, and the check that both readers are `Distillable`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from iagbench.contract.components import Distillable, Imaginer, Reader, Trainable
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context, Example
from iagbench.training.spec import TrainSpec


class _Distiller:
    """Long-context distillation (ImcQA): a frozen teacher imaginer + reader scores the gold answer's tokens,
    the student reader learns ``distillation_loss`` towards it at the temperature ``temperature_at(step, T0)``.

    The teacher is built once per process (each rank its own replica: it is no part of what DDP or
    DeepSpeed wrap), in evaluation mode, every parameter frozen, and runs without gradients; its
    contexts are made per batch from the same examples as the student's. Both readers score the same
    target (the student's ``training_targets``, one gold answer per example) through
    ``answer_logits(examples, contexts, targets) -> (logits, target_mask)``, so they must share a
    tokenizer. ``step`` (optimizer steps done) is set by the trainer; ``parts`` keeps each micro-batch's
    kd, ce (and hidden, attention) losses for the log.
    """

    def __init__(self, spec: TrainSpec, imaginer: Imaginer, reader: Distillable):
        self.spec, self.imaginer, self.reader = spec, imaginer, reader
        self.step = 0
        self.parts: dict[str, Any] = {}
        for component in (imaginer, reader):
            _freeze(component)

    def temperature(self) -> float:
        from iagbench.lm.distill import temperature_at

        return temperature_at(self.step, self.spec.temperature)

    def loss(self, student: Distillable, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        import torch

        from iagbench.lm.distill import distillation_loss

        spec = self.spec
        hidden, attention = spec.hidden_weight > 0, spec.attention_weight > 0
        targets = student.training_targets(examples)
        with torch.no_grad():
            teacher_contexts = self.imaginer.imagine(examples)
            if len(teacher_contexts) != len(examples):
                raise ConfigurationError(
                    f"teacher imaginer returned {len(teacher_contexts)} contexts for {len(examples)} examples"
                )
            with _decoder_outputs(self.reader, "teacher reader", hidden, attention) as teacher_states:
                teacher_logits, teacher_mask = self.reader.answer_logits(examples, teacher_contexts, targets)
        with _decoder_outputs(student, "reader", hidden, attention) as student_states:
            student_logits, mask = student.answer_logits(examples, contexts, targets)
        labels, _ = student.target_ids(targets)
        if student_logits.shape != teacher_logits.shape or not torch.equal(teacher_mask.to(mask.device), mask):
            raise ConfigurationError(
                f"distillation: the teacher's logits {tuple(teacher_logits.shape)} over the answer tokens do not line up "
                f"with the student's {tuple(student_logits.shape)}: the readers tokenize the answers differently "
                "(teacher and student must share the tokenizer)"
            )
        result = distillation_loss(
            student_logits, teacher_logits.to(student_logits.device), labels, mask, alpha=spec.alpha,
            temperature=self.temperature(),
            hidden=(student_states["hidden"], teacher_states["hidden"]) if hidden else None, hidden_weight=spec.hidden_weight,
            attention=(student_states["attention"], teacher_states["attention"]) if attention else None,
            attention_weight=spec.attention_weight, t_squared=spec.kd_scale == "t2", kd_positions=spec.kd_positions,
            kl_term=spec.kl_term,
        )  # fmt: skip
        self.parts = {name: value.detach().float() for name, value in result._asdict().items()
                      if name != "total" and value is not None}  # fmt: skip
        return result.total


def _freeze(component: Any) -> None:
    """Evaluation mode and no parameter that requires grad: the trainable module and the component's ``model``."""
    trainable = None
    if isinstance(component, Trainable):
        component.train(False)
        trainable = component.trainable_module()
    for module in (trainable, getattr(component, "model", None)):
        if module is not None and callable(getattr(module, "requires_grad_", None)):
            module.requires_grad_(False)
            module.eval()


@contextlib.contextmanager
def _decoder_outputs(reader: Any, role: str, hidden: bool, attention: bool) -> Iterator[dict[str, Any]]:
    """While ``answer_logits`` runs: ask the reader's transformers ``model`` for its hidden states / attention maps
    (forward hooks; attention maps switch the model to eager attention), and keep the last decoder layer's
    (``decoder_*`` for encoder-decoders) in the yielded dict: the last layer, so teacher and student may differ
    in depth (not in width or heads)."""
    states: dict[str, Any] = {}
    if not (hidden or attention):
        yield states
        return
    model = getattr(reader, "model", None)
    if model is None or not callable(getattr(model, "register_forward_hook", None)):
        raise ConfigurationError(
            f"--hidden-weight / --attention-weight: the {role} has no transformers model ('model' attribute) to read "
            "hidden states or attention maps from"
        )

    switch = getattr(model, "set_attn_implementation", None)
    if attention and callable(switch) and getattr(model.config, "_attn_implementation", "eager") != "eager":
        switch("eager")  # sdpa returns no attention maps; eager computes the same attention

    def ask(module: Any, args: Any, kwargs: Any) -> Any:
        if hidden:
            kwargs["output_hidden_states"] = True
        if attention:
            kwargs["output_attentions"] = True
        return args, kwargs

    def keep(module: Any, args: Any, kwargs: Any, output: Any) -> None:
        for name, flag, keys in (("hidden", hidden, ("decoder_hidden_states", "hidden_states")),
                                 ("attention", attention, ("decoder_attentions", "attentions"))):  # fmt: skip
            if not flag:
                continue
            layers = next((getattr(output, key) for key in keys if getattr(output, key, None) is not None), None)
            if not layers or layers[-1] is None:
                raise ConfigurationError(
                    f"--{name}-weight: the {role}'s model returned no {'hidden states' if name == 'hidden' else 'attention maps'}"
                    + (
                        " (load it with attn_implementation='eager' to get attention maps)"
                        if name == "attention"
                        else ""
                    )
                )
            states[name] = layers[-1]

    handles = [
        model.register_forward_pre_hook(ask, with_kwargs=True),
        model.register_forward_hook(keep, with_kwargs=True),
    ]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def _check_distillable(student: Reader, teacher: Reader, student_name: str, teacher_name: str) -> None:
    """Both readers are `Distillable` (they score answer tokens, the student's targets); one tokenizer."""
    _check_interface(student, student_name, "reader", tuple(sorted(Distillable.__abstractmethods__)))
    _check_interface(teacher, teacher_name, "teacher reader", ("answer_logits",))
    _check_same_tokenizer(student, teacher, student_name, teacher_name)


def _check_interface(reader: Reader, name: str, role: str, used: tuple[str, ...]) -> None:
    """Refuse a reader that is not `Distillable`, naming which of the methods its role ``used`` it lacks."""
    if isinstance(reader, Distillable):
        return
    missing = [method for method in used if not callable(getattr(reader, method, None))]
    lacks = ", ".join(missing) if missing else "iagbench.Distillable among its bases"
    raise ConfigurationError(
        f"distillation: {role} '{name}' lacks {lacks} (a reader is distilled through "
        "answer_logits(examples, contexts, targets) -> (logits, target_mask), as fid-t5's)"
    )


def _check_same_tokenizer(student: Reader, teacher: Reader, student_name: str, teacher_name: str) -> None:
    """The KD loss compares the two readers' distributions token by token: one vocabulary."""
    ours, theirs = getattr(student, "tokenizer", None), getattr(teacher, "tokenizer", None)
    if ours is not None and theirs is not None and ours is not theirs:
        vocab = getattr(ours, "get_vocab", None)
        same = (
            vocab() == theirs.get_vocab() if callable(vocab) and callable(getattr(theirs, "get_vocab", None)) else True
        )
        if not same or len(ours) != len(theirs):
            raise ConfigurationError(
                f"distillation: reader '{student_name}' and teacher reader '{teacher_name}' have different tokenizers "
                f"({len(ours)} and {len(theirs)} tokens{'' if len(ours) != len(theirs) else ', different vocabularies'}): "
                "the KD loss compares their distributions token by token over the same answer tokens; choose a teacher "
                "with the student's tokenizer (every T5 size shares one)"
            )
