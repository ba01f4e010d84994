"""`iagbench train`: train the trainable parts of an imaginer + reader pair, resumable at any point.

The same code runs as one process (``iagbench train``) or several (``torchrun --nproc_per_node N``,
``accelerate launch``, ``deepspeed``, the latter two with a DeepSpeed config file): accelerate
does data-parallel gradient averaging (or DeepSpeed ZeRO), bf16 on CUDA, gradient accumulation.

Data: the examples of a dataset split, shuffled per epoch with a seeded RNG, epochs one after
another: one stream counted in global examples (all processes together). With a global batch of
``G = batch_size x processes x grad_accum`` examples per optimizer step, step ``s`` trains on
stream positions ``(s-1)*G ... s*G-1``; its micro-batch ``m`` on the ``batch_size x processes``
positions after ``(s-1)*G + m*batch_size*processes``, and each process on its ``batch_size`` slice
of those. So the examples of a step depend on ``G`` alone: not on how it is split into processes
and micro-batches, nor on when training was interrupted, and a run may resume with another number
of processes (``--batch-size``/``--grad-accum`` chosen to keep ``G``).

Output folder (``--output``, default ``trained/<dataset>-<split>__<imaginer>__<reader>__<hash>``):
``train_config.json`` (the resolved configuration, hashed; plugin versions), ``env.json``,
``log.jsonl`` (one line per logged step: loss, lr, examples/s, peak GPU memory on CUDA, eval em), and ``checkpoints/``
(see `iagbench.training.checkpoints`). The same command again resumes from ``checkpoints/latest``:
optimizer, scheduler and RNG states are restored and ``log.jsonl`` continues after the saved step.

Resuming with another number of processes: without DeepSpeed the optimizer state is whole on every
process and loads as it is. DeepSpeed ZeRO shards it by process; so under DeepSpeed every checkpoint
also holds the gathered AdamW moments (``state/optimizer_full.safetensors``) and fp32 weights (the
``*.safetensors`` weights), from which a different number of processes re-shards it; a checkpoint
without that file restarts AdamW from the saved weights, saying so.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from iagbench.version import __version__
from iagbench.training.checkpoints import (
    CHECKPOINTS,
    ROLES,
    latest_checkpoint,
    load_trainable,
    prune,
    remove_partial,
    save_weights,
    step_folder_name,
    weights_file,
    write_latest,
)
from iagbench.contract.components import Dataset, Imaginer, Metric, Reader, Trainable
from iagbench.runs.env import environment
from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.contract.plugins import Plugins
from iagbench.contract.registry import Entry
from iagbench.runs.runner import EXECUTION_KEYS, Resolved, batches, check_compatible, fingerprint, load_examples, plugin_versions
from iagbench.runs.folder import check_configuration, config_hash, diff_paths, folder_name, read_json, write_json_atomic
from iagbench.runs.scoring import score_example
from iagbench.runs.sources import component_identity
from iagbench.contract.types import Context, Example

DEFAULT_TRAIN_DIR = Path("trained")
SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"
STATE = "state"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FULL = "optimizer_full.safetensors"  # under DeepSpeed: AdamW moments of every trainable parameter, whole
MOMENTS = ("exp_avg", "exp_avg_sq")
_LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


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
    output: Path | None = None
    train_dir: Path = DEFAULT_TRAIN_DIR


def validate(spec: TrainSpec) -> None:
    positive = {"batch_size": spec.batch_size, "grad_accum": spec.grad_accum, "log_every": spec.log_every,
                "save_every": spec.save_every}
    for name, value in {**positive, "steps": spec.steps, "limit": spec.limit, "eval_limit": spec.eval_limit,
                        "eval_batch_size": spec.eval_batch_size}.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ConfigurationError(f"--{name.replace('_', '-')} {value}: expected a positive integer")
    for name in ("warmup_steps", "eval_every", "keep"):
        if getattr(spec, name) < 0:
            raise ConfigurationError(f"--{name.replace('_', '-')} {getattr(spec, name)}: expected 0 or more")
    if spec.steps is not None and spec.epochs is not None:
        raise ConfigurationError("give --steps or --epochs, not both")
    if spec.epochs is not None and spec.epochs <= 0:
        raise ConfigurationError(f"--epochs {spec.epochs}: expected a positive number")
    if spec.lr <= 0 or spec.weight_decay < 0 or spec.max_grad_norm < 0:
        raise ConfigurationError("--lr must be positive, --weight-decay and --max-grad-norm 0 or more")
    if spec.schedule not in SCHEDULES:
        raise ConfigurationError(f"--schedule {spec.schedule}: expected one of {', '.join(SCHEDULES)}")
    if spec.mixed_precision not in MIXED_PRECISION:
        raise ConfigurationError(f"--mixed-precision {spec.mixed_precision}: expected one of {', '.join(MIXED_PRECISION)}")
    if spec.teacher_reader is None:
        given = [f"--{name.replace('_', '-')}" for name in DISTILLATION_OPTIONS if getattr(spec, name) != _default(name)]
        if given:
            raise ConfigurationError(f"{', '.join(given)}: distillation options need a teacher (--teacher-reader)")
    else:
        if not 0.0 <= spec.alpha <= 1.0:
            raise ConfigurationError(f"--alpha {spec.alpha}: expected a weight between 0 and 1")
        if not spec.temperature > 0:
            raise ConfigurationError(f"--temperature {spec.temperature}: expected a positive number")
        if spec.hidden_weight < 0 or spec.attention_weight < 0:
            raise ConfigurationError("--hidden-weight and --attention-weight must be 0 or more")


# what only means something with a teacher (--teacher-reader)
DISTILLATION_OPTIONS = ("teacher_imaginer", "teacher_imaginer_args", "teacher_reader_args", "alpha", "temperature",
                        "hidden_weight", "attention_weight")  # fmt: skip


def _default(name: str) -> Any:
    """A `TrainSpec` field's default value."""
    spec_field = TrainSpec.__dataclass_fields__[name]
    return spec_field.default_factory() if spec_field.default_factory is not MISSING else spec_field.default


def read_deepspeed_config(path: Path | None) -> dict[str, Any] | None:
    """The DeepSpeed config: ``--deepspeed``, else the one ``accelerate launch --deepspeed_config_file`` names."""
    if path is None and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        named = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if not named:
            raise ConfigurationError(
                "accelerate launch --use_deepspeed: give a DeepSpeed config file (--deepspeed_config_file, or "
                "iagbench train --deepspeed configs/deepspeed/zero2.json)"
            )
        path = Path(named)
    if path is None:
        return None
    if not Path(path).is_file():
        raise ConfigurationError(f"--deepspeed {path}: no such file")
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(config, dict):
        raise ConfigurationError(f"{path}: expected a JSON object")
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise ConfigurationError(
                f"{path}: remove the '{section}' section: iagbench train sets the optimizer (AdamW, --lr, "
                "--weight-decay) and the schedule (--schedule, --warmup-steps) itself"
            )
    zero = config.get("zero_optimization") or {}
    if zero_stage(config) == 3 and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
        raise ConfigurationError(
            f"{path}: ZeRO-3 needs \"stage3_gather_16bit_weights_on_model_save\": true in zero_optimization "
            "(checkpoints hold the whole trainable weights, gathered from every process)"
        )
    return config


def zero_stage(config: dict[str, Any] | None) -> int:
    """The ZeRO stage of a DeepSpeed config (0 without one)."""
    if not config:
        return 0
    try:
        return int((config.get("zero_optimization") or {}).get("stage", 0))
    except (TypeError, ValueError):
        raise ConfigurationError("DeepSpeed config: zero_optimization.stage must be 0, 1, 2 or 3") from None


def resolve_mixed_precision(choice: str) -> str:
    import torch

    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def make_accelerator(spec: TrainSpec, deepspeed_config: dict[str, Any] | None, mixed_precision: str) -> Any:
    """An Accelerator for plain python, torchrun, accelerate launch or the deepspeed launcher, CPU or CUDA."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    options: dict[str, Any] = {
        "gradient_accumulation_steps": spec.grad_accum,
        "mixed_precision": mixed_precision,
        "step_scheduler_with_optimizer": False,
    }
    if deepspeed_config is not None:
        if "LOCAL_RANK" not in os.environ:  # no launcher: DeepSpeed still wants a (one-process) process group
            os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        options["deepspeed_plugin"] = DeepSpeedPlugin(
            hf_ds_config=copy.deepcopy(deepspeed_config),
            gradient_accumulation_steps=spec.grad_accum,
            gradient_clipping=spec.max_grad_norm,
        )
        if not cuda:  # accelerate picks no backend for DeepSpeed on the CPU and would see one process per rank
            options["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    elif not cuda:
        options["cpu"] = True  # torchrun on the CPU: gloo, data-parallel over processes
    accelerator = Accelerator(**options)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        config = plugin.deepspeed_config
        micro = config.get("train_micro_batch_size_per_gpu", "auto")
        if micro == "auto":
            config["train_micro_batch_size_per_gpu"] = spec.batch_size
        elif micro != spec.batch_size:
            raise ConfigurationError(
                f"DeepSpeed config: train_micro_batch_size_per_gpu={micro} but --batch-size {spec.batch_size}; "
                "set it to \"auto\""
            )
    return accelerator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trainable(component: Any) -> Any:
    return component.trainable_module() if isinstance(component, Trainable) else None


def _has_loss(component: Imaginer | Reader) -> bool:
    return isinstance(component, Trainable) and component.has_loss()


class _Batch:
    """Examples passed through DDP/DeepSpeed forward untouched (they move no tensors)."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)


def _objective(imaginer: Imaginer, reader: Reader, parts: Any, distiller: _Distiller | None = None) -> Any:
    """A module over the trainable parts whose forward is the training loss (what DDP and DeepSpeed wrap)."""
    import torch

    class Objective(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = parts
            # not submodules: their frozen parts (and the teacher) stay out of DDP / DeepSpeed
            self.__dict__["_components"] = (imaginer, reader, distiller)

        def forward(self, batch: _Batch) -> Any:
            imaginer, reader, distiller = self.__dict__["_components"]
            if _has_loss(imaginer):  # an imaginer with its own objective (e.g. `imagine`) trains alone
                return imaginer.loss(batch.examples, [Context() for _ in batch.examples])
            contexts = imaginer.imagine(batch.examples)
            if len(contexts) != len(batch.examples):
                raise ConfigurationError(f"imaginer returned {len(contexts)} contexts for {len(batch.examples)} examples")
            if distiller is not None:
                return distiller.loss(reader, batch.examples, contexts)
            return reader.loss(batch.examples, contexts)

    return Objective()


STUDENT_METHODS = ("answer_logits", "target_ids", "training_targets")


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

    def __init__(self, spec: TrainSpec, imaginer: Imaginer, reader: Reader):
        self.spec, self.imaginer, self.reader = spec, imaginer, reader
        self.step = 0
        self.parts: dict[str, Any] = {}
        for component in (imaginer, reader):
            _freeze(component)

    def temperature(self) -> float:
        from iagbench.lm.distill import temperature_at

        return temperature_at(self.step, self.spec.temperature)

    def loss(self, student: Reader, examples: Sequence[Example], contexts: Sequence[Context]) -> Any:
        import torch
        from iagbench.lm.distill import distillation_loss

        spec = self.spec
        hidden, attention = spec.hidden_weight > 0, spec.attention_weight > 0
        targets = student.training_targets(examples)  # type: ignore[attr-defined]
        with torch.no_grad():
            teacher_contexts = self.imaginer.imagine(examples)
            if len(teacher_contexts) != len(examples):
                raise ConfigurationError(f"teacher imaginer returned {len(teacher_contexts)} contexts for {len(examples)} examples")
            with _decoder_outputs(self.reader, "teacher reader", hidden, attention) as teacher_states:
                teacher_logits, teacher_mask = self.reader.answer_logits(examples, teacher_contexts, targets)  # type: ignore[attr-defined]
        with _decoder_outputs(student, "reader", hidden, attention) as student_states:
            student_logits, mask = student.answer_logits(examples, contexts, targets)  # type: ignore[attr-defined]
        labels, _ = student.target_ids(targets)  # type: ignore[attr-defined]
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
            attention_weight=spec.attention_weight,
        )  # fmt: skip
        self.parts = {name: value.detach().float() for name, value in result._asdict().items()
                      if name != "total" and value is not None}  # fmt: skip
        return result.total


def _freeze(component: Any) -> None:
    """Evaluation mode and no parameter that requires grad: the trainable module and the component's ``model``."""
    if isinstance(component, Trainable):
        component.train(False)
    for module in (_trainable(component), getattr(component, "model", None)):
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
                    + (" (load it with attn_implementation='eager' to get attention maps)" if name == "attention" else "")
                )
            states[name] = layers[-1]

    handles = [model.register_forward_pre_hook(ask, with_kwargs=True), model.register_forward_hook(keep, with_kwargs=True)]
    try:
        yield states
    finally:
        for handle in handles:
            handle.remove()


def _check_distillable(student: Reader, teacher: Reader, student_name: str, teacher_name: str) -> None:
    """Both readers score answer tokens (``answer_logits``); the student also makes targets; one tokenizer."""
    for reader, name, role, methods in ((student, student_name, "reader", STUDENT_METHODS),
                                        (teacher, teacher_name, "teacher reader", ("answer_logits",))):  # fmt: skip
        missing = [method for method in methods if not callable(getattr(reader, method, None))]
        if missing:
            raise ConfigurationError(
                f"distillation: {role} '{name}' lacks {', '.join(missing)} (a reader is distilled through "
                "answer_logits(examples, contexts, targets) -> (logits, target_mask), as fid-t5's)"
            )
    ours, theirs = getattr(student, "tokenizer", None), getattr(teacher, "tokenizer", None)
    if ours is not None and theirs is not None and ours is not theirs:
        vocab = getattr(ours, "get_vocab", None)
        same = vocab() == theirs.get_vocab() if callable(vocab) and callable(getattr(theirs, "get_vocab", None)) else True
        if not same or len(ours) != len(theirs):
            raise ConfigurationError(
                f"distillation: reader '{student_name}' and teacher reader '{teacher_name}' have different tokenizers "
                f"({len(ours)} and {len(theirs)} tokens{'' if len(ours) != len(theirs) else ', different vocabularies'}): "
                "the KD loss compares their distributions token by token over the same answer tokens; choose a teacher "
                "with the student's tokenizer (every T5 size shares one)"
            )


def _optimizer(parts: Any, lr: float, weight_decay: float) -> Any:
    """AdamW; no weight decay on biases and norms (parameters of fewer than 2 dimensions)."""
    import torch

    params = [p for p in parts.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(step: int, schedule: str, warmup: int, total: int) -> float:
    """The learning-rate multiplier after ``step`` steps: transformers' linear, cosine and constant_with_warmup."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def lr_scheduler(optimizer: Any, schedule: str, warmup: int, total: int) -> Any:
    """The schedules of ``transformers.get_scheduler``, without importing transformers (seconds per process)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, schedule=schedule, warmup=warmup, total=total)
    )


class _Stream:
    """The deterministic stream of training examples, in global positions (all processes together).

    Epoch ``e`` is every example once, in an order shuffled with ``seed`` and ``e``; epochs follow
    one another without a gap, so position ``p`` is example ``order(p // n)[p % n]``.
    """

    def __init__(self, examples: Sequence[Example], seed: int):
        self.examples, self.seed = list(examples), seed
        self._orders: dict[int, list[int]] = {}

    def position(self, position: int) -> tuple[int, int]:
        """(epoch, index in that epoch) of a stream position."""
        return divmod(position, len(self.examples))

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if len(self._orders) > 1:  # keep the latest two: a batch spans at most an epoch boundary
                del self._orders[min(self._orders)]
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def take(self, start: int, count: int) -> list[Example]:
        """The examples at positions ``start ... start+count-1``."""
        out = []
        for position in range(start, start + count):
            epoch, index = self.position(position)
            out.append(self.examples[self._order(epoch)[index]])
        return out


@dataclass(frozen=True)
class _Layout:
    """How one session splits each optimizer step's global batch: processes x micro-batch x accumulation."""

    processes: int
    rank: int
    batch_size: int
    grad_accum: int

    @property
    def micro(self) -> int:  # examples per micro-batch, all processes
        return self.batch_size * self.processes

    @property
    def global_batch(self) -> int:  # examples per optimizer step
        return self.micro * self.grad_accum

    def batch(self, stream: _Stream, step: int, micro: int) -> list[Example]:
        """This process's examples of micro-batch ``micro`` of optimizer step ``step`` (from 1)."""
        start = (step - 1) * self.global_batch + micro * self.micro + self.rank * self.batch_size
        return stream.take(start, self.batch_size)

    def describe(self) -> dict[str, int]:
        return {"processes": self.processes, "batch_size": self.batch_size, "grad_accum": self.grad_accum,
                "global_batch": self.global_batch}


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


def train(
    spec: TrainSpec,
    plugins: Plugins,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
    non_default: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or just report) the training run ``spec`` defines; return its folder and a summary."""
    validate(spec)
    imaginer = plugins["imaginers"].get(spec.imaginer)
    reader = plugins["readers"].get(spec.reader)
    check_compatible(imaginer, reader)
    dataset = plugins["datasets"].get(spec.dataset)
    em = plugins["metrics"].get("em").build() if spec.eval_every else None
    data = dataset.build(**spec.dataset_args)
    setup = _Setup(
        imaginer,
        reader,
        dataset,
        data,
        load_examples(data, spec.split, spec.limit, dataset.name),
        load_examples(data, spec.eval_split, spec.eval_limit, dataset.name) if em else [],
        em,
        read_deepspeed_config(spec.deepspeed),
        resolve_mixed_precision(spec.mixed_precision),
    )
    if spec.teacher_reader is not None:
        setup.teacher_imaginer = plugins["imaginers"].get(spec.teacher_imaginer or "none")
        setup.teacher_reader = plugins["readers"].get(spec.teacher_reader)
        check_compatible(setup.teacher_imaginer, setup.teacher_reader)
    saved_env = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    accelerator = make_accelerator(spec, setup.deepspeed_config, setup.mixed_precision)
    try:
        return _train(spec, plugins, setup, accelerator, progress, log if accelerator.is_main_process else _quiet, non_default)
    finally:
        _release(accelerator, saved_env)


def _quiet(message: str) -> None:
    pass


def _release(accelerator: Any, saved_env: dict[str, str | None]) -> None:
    """End the process group and forget accelerate's process-wide state, so a later train() starts afresh."""
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedType

    accelerator.end_training()
    if accelerator.device.type == "cpu" and accelerator.distributed_type == DistributedType.DEEPSPEED:
        _remove_cpu_allreduce_buffers()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _remove_cpu_allreduce_buffers() -> None:
    """Unlink DeepSpeed's CPU all-reduce buffers of this launch (66 MiB in /dev/shm per process, left behind at exit).

    Every process of the launch mapped them all at start-up and keeps its mappings until it exits, so the
    first process to finish may unlink them for all.
    """
    address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if address and port:
        for path in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_{address}_{port}_*"):
            path.unlink(missing_ok=True)


def _identity(spec: TrainSpec, setup: _Setup, total: int, layout: _Layout) -> dict[str, Any]:
    """What makes two training runs the same run; hashed into the folder name, checked on resume.

    The batch counts as the global batch (examples per optimizer step), not as its split into
    processes, micro-batches and accumulation: that is how one session runs it (``execution``).
    """
    ident: dict[str, Any] = {
        "dataset": {
            "name": setup.dataset.name,
            "split": spec.split,
            "options": {k: v for k, v in spec.dataset_args.items() if k not in EXECUTION_KEYS},
            "fingerprint": fingerprint(setup.examples),
            "n": len(setup.examples),
        },
        "imaginer": component_identity(setup.imaginer.name, spec.imaginer_args),
        "reader": component_identity(setup.reader.name, spec.reader_args),
        "limit": spec.limit,
        "seed": spec.seed,
        "training": {
            "steps": total,
            "epochs": spec.epochs,
            "global_batch": layout.global_batch,
            "lr": spec.lr,
            "weight_decay": spec.weight_decay,
            "warmup_steps": spec.warmup_steps,
            "schedule": spec.schedule,
            "max_grad_norm": spec.max_grad_norm,
            "mixed_precision": setup.mixed_precision,
            "deepspeed": setup.deepspeed_config,
        },
    }
    if setup.teacher_reader is not None:  # absent without a teacher: earlier runs keep their identity
        assert setup.teacher_imaginer is not None
        ident["distillation"] = {
            "teacher_imaginer": component_identity(setup.teacher_imaginer.name, spec.teacher_imaginer_args),
            "teacher_reader": component_identity(setup.teacher_reader.name, spec.teacher_reader_args),
            "alpha": spec.alpha,
            "temperature": spec.temperature,
            "temperature_schedule": "temperature_at(step, T0) = T0 / (1 + ln(1 + step // 500))",
            "hidden_weight": spec.hidden_weight,
            "attention_weight": spec.attention_weight,
        }
    return ident


def _execution(spec: TrainSpec, layout: _Layout) -> dict[str, Any]:
    """How this session runs the training (may change between sessions of one run)."""
    return {**layout.describe(), "gradient_checkpointing": spec.gradient_checkpointing}


def _build(spec: TrainSpec, setup: _Setup) -> tuple[Imaginer, Reader, Any, list[Any], _Distiller | None]:
    """The components, built with the seed set, a ModuleDict of their trainable modules, the layers to checkpoint,
    and the teacher (built after the student, so the student's initialisation does not depend on it)."""
    import torch
    from accelerate.utils import set_seed

    set_seed(spec.seed)
    imaginer: Imaginer = setup.imaginer.build(**spec.imaginer_args)
    reader: Reader = setup.reader.build(**spec.reader_args)
    modules = {role: _trainable(component) for role, component in (("imaginer", imaginer), ("reader", reader))}
    modules = {role: module for role, module in modules.items() if module is not None}
    names = f"imaginer '{setup.imaginer.name}' nor reader '{setup.reader.name}'"
    if not modules:
        raise ConfigurationError(f"nothing to train: neither {names} has trainable parts (Trainable.trainable_module())")
    if _has_loss(imaginer):
        if setup.teacher_reader is not None:
            raise ConfigurationError(
                f"--teacher-reader: imaginer '{setup.imaginer.name}' trains on its own loss, not through the reader's "
                "answer logits; distillation trains a reader's answers (e.g. imagine+hyperlora with imagine train=false)"
            )
        if "reader" in modules:
            raise ConfigurationError(
                f"imaginer '{setup.imaginer.name}' trains on its own loss, which gives reader '{setup.reader.name}' no "
                "gradient: give a reader without trainable parts (it then only serves evaluation)"
            )
    elif setup.teacher_reader is None and not _has_loss(reader):
        raise ConfigurationError(
            f"reader '{setup.reader.name}' cannot compute a training loss (it does not implement Trainable.loss)"
        )
    parts = torch.nn.ModuleDict(modules)
    if not any(p.requires_grad for p in parts.parameters()):
        raise ConfigurationError(f"nothing to train: the trainable modules of neither {names} have parameters that require grad")
    layers = enable_gradient_checkpointing((imaginer, reader), names) if spec.gradient_checkpointing else []
    distiller = None
    if setup.teacher_reader is not None:
        assert setup.teacher_imaginer is not None
        teacher_reader: Reader = setup.teacher_reader.build(**spec.teacher_reader_args)
        _check_distillable(reader, teacher_reader, setup.reader.name, setup.teacher_reader.name)
        teacher_imaginer: Imaginer = setup.teacher_imaginer.build(**spec.teacher_imaginer_args)
        distiller = _Distiller(spec, teacher_imaginer, teacher_reader)
    return imaginer, reader, parts, layers, distiller


def enable_gradient_checkpointing(components: Sequence[Any], names: str = "the components") -> list[Any]:
    """Turn on activation checkpointing in each component's transformers model (its ``model``).

    Non-reentrant checkpointing (``use_reentrant=False``): it needs no inputs that require grad (the
    reentrant kind does, hence ``enable_input_require_grads`` for frozen models) and lets gradients
    reach tensors a layer reads from outside its inputs. Returns the modules that now checkpoint:
    transformers checkpoints a layer only while it is in training mode, and a frozen model stays in
    evaluation mode, so the trainer switches these modules' own ``training`` flag (not their
    children's: dropout stays as the component set it).
    """
    layers: list[Any] = []
    for component in components:
        model = getattr(component, "model", None)
        enable = getattr(model, "activation_checkpointing_enable", None)
        if callable(enable):  # transformers 5
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif callable(getattr(model, "gradient_checkpointing_enable", None)):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            continue
        layers += [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    if not layers:
        raise ConfigurationError(
            f"--gradient-checkpointing: neither {names} has a transformers model (a 'model' attribute that "
            "supports gradient checkpointing) to checkpoint"
        )
    return layers


def _train(spec, plugins, setup: _Setup, accelerator, progress, say, non_default) -> tuple[Path, dict[str, Any]]:
    main = accelerator.is_main_process
    layout = _Layout(accelerator.num_processes, accelerator.process_index, spec.batch_size, spec.grad_accum)
    n = len(setup.examples)
    if layout.micro > n:
        raise ConfigurationError(
            f"{n} training examples make no batch of {spec.batch_size} x {layout.processes} processes; lower --batch-size"
        )
    stream = _Stream(setup.examples, spec.seed)
    total = spec.steps or max(1, int((spec.epochs or 1) * n) // layout.global_batch)
    ident = _identity(spec, setup, total, layout)
    digest = config_hash(ident)
    name = folder_name(setup.dataset.name, spec.split, setup.imaginer.name, setup.reader.name, digest)
    output = Path(spec.output or spec.train_dir / name)
    checkpoints = output / CHECKPOINTS
    versions = plugin_versions(plugins, Resolved(setup.dataset, setup.imaginer, setup.reader, []))
    if (output / TRAIN_CONFIG).exists():
        _check_folder(output, ident, versions, layout)
        done = latest_checkpoint(checkpoints)
        if done is not None and read_json(done / TRAINER_STATE)["step"] >= total:
            say(f"training already finished: {done} (step {total})")
            return output, _summary(output, done)

    imaginer, reader, parts, checkpointed, distiller = _build(spec, setup)
    deepspeed = setup.deepspeed_config is not None
    resume_from = latest_checkpoint(checkpoints)
    saved = read_json(resume_from / TRAINER_STATE) if resume_from is not None else {}
    saved_processes = saved.get("processes", layout.processes)
    reshard = resume_from is not None and deepspeed and saved_processes != layout.processes
    if resume_from is None:  # a fresh start: components fit what they fit once (into buffers)
        for component in (imaginer, reader):
            prepare = getattr(component, "prepare", None)
            if isinstance(component, Trainable) and callable(prepare):
                prepare(setup.examples)
    elif reshard:  # ZeRO's shards fit their number of processes only: start from the whole weights instead
        for role, component in (("imaginer", imaginer), ("reader", reader)):
            if _trainable(component) is not None:
                load_trainable(component, resume_from, role)
    model = _objective(imaginer, reader, parts, distiller)
    optimizer = _optimizer(parts, spec.lr, spec.weight_decay)
    scheduler = lr_scheduler(optimizer, spec.schedule, spec.warmup_steps, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    if main:
        _start_folder(output, {
            "name": name,
            "hash": digest,
            "identity": ident,
            "execution": _execution(spec, layout),
            "plugins": versions,
            "dataset_source": setup.data.describe(spec.split),
            "eval": {"split": spec.eval_split, "limit": spec.eval_limit, "every": spec.eval_every} if setup.em else None,
            "iagbench_version": __version__,
            "non_default_options": non_default or {},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        remove_partial(checkpoints)
    accelerator.wait_for_everyone()

    start, restored = saved.get("step", 0), False
    if resume_from is not None and not reshard:
        accelerator.load_state(str(resume_from / STATE))
    elif reshard:
        restored = _reshard(model, resume_from)
        _load_scheduler_and_rng(scheduler, resume_from / STATE, layout.rank)
    if main:
        _truncate_log(output / LOG, start)
    if resume_from is not None:
        say(f"resuming {output} from {resume_from.name} (step {start} of {total}) with {layout.processes} process(es)")
        if saved_processes != layout.processes:
            change = f"world size changed {saved_processes} -> {layout.processes}"
            if not deepspeed:
                say(f"{change}: without DeepSpeed the optimizer state is whole on every process and loads as saved")
            elif restored:
                say(f"{change}: DeepSpeed ZeRO-{zero_stage(setup.deepspeed_config)} optimizer state re-sharded from "
                    f"the checkpoint's whole fp32 weights and AdamW moments ({STATE}/{OPTIMIZER_FULL})")
            else:
                say(f"{change}: {resume_from.name} has no whole copy of the optimizer state ({STATE}/{OPTIMIZER_FULL}) "
                    f"and DeepSpeed's, saved by {saved_processes} process(es), does not load into {layout.processes}: "
                    "optimizer restarted from the saved weights (AdamW moments reset; the learning-rate schedule "
                    "continues)")
    else:
        say(f"training {output}: {total} steps of {layout.global_batch} examples ({spec.batch_size} x "
            f"{layout.processes} process(es) x {spec.grad_accum}), {n} examples")
    accelerator.wait_for_everyone()

    trainer = _Trainer(
        spec, accelerator, model, optimizer, scheduler, imaginer, reader, stream, layout, output, total, ident, digest,
        setup.em, setup.eval_examples, deepspeed, zero_stage(setup.deepspeed_config), checkpointed, distiller,
    )
    if setup.em is not None and start == 0:
        trainer.log({"step": 0, **trainer.evaluate()})
    trainer.run(start, progress=progress and main)
    accelerator.wait_for_everyone()
    final = latest_checkpoint(checkpoints)
    assert final is not None
    return output, _summary(output, final)


def _gather_zero(engine: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The fp32 weights and AdamW moments of every trainable parameter, whole, from DeepSpeed's shards.

    Collective: every process calls it, and gets the whole tensors (``step``: AdamW's step count).
    None where DeepSpeed keeps no fp32 shards (ZeRO stage 0 without bf16: the optimizer is ours, whole).
    """
    import torch
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _link_zero_views(engine.optimizer)
    weights, moments = {}, {}
    for name, param in engine.module.named_parameters():  # the same order on every process
        if not param.requires_grad:
            continue
        full = safe_get_full_fp32_param(param)
        if full is None:
            return None
        weights[name] = full.detach().float().cpu()
        for key in MOMENTS:
            moments[f"{name}.{key}"] = safe_get_full_optimizer_state(param, key).detach().float().cpu()
    steps = [float(state["step"]) for state in engine.optimizer.optimizer.state.values() if "step" in state]
    moments["step"] = torch.tensor(max(steps, default=0.0), dtype=torch.float64)
    return weights, moments


def _link_zero_views(zero: Any) -> None:
    """(Re)link ZeRO-1/2's per-parameter views of AdamW's state, which ``safe_*_full_optimizer_state`` read and write.

    DeepSpeed links them once, after stepping the first parameter group, when the other groups have
    no state yet (0.19): their views stay empty. Linking again once every group has state fixes that
    (AdamW updates its state in place, so the views stay valid). ZeRO-3 needs no views.
    """
    link = getattr(zero, "_lazy_init_hp_params_optimizer_state", None)
    if callable(link) and hasattr(zero, "_hp_optimizer_states_linked"):
        zero._hp_optimizer_states_linked = False
        link()


def _reshard(engine: Any, checkpoint: Path) -> bool:
    """Load a checkpoint's whole fp32 weights and AdamW moments into this world size's ZeRO shards.

    The module already holds the checkpoint's weights (loaded before ``prepare``); this restores
    the fp32 master copies (exact under bf16) and the optimizer. False if the checkpoint has no
    whole moments (nothing is changed then).
    """
    import torch
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state
    from safetensors.torch import load_file

    file = checkpoint / STATE / OPTIMIZER_FULL
    if not file.is_file():
        return False
    moments = load_file(str(file))
    step = float(moments.pop("step"))
    weights = {
        f"parts.{role}.{key}": value
        for role in ROLES
        if (checkpoint / weights_file(role)).is_file()
        for key, value in load_file(str(checkpoint / weights_file(role))).items()
    }
    zero = engine.optimizer  # ZeRO's wrapper; .optimizer is our AdamW over its flat fp32 partitions
    base = zero.optimizer
    flats = getattr(zero, "fp32_partitioned_groups_flat", None)  # ZeRO-3
    if flats is None:  # ZeRO-1/2
        flats = getattr(zero, "single_partition_of_fp32_groups", None) or [p for g in base.param_groups for p in g["params"]]
    on_device = base.defaults.get("capturable") or base.defaults.get("fused")
    for flat in flats:
        state = base.state[flat]
        if not state:  # AdamW makes its state at the first step; ZeRO's per-parameter views need it now
            state["step"] = torch.tensor(step, dtype=torch.float32, device=flat.device if on_device else None)
            for key in MOMENTS:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    _link_zero_views(zero)
    for name, param in engine.module.named_parameters():
        if not param.requires_grad:
            continue
        safe_set_full_fp32_param(param, weights[name].float())
        for key in MOMENTS:
            safe_set_full_optimizer_state(param, moments[f"{name}.{key}"], key)
    return True


def _load_scheduler_and_rng(scheduler: Any, state: Path, rank: int) -> None:
    """What ``accelerator.load_state`` restores besides model and optimizer: the schedule and this rank's RNG states."""
    from accelerate.checkpointing import load_accelerator_state, load_custom_state

    load_custom_state(scheduler, str(state), 0)
    for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):  # as a loaded optimizer would have
        group["lr"] = lr
    load_accelerator_state(str(state), [], [], [], [], rank, map_location="cpu")  # RNG only; a new rank has none


@dataclass
class _Trainer:
    """The loop, evaluation and checkpointing of one training run (every process runs one)."""

    spec: TrainSpec
    accelerator: Any
    model: Any  # the prepared objective: DDP / DeepSpeed engine / the module itself
    optimizer: Any
    scheduler: Any
    imaginer: Imaginer
    reader: Reader
    stream: _Stream
    layout: _Layout
    output: Path
    total: int
    ident: dict[str, Any]
    digest: str
    em: Metric | None
    eval_examples: list[Example]
    deepspeed: bool = False
    zero_stage: int = 0  # DeepSpeed's ZeRO stage
    checkpointed: list[Any] = field(default_factory=list)  # modules that recompute their activations in backward
    distiller: _Distiller | None = None  # the teacher, with distillation
    last: dict[str, Any] = field(default_factory=dict)  # the latest logged values, kept in trainer_state.json

    @property
    def trainables(self) -> list[Any]:
        return [c for c in (self.imaginer, self.reader) if _trainable(c) is not None]

    def _mode(self, training: bool) -> None:
        for component in self.trainables:
            component.train(training)
        for module in self.checkpointed:
            module.training = training

    def run(self, start: int, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        spec, accelerator, layout = self.spec, self.accelerator, self.layout
        self._mode(True)
        examples_since, clock = 0, time.perf_counter()
        with tqdm(total=self.total, initial=start, disable=not progress, desc="steps", unit="step") as bar:
            for step in range(start + 1, self.total + 1):
                losses, parts = [], []
                if self.distiller is not None:
                    self.distiller.step = step - 1  # optimizer steps done: the first step is at T0
                for micro in range(spec.grad_accum):
                    batch = layout.batch(self.stream, step, micro)
                    with accelerator.accumulate(self.model):
                        loss = self.model(_Batch(batch))
                        self._backward(loss)
                        if accelerator.sync_gradients and spec.max_grad_norm:
                            accelerator.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    losses.append(loss.detach().float())
                    if self.distiller is not None:
                        parts.append(self.distiller.parts)
                    examples_since += len(batch) * layout.processes
                if not accelerator.sync_gradients:
                    raise RuntimeError(f"step {step}: gradient accumulation is out of step with accelerate")
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                record: dict[str, Any] = {}
                if step % spec.log_every == 0 or step == self.total:
                    loss_value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
                    elapsed = time.perf_counter() - clock
                    record.update({
                        "step": step,
                        "epoch": round(step * layout.global_batch / len(self.stream.examples), 4),
                        "loss": loss_value,
                        "lr": lr,
                        "examples_per_s": round(examples_since / elapsed, 2) if elapsed > 0 else None,
                    })
                    if accelerator.device.type == "cuda":  # this process's high-water mark since the start
                        record["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 2)
                    examples_since, clock = 0, time.perf_counter()
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    if parts:  # the distillation loss's parts, averaged as the loss is
                        for name in parts[0]:
                            mean = torch.stack([part[name] for part in parts]).mean()
                            record[name] = accelerator.reduce(mean, reduction="mean").item()
                        record["temperature"] = self.distiller.temperature()  # type: ignore[union-attr]
                if self.em is not None and (step % spec.eval_every == 0 or step == self.total):
                    record.update({"step": step, **self.evaluate()})
                if record:
                    self.log(record)
                if step % spec.save_every == 0 or step == self.total:
                    self.save(step)
                bar.update(1)

    def _backward(self, loss: Any) -> None:
        from torch.utils.checkpoint import CheckpointError

        try:
            self.accelerator.backward(loss)
        except CheckpointError as error:
            if not self.checkpointed:
                raise
            raise ConfigurationError(
                "--gradient-checkpointing: recomputing the checkpointed layers in backward did not repeat their "
                f"forward ({str(error).strip().splitlines()[0]}): something changes those layers from outside only "
                "while the forward runs (e.g. forward hooks active in a context, as per-example adapters are); "
                "train without --gradient-checkpointing"
            ) from None

    def _whole_weights(self) -> Any:
        """Under ZeRO-3 the trainable weights are partitioned and gathered per layer call, a collective that every
        process must make equally often; generation does not (its rows finish at different steps). So evaluation
        gathers them whole on every process once, and runs without ZeRO's hooks."""
        import contextlib

        if self.zero_stage != 3:
            return contextlib.nullcontext()
        from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

        return unwrap_model_for_generation(self.model)

    def evaluate(self) -> dict[str, Any]:
        """em (percent) of the eval examples, each process scoring its share, in eval mode without gradients."""
        import torch
        from accelerate.utils import gather_object

        accelerator, examples = self.accelerator, self.eval_examples
        processes, rank = accelerator.num_processes, accelerator.process_index
        share = math.ceil(len(examples) / processes)
        mine = examples[rank::processes]
        padded = mine + [examples[0]] * (share - len(mine))  # the same number of batches on every process
        self._mode(False)
        scores: list[float] = []
        try:
            with torch.no_grad(), accelerator.autocast(), self._whole_weights():
                for batch in batches(padded, self.spec.eval_batch_size or self.spec.batch_size, order="dataset"):
                    contexts = self.imaginer.imagine(batch)
                    answers = self.reader.answer(batch, contexts)
                    if len(contexts) != len(batch) or len(answers) != len(batch):
                        raise ConfigurationError(f"evaluation: {len(contexts)} contexts, {len(answers)} answers for {len(batch)} examples")
                    for example, context, answer in zip(batch, contexts, answers):
                        scores.append(score_example([self.em], str(answer), example.answers, context.passages).get("em", 0.0))
        finally:
            self._mode(True)
        gathered = gather_object([scores[: len(mine)]])
        every = [score for part in gathered for score in part]
        return {"eval_em": 100.0 * sum(every) / len(every), "eval_n": len(every)}

    def log(self, record: dict[str, Any]) -> None:
        self.last.update(record)
        if self.accelerator.is_main_process:
            with open(self.output / LOG, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def save(self, step: int) -> None:
        """Write checkpoints/step-N as step-N.tmp, rename it when complete, then point ``latest`` at it."""
        accelerator, checkpoints, layout = self.accelerator, self.output / CHECKPOINTS, self.layout
        name = step_folder_name(step)
        tmp, final = checkpoints / f"{name}.tmp", checkpoints / name
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / STATE))  # every process writes its part (RNG states, ZeRO shards)
        state_dict = accelerator.get_state_dict(self.model)  # on every process: ZeRO-3 gathers the weights
        # under DeepSpeed: the fp32 weights (not their bf16 copies) and the moments, whole, for any world size
        whole = _gather_zero(self.model) if self.deepspeed else None
        accelerator.wait_for_everyone()  # all parts written before the folder is renamed
        if accelerator.is_main_process:
            if whole is not None:
                state_dict = {**state_dict, **whole[0]}
                save_weights(whole[1], tmp / STATE / OPTIMIZER_FULL)
            files = {}
            for role in ROLES:
                prefix = f"parts.{role}."
                weights = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
                if weights:
                    save_weights(weights, tmp / weights_file(role))
                    files[role] = weights_file(role)
            seen = step * layout.global_batch
            epoch, index = self.stream.position(seen)
            write_json_atomic(tmp / "config.json", {
                "step": step,
                "total_steps": self.total,
                "imaginer": {**self.ident["imaginer"], "weights": files.get("imaginer")},
                "reader": {**self.ident["reader"], "weights": files.get("reader")},
                "train_config_hash": self.digest,
                "iagbench_version": __version__,
            })
            write_json_atomic(tmp / TRAINER_STATE, {
                "step": step,
                "epoch": epoch,
                "index_in_epoch": index,
                "examples_seen": seen,
                "processes": layout.processes,
                "execution": _execution(self.spec, layout),
                "last_log": self.last,
            })
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_latest(checkpoints, name)
            prune(checkpoints, self.spec.keep)
        accelerator.wait_for_everyone()


def _check_folder(output: Path, ident: dict[str, Any], versions: dict[str, Any], layout: _Layout) -> None:
    previous = read_json(output / TRAIN_CONFIG)
    recorded = (previous.get("identity") or {}).get("training", {}).get("global_batch")
    if diff_paths(previous.get("identity"), ident) == ["training.global_batch"] and recorded is not None:
        raise RunFolderError(
            f"{output}: trained with a global batch of {recorded} examples per step, this command gives "
            f"{layout.global_batch} (--batch-size {layout.batch_size} x {layout.processes} process(es) x --grad-accum "
            f"{layout.grad_accum}); to resume with {layout.processes} process(es) choose --batch-size and --grad-accum "
            f"whose product is {recorded / layout.processes:g}, or choose another --output"
        )
    check_configuration(output / TRAIN_CONFIG, previous, ident, versions, "training configuration")


def _start_folder(output: Path, config: dict[str, Any]) -> None:
    env_path = output / "env.json"
    if not (output / TRAIN_CONFIG).exists():
        output.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output / TRAIN_CONFIG, config)
        write_json_atomic(env_path, environment())
        return
    recorded = read_json(env_path) if env_path.exists() else {}
    recorded.setdefault("resumed", []).append(environment())
    write_json_atomic(env_path, recorded)


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (the checkpoint resumed from; 0: none); drop later ones and a cut-off line."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:  # a last line without "\n" was cut short
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if step > 0 and record.get("step", 0) <= step:
            kept.append(line + "\n")
    tmp = path.with_name(LOG + ".tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    os.replace(tmp, path)


def read_log(output: Path) -> list[dict[str, Any]]:
    path = Path(output) / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


def _summary(output: Path, checkpoint: Path) -> dict[str, Any]:
    state = read_json(checkpoint / TRAINER_STATE)
    last = state.get("last_log", {})
    return {
        "output": str(output),
        "checkpoint": str(checkpoint),
        "step": state["step"],
        "loss": last.get("loss"),
        "eval_em": last.get("eval_em"),
    }
