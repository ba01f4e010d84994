"""What defines a training run: `TrainSpec` as the user gave it, its validation, and `_Setup`,
what `train()` resolves from it (plugins, examples, DeepSpeed config) before any process group exists."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from iagbench.contract.components import Dataset, Metric
from iagbench.contract.entry import Entry
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Example

DEFAULT_TRAIN_DIR = Path("trained")
SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
NO_DECAY = ("norms", "reference")  # iagbench.training.objective's rules, without importing torch


@dataclass
class TrainSpec:
    """Everything that defines one training run, as the user gave it."""

    dataset: str
    imaginer: str
    reader: str
    split: str = "train"
    dataset_args: dict[str, Any] = field(default_factory=dict)
    imaginer_args: dict[str, Any] = field(default_factory=dict)
    reader_args: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    steps: int | None = None  # optimizer steps; or epochs (default: 1 epoch)
    epochs: float | None = None
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    # which parameters get no weight decay: "norms" (fewer than 2 dimensions: biases and norms) or "reference" (the
    # ImcQA reference's name rule, docs/fidelity.md); recorded in the identity only when not the default
    no_decay: str = "norms"
    warmup_steps: int = 0
    schedule: str = "linear"
    max_grad_norm: float = 1.0  # 0: no clipping
    eval_every: int = 0  # 0: no evaluation
    eval_split: str = "dev"
    eval_limit: int | None = 200
    eval_batch_size: int | None = None  # default: batch_size
    save_every: int = 500  # and always at the end
    keep: int = 3  # newest checkpoints kept; 0 keeps all
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "auto"  # bf16 on CUDA, else no
    deepspeed: Path | None = None  # a DeepSpeed config file (configs/deepspeed/zero2.json, zero3.json)
    gradient_checkpointing: bool = False  # recompute the transformers models' layers in backward (less memory)
    # long-context distillation (ImcQA): a frozen teacher imaginer + reader; the loss is plugins/distill's
    teacher_imaginer: str | None = None  # default "none" when a teacher reader is given
    teacher_reader: str | None = None  # no teacher: the reader's (or imaginer's) own loss
    teacher_imaginer_args: dict[str, Any] = field(default_factory=dict)
    teacher_reader_args: dict[str, Any] = field(default_factory=dict)
    alpha: float = 0.5  # weight of KD; 1 - alpha on the gold answer's cross-entropy
    temperature: float = 1.0  # T0 of temperature_at(step, T0)
    hidden_weight: float = 0.0  # cosine loss between the readers' last decoder hidden states
    attention_weight: float = 0.0  # squared error between their last decoder self-attention maps
    # the ImcQA reference's KD loss (docs/fidelity.md): no T^2, every target position, the extra KL term
    kd_scale: str = "t2"  # "t2": KD times T^2; "none": as the reference (cal_loss)
    kd_positions: str = "answer"  # "answer": real answer tokens; "all": every position of the logits
    kl_term: bool = False  # add the reference's sigmoid(k) * k term (use_kl)
    output: Path | None = None
    train_dir: Path = DEFAULT_TRAIN_DIR
    # trackers and the best checkpoint (issue 16): not in the identity (report_to is how a session runs)
    report_to: str = "none"  # tensorboard | wandb | none: accelerate's trackers, under the output folder
    keep_best: str | None = None  # an eval metric (em or eval_em): the best dev checkpoint as checkpoints/best


# what only means something with a teacher (--teacher-reader)
DISTILLATION_OPTIONS = ("teacher_imaginer", "teacher_imaginer_args", "teacher_reader_args", "alpha", "temperature",
                        "hidden_weight", "attention_weight")  # fmt: skip
REFERENCE_KD_OPTIONS = ("kd_scale", "kd_positions", "kl_term")  # recorded in the identity only when not the default
DISTILLATION_OPTIONS += REFERENCE_KD_OPTIONS
REFERENCE_OPTIMIZER_OPTIONS = ("no_decay",)  # recorded in the identity only when not the default
KD_SCALES = ("t2", "none")
KD_POSITIONS = ("answer", "all")  # iagbench.lm.distill.KD_POSITIONS, without importing torch


def validate(spec: TrainSpec) -> None:
    """Refuse (ConfigurationError, naming the command-line option) what no training run can be."""
    _validate_counts(spec)
    _check_number("lr", spec.lr, positive=True)
    _check_number("weight_decay", spec.weight_decay)
    if spec.no_decay not in NO_DECAY:
        raise ConfigurationError(f"--no-decay {spec.no_decay}: expected one of {', '.join(NO_DECAY)}")
    _check_number("max_grad_norm", spec.max_grad_norm)
    if spec.schedule not in SCHEDULES:
        raise ConfigurationError(f"--schedule {spec.schedule}: expected one of {', '.join(SCHEDULES)}")
    if spec.mixed_precision not in MIXED_PRECISION:
        raise ConfigurationError(
            f"--mixed-precision {spec.mixed_precision}: expected one of {', '.join(MIXED_PRECISION)}"
        )
    _validate_distillation(spec)
    _validate_tracking(spec)


def _validate_counts(spec: TrainSpec) -> None:
    """Step, batch and example counts: positive integers, or 0 or more; --steps or --epochs."""
    positive = {
        "batch_size": spec.batch_size,
        "grad_accum": spec.grad_accum,
        "log_every": spec.log_every,
        "save_every": spec.save_every,
    }
    for name, value in {
        **positive,
        "steps": spec.steps,
        "limit": spec.limit,
        "eval_limit": spec.eval_limit,
        "eval_batch_size": spec.eval_batch_size,
    }.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    for name in ("warmup_steps", "eval_every", "keep"):
        if getattr(spec, name) < 0:
            raise ConfigurationError(f"--{name.replace('_', '-')} {getattr(spec, name)}: expected 0 or more")
    if spec.steps is not None and spec.epochs is not None:
        raise ConfigurationError("give --steps or --epochs, not both")
    if spec.epochs is not None:
        _check_number("epochs", spec.epochs, positive=True)


def _validate_distillation(spec: TrainSpec) -> None:
    """Distillation options only with a teacher (--teacher-reader), and then within their ranges."""
    if spec.teacher_reader is None:
        given = [
            f"--{name.replace('_', '-')}" for name in DISTILLATION_OPTIONS if getattr(spec, name) != _default(name)
        ]
        if given:
            raise ConfigurationError(f"{', '.join(given)}: distillation options need a teacher (--teacher-reader)")
        return
    _check_number("alpha", spec.alpha, maximum=1.0)
    _check_number("temperature", spec.temperature, positive=True)
    _check_number("hidden_weight", spec.hidden_weight)
    _check_number("attention_weight", spec.attention_weight)
    _check_reference_kd(spec)


def _check_reference_kd(spec: TrainSpec) -> None:
    """--kd-scale, --kd-positions and --kl-term within their choices."""
    if spec.kd_scale not in KD_SCALES:
        raise ConfigurationError(f"--kd-scale {spec.kd_scale}: expected one of {', '.join(KD_SCALES)}")
    if spec.kd_positions not in KD_POSITIONS:
        raise ConfigurationError(f"--kd-positions {spec.kd_positions}: expected one of {', '.join(KD_POSITIONS)}")
    if not isinstance(spec.kl_term, bool):
        raise ConfigurationError(f"--kl-term {spec.kl_term!r}: expected true or false")


REPORT_TO = ("none", "tensorboard", "wandb")
BEST_METRICS = {"em": "eval_em", "eval_em": "eval_em"}  # --keep-best name -> the log.jsonl key it reads


def _validate_tracking(spec: TrainSpec) -> None:
    """--report-to one of REPORT_TO; --keep-best an evaluation metric, and only with --eval-every."""
    if spec.report_to not in REPORT_TO:
        raise ConfigurationError(f"--report-to {spec.report_to}: expected one of {', '.join(REPORT_TO)}")
    if spec.keep_best is None:
        return
    if spec.keep_best not in BEST_METRICS:
        raise ConfigurationError(
            f"--keep-best {spec.keep_best}: expected an evaluation metric ({', '.join(BEST_METRICS)})"
        )
    if not spec.eval_every:
        raise ConfigurationError(
            f"--keep-best {spec.keep_best}: needs --eval-every N (the dev evaluations it compares)"
        )


def _check_number(name: str, value: Any, *, positive: bool = False, maximum: float | None = None) -> None:
    """A finite number, above 0 (``positive``) or 0 or more, and at most ``maximum``; else ConfigurationError naming
    the option (nan and inf pass no comparison, so each is refused by name)."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if number and (value > 0 if positive else value >= 0) and (maximum is None or value <= maximum):
        return
    if maximum is not None:
        expected = f"a number between 0 and {maximum:g}"
    else:
        expected = "a finite number above 0" if positive else "a finite number of 0 or more"
    raise ConfigurationError(f"--{name.replace('_', '-')} {value}: expected {expected}")


def _default(name: str) -> Any:
    """A `TrainSpec` field's default value."""
    spec_field = TrainSpec.__dataclass_fields__[name]
    return spec_field.default_factory() if spec_field.default_factory is not MISSING else spec_field.default


@dataclass
class _Setup:
    """What train() resolves and checks before any process group exists."""

    imaginer: Entry
    reader: Entry
    dataset: Entry
    data: Dataset
    examples: list[Example]
    eval_examples: list[Example]
    em: Metric | None
    deepspeed_config: dict[str, Any] | None
    mixed_precision: str
    teacher_imaginer: Entry | None = None
    teacher_reader: Entry | None = None
