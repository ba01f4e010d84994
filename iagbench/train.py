"""`iagbench train`: train the trainable parts of an imaginer + reader pair, resumable at any point.

The same code runs as one process (``iagbench train``) or several (``torchrun --nproc_per_node N``,
``accelerate launch``, ``deepspeed``, the latter two with a DeepSpeed config file): accelerate
does data-parallel gradient averaging (or DeepSpeed ZeRO), bf16 on CUDA, gradient accumulation.

Data: the examples of a dataset split, shuffled per epoch with a seeded RNG; the shuffled list is
cut into global micro-batches of ``batch_size x processes`` examples (a remainder smaller than one is
dropped that epoch) and each process takes its slice of each, so the examples of optimizer step
``s`` do not depend on when training was interrupted. Step ``s`` uses global micro-batches
``(s-1)*grad_accum ... s*grad_accum-1`` of the stream of epochs.

Output folder (``--output``, default ``trained/<dataset>-<split>__<imaginer>__<reader>__<hash>``):
``train_config.json`` (the resolved configuration, hashed; plugin versions), ``env.json``,
``log.jsonl`` (one line per logged step: loss, lr, examples/s, eval em), and ``checkpoints/``
(see `iagbench.checkpoints`). The same command again resumes from ``checkpoints/latest``:
optimizer, scheduler and RNG states are restored and ``log.jsonl`` continues after the saved step.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .checkpoints import (
    CHECKPOINTS,
    ROLES,
    latest_checkpoint,
    prune,
    remove_partial,
    save_weights,
    step_folder_name,
    weights_file,
    write_latest,
)
from .components import Dataset, Imaginer, Metric, Reader, Trainable
from .env import environment
from .errors import ConfigurationError
from .plugins import Plugins
from .registry import Entry
from .runner import EXECUTION_KEYS, Resolved, batches, check_compatible, fingerprint, load_examples, plugin_versions
from .runs import check_configuration, config_hash, folder_name, read_json, write_json_atomic
from .scoring import score_example
from .types import Context, Example

DEFAULT_TRAIN_DIR = Path("trained")
SCHEDULES = ("linear", "cosine", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"
STATE = "state"
TRAINER_STATE = "trainer_state.json"
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
    deepspeed: Path | None = None  # a DeepSpeed config file (ZeRO-2: configs/deepspeed/zero2.json)
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
    return config


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


def _objective(imaginer: Imaginer, reader: Reader, parts: Any) -> Any:
    """A module over the trainable parts whose forward is the training loss (what DDP and DeepSpeed wrap)."""
    import torch

    class Objective(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = parts
            self.__dict__["_components"] = (imaginer, reader)  # not submodules: their frozen parts stay out

        def forward(self, batch: _Batch) -> Any:
            imaginer, reader = self.__dict__["_components"]
            if _has_loss(imaginer):  # an imaginer with its own objective (e.g. `imagine`) trains alone
                return imaginer.loss(batch.examples, [Context() for _ in batch.examples])
            contexts = imaginer.imagine(batch.examples)
            if len(contexts) != len(batch.examples):
                raise ConfigurationError(f"imaginer returned {len(contexts)} contexts for {len(batch.examples)} examples")
            return reader.loss(batch.examples, contexts)

    return Objective()


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
    """The deterministic stream of micro-batches: epochs shuffled by seed, each process its slice."""

    def __init__(self, examples: Sequence[Example], batch_size: int, processes: int, rank: int, seed: int):
        self.examples, self.batch_size, self.processes, self.rank, self.seed = list(examples), batch_size, processes, rank, seed
        self.per_epoch = len(self.examples) // (batch_size * processes)
        self._orders: dict[int, list[int]] = {}

    def position(self, micro_batch: int) -> tuple[int, int]:
        return divmod(micro_batch, self.per_epoch)

    def batch(self, micro_batch: int) -> list[Example]:
        epoch, index = self.position(micro_batch)
        if epoch not in self._orders:
            self._orders = {epoch: list(range(len(self.examples)))}
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._orders[epoch])
        start = (index * self.processes + self.rank) * self.batch_size
        return [self.examples[i] for i in self._orders[epoch][start : start + self.batch_size]]


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

    accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _identity(spec: TrainSpec, setup: _Setup, total: int, processes: int) -> dict[str, Any]:
    """What makes two training runs the same run; hashed into the folder name, checked on resume."""
    return {
        "dataset": {
            "name": setup.dataset.name,
            "split": spec.split,
            "options": {k: v for k, v in spec.dataset_args.items() if k not in EXECUTION_KEYS},
            "fingerprint": fingerprint(setup.examples),
            "n": len(setup.examples),
        },
        "imaginer": {"name": setup.imaginer.name, "options": spec.imaginer_args},
        "reader": {"name": setup.reader.name, "options": spec.reader_args},
        "limit": spec.limit,
        "seed": spec.seed,
        "training": {
            "steps": total,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "grad_accum": spec.grad_accum,
            "processes": processes,
            "lr": spec.lr,
            "weight_decay": spec.weight_decay,
            "warmup_steps": spec.warmup_steps,
            "schedule": spec.schedule,
            "max_grad_norm": spec.max_grad_norm,
            "mixed_precision": setup.mixed_precision,
            "deepspeed": setup.deepspeed_config,
        },
    }


def _build(spec: TrainSpec, setup: _Setup) -> tuple[Imaginer, Reader, Any]:
    """The components, built with the seed set, and a ModuleDict of their trainable modules."""
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
        if "reader" in modules:
            raise ConfigurationError(
                f"imaginer '{setup.imaginer.name}' trains on its own loss, which gives reader '{setup.reader.name}' no "
                "gradient: give a reader without trainable parts (it then only serves evaluation)"
            )
    elif not _has_loss(reader):
        raise ConfigurationError(
            f"reader '{setup.reader.name}' cannot compute a training loss (it does not implement Trainable.loss)"
        )
    parts = torch.nn.ModuleDict(modules)
    if not any(p.requires_grad for p in parts.parameters()):
        raise ConfigurationError(f"nothing to train: the trainable modules of neither {names} have parameters that require grad")
    return imaginer, reader, parts


def _train(spec, plugins, setup: _Setup, accelerator, progress, say, non_default) -> tuple[Path, dict[str, Any]]:
    main = accelerator.is_main_process
    processes, rank = accelerator.num_processes, accelerator.process_index
    stream = _Stream(setup.examples, spec.batch_size, processes, rank, spec.seed)
    if stream.per_epoch == 0:
        raise ConfigurationError(
            f"{len(setup.examples)} training examples make no batch of {spec.batch_size} x {processes} processes; "
            "lower --batch-size"
        )
    total = spec.steps or max(1, int((spec.epochs or 1) * stream.per_epoch) // spec.grad_accum)
    ident = _identity(spec, setup, total, processes)
    digest = config_hash(ident)
    name = folder_name(setup.dataset.name, spec.split, setup.imaginer.name, setup.reader.name, digest)
    output = Path(spec.output or spec.train_dir / name)
    checkpoints = output / CHECKPOINTS
    versions = plugin_versions(plugins, Resolved(setup.dataset, setup.imaginer, setup.reader, []))
    if (output / TRAIN_CONFIG).exists():
        _check_folder(output, ident, versions)
        done = latest_checkpoint(checkpoints)
        if done is not None and read_json(done / TRAINER_STATE)["step"] >= total:
            say(f"training already finished: {done} (step {total})")
            return output, _summary(output, done)

    imaginer, reader, parts = _build(spec, setup)
    if latest_checkpoint(checkpoints) is None:  # a fresh start: components fit what they fit once (into buffers)
        for component in (imaginer, reader):
            prepare = getattr(component, "prepare", None)
            if isinstance(component, Trainable) and callable(prepare):
                prepare(setup.examples)
    model = _objective(imaginer, reader, parts)
    optimizer = _optimizer(parts, spec.lr, spec.weight_decay)
    scheduler = lr_scheduler(optimizer, spec.schedule, spec.warmup_steps, total)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)

    if main:
        _start_folder(output, {
            "name": name,
            "hash": digest,
            "identity": ident,
            "plugins": versions,
            "dataset_source": setup.data.describe(spec.split),
            "eval": {"split": spec.eval_split, "limit": spec.eval_limit, "every": spec.eval_every} if setup.em else None,
            "iagbench_version": __version__,
            "non_default_options": non_default or {},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        remove_partial(checkpoints)
    accelerator.wait_for_everyone()

    start = 0
    resume_from = latest_checkpoint(checkpoints)
    if resume_from is not None:
        accelerator.load_state(str(resume_from / STATE))
        start = read_json(resume_from / TRAINER_STATE)["step"]
    if main:
        _truncate_log(output / LOG, start)
    if resume_from is not None:
        say(f"resuming {output} from {resume_from.name} (step {start} of {total})")
    else:
        say(f"training {output}: {total} steps, {len(setup.examples)} examples, {processes} process(es)")
    accelerator.wait_for_everyone()

    trainer = _Trainer(
        spec, accelerator, model, optimizer, scheduler, imaginer, reader, stream, output, total, ident, digest,
        setup.em, setup.eval_examples,
    )
    if setup.em is not None and start == 0:
        trainer.log({"step": 0, **trainer.evaluate()})
    trainer.run(start, progress=progress and main)
    accelerator.wait_for_everyone()
    final = latest_checkpoint(checkpoints)
    assert final is not None
    return output, _summary(output, final)


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
    output: Path
    total: int
    ident: dict[str, Any]
    digest: str
    em: Metric | None
    eval_examples: list[Example]
    last: dict[str, Any] = field(default_factory=dict)  # the latest logged values, kept in trainer_state.json

    @property
    def trainables(self) -> list[Any]:
        return [c for c in (self.imaginer, self.reader) if _trainable(c) is not None]

    def run(self, start: int, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        spec, accelerator = self.spec, self.accelerator
        for component in self.trainables:
            component.train(True)
        examples_since, clock = 0, time.perf_counter()
        with tqdm(total=self.total, initial=start, disable=not progress, desc="steps", unit="step") as bar:
            for step in range(start + 1, self.total + 1):
                losses = []
                for micro in range(spec.grad_accum):
                    batch = self.stream.batch((step - 1) * spec.grad_accum + micro)
                    with accelerator.accumulate(self.model):
                        loss = self.model(_Batch(batch))
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and spec.max_grad_norm:
                            accelerator.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    losses.append(loss.detach().float())
                    examples_since += len(batch) * accelerator.num_processes
                if not accelerator.sync_gradients:
                    raise RuntimeError(f"step {step}: gradient accumulation is out of step with accelerate")
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                record: dict[str, Any] = {}
                if step % spec.log_every == 0 or step == self.total:
                    loss_value = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
                    elapsed = time.perf_counter() - clock
                    epoch, index = self.stream.position(step * spec.grad_accum)
                    record.update({
                        "step": step,
                        "epoch": round(epoch + index / self.stream.per_epoch, 4),
                        "loss": loss_value,
                        "lr": lr,
                        "examples_per_s": round(examples_since / elapsed, 2) if elapsed > 0 else None,
                    })
                    examples_since, clock = 0, time.perf_counter()
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                if self.em is not None and (step % spec.eval_every == 0 or step == self.total):
                    record.update({"step": step, **self.evaluate()})
                if record:
                    self.log(record)
                if step % spec.save_every == 0 or step == self.total:
                    self.save(step)
                bar.update(1)

    def evaluate(self) -> dict[str, Any]:
        """em (percent) of the eval examples, each process scoring its share, in eval mode without gradients."""
        import torch
        from accelerate.utils import gather_object

        accelerator, examples = self.accelerator, self.eval_examples
        processes, rank = accelerator.num_processes, accelerator.process_index
        share = math.ceil(len(examples) / processes)
        mine = examples[rank::processes]
        padded = mine + [examples[0]] * (share - len(mine))  # the same number of batches on every process
        for component in self.trainables:
            component.train(False)
        scores: list[float] = []
        try:
            with torch.no_grad(), accelerator.autocast():
                for batch in batches(padded, self.spec.eval_batch_size or self.spec.batch_size, order="dataset"):
                    contexts = self.imaginer.imagine(batch)
                    answers = self.reader.answer(batch, contexts)
                    if len(contexts) != len(batch) or len(answers) != len(batch):
                        raise ConfigurationError(f"evaluation: {len(contexts)} contexts, {len(answers)} answers for {len(batch)} examples")
                    for example, context, answer in zip(batch, contexts, answers):
                        scores.append(score_example([self.em], str(answer), example.answers, context.passages).get("em", 0.0))
        finally:
            for component in self.trainables:
                component.train(True)
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
        accelerator, checkpoints = self.accelerator, self.output / CHECKPOINTS
        name = step_folder_name(step)
        tmp, final = checkpoints / f"{name}.tmp", checkpoints / name
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp / STATE))  # every process writes its part (RNG states, ZeRO shards)
        state_dict = accelerator.get_state_dict(self.model)  # on every process: ZeRO-3 gathers the weights
        accelerator.wait_for_everyone()  # all parts written before the folder is renamed
        if accelerator.is_main_process:
            files = {}
            for role in ROLES:
                prefix = f"parts.{role}."
                weights = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
                if weights:
                    save_weights(weights, tmp / weights_file(role))
                    files[role] = weights_file(role)
            epoch, index = self.stream.position(step * self.spec.grad_accum)
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
                "micro_batch_in_epoch": index,
                "micro_batches": step * self.spec.grad_accum,
                "examples_seen": step * self.spec.grad_accum * self.spec.batch_size * accelerator.num_processes,
                "processes": accelerator.num_processes,
                "last_log": self.last,
            })
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_latest(checkpoints, name)
            prune(checkpoints, self.spec.keep)
        accelerator.wait_for_everyone()


def _check_folder(output: Path, ident: dict[str, Any], versions: dict[str, Any]) -> None:
    check_configuration(output / TRAIN_CONFIG, read_json(output / TRAIN_CONFIG), ident, versions, "training configuration")


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
