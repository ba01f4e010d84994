"""`iagbench train`: train the trainable parts of an imaginer + reader pair, resumable at any point.

`train()` resolves and checks the run, starts (or resumes) its folder and hands the loop to `_Trainer`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iagbench.contract.components import Imaginer, Reader, Trainable
from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.contract.plugins import Plugins
from iagbench.contract.preflight import preflight
from iagbench.lm.checkpoints import CHECKPOINTS, LATEST, latest_checkpoint, remove_partial, step_folder_name
from iagbench.runs.folder import config_hash, folder_name, read_json
from iagbench.runs.runner import Resolved, check_compatible, load_examples, plugin_versions
from iagbench.training.build import _build
from iagbench.training.distributed import (
    _launch_env,
    _release,
    make_accelerator,
    read_deepspeed_config,
    resolve_mixed_precision,
    zero_stage,
)
from iagbench.training.extend import extended_folder, extension, record_extension
from iagbench.training.folder import (
    LOG,
    STATE,
    TRAIN_CONFIG,
    TRAINER_STATE,
    _check_folder,
    _execution,
    _identity,
    _start_folder,
    _summary,
    _truncate_log,
)
from iagbench.training.objective import _objective, _optimizer, _trainable, lr_scheduler
from iagbench.training.resume import choose, read_checkpoint
from iagbench.training.spec import TrainSpec, _Setup, validate
from iagbench.training.state import Saved, apply_state
from iagbench.training.stream import _Layout, _Stream
from iagbench.training.tracking import _Best, start_trackers
from iagbench.training.trainer import _Trainer
from iagbench.training.zero import OPTIMIZER_FULL, _reshard
from iagbench.version import __version__


def train(
    spec: TrainSpec,
    plugins: Plugins,
    *,
    progress: bool = True,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
    non_default: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Train (or resume, or just report) the training run ``spec`` defines; return its folder and a summary.

    The same code runs as one process (``iagbench train``) or several (``torchrun --nproc_per_node N``,
    ``accelerate launch``, ``deepspeed``, the latter two with a DeepSpeed config file): accelerate
    does data-parallel gradient averaging (or DeepSpeed ZeRO), bf16 on CUDA, gradient accumulation.
    """
    validate(spec)
    setup = _resolve(spec, plugins)
    saved_env = _launch_env()
    accelerator = make_accelerator(spec, setup.deepspeed_config, setup.mixed_precision)
    try:
        return _train(
            spec, plugins, setup, accelerator, progress, log if accelerator.is_main_process else _quiet, non_default
        )
    finally:
        _release(accelerator, saved_env)


def _resolve(spec: TrainSpec, plugins: Plugins) -> _Setup:
    """The plugins, examples and DeepSpeed config of ``spec``, checked before any process group exists."""
    imaginer = plugins["imaginers"].get(spec.imaginer)
    reader = plugins["readers"].get(spec.reader)
    check_compatible(imaginer, reader)
    preflight(imaginer, spec.imaginer_args, reader, spec.reader_args, purpose="train")
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
        teacher_imaginer_args, teacher_reader_args = spec.teacher_imaginer_args, spec.teacher_reader_args
        preflight(
            setup.teacher_imaginer, teacher_imaginer_args, setup.teacher_reader, teacher_reader_args, purpose="run"
        )
    return setup


def _quiet(message: str) -> None:
    pass


@dataclass(frozen=True)
class _Plan:
    """The run this session trains: its data and steps, its identity and the folder that identity names."""

    layout: _Layout
    stream: _Stream
    total: int  # optimizer steps
    ident: dict[str, Any]
    digest: str
    name: str
    output: Path
    versions: dict[str, Any]
    extended: bool = False  # a finished run continued to more --steps (iagbench.training.extend)

    @property
    def checkpoints(self) -> Path:
        return self.output / CHECKPOINTS


@dataclass(frozen=True)
class _Resume:
    """The checkpoint this session resumes from (None: a fresh start) and what was read from it."""

    checkpoint: Path | None
    saved: Saved | None

    @property
    def step(self) -> int:
        return self.saved.step if self.saved is not None else 0


def _train(spec, plugins, setup: _Setup, accelerator, progress, say, non_default) -> tuple[Path, dict[str, Any]]:
    main = accelerator.is_main_process
    plan = _plan(spec, plugins, setup, accelerator)
    finished = _finished(plan, say)
    if finished is not None:
        return plan.output, _summary(plan.output, finished)

    imaginer, reader, parts, checkpointed, distiller = _build(spec, setup, progress and main)
    _prepare_components(imaginer, reader, setup, resumed=(plan.checkpoints / LATEST).is_file())
    model = _objective(imaginer, reader, parts, distiller)
    optimizer = _optimizer(parts, spec.lr, spec.weight_decay, spec.no_decay)
    scheduler = lr_scheduler(optimizer, spec.schedule, spec.warmup_steps, plan.total)
    resume = _resume_point(plan, setup, accelerator, (imaginer, reader), (model, optimizer, scheduler))
    model, optimizer = accelerator.prepare(model, optimizer)
    if main:
        _start_folder(plan.output, _train_config(spec, setup, plan, non_default))
        if plan.extended:
            record_extension(plan.output, plan.total)
        remove_partial(plan.checkpoints)
    accelerator.wait_for_everyone()
    start_trackers(accelerator, spec, plan.output, plan.name)

    restored = _restore(accelerator, (model, optimizer, scheduler), resume, setup.deepspeed_config is not None)
    if main:
        _truncate_log(plan.output / LOG, resume.step)
    _announce(spec, setup, plan, resume, restored, say)
    accelerator.wait_for_everyone()

    trainer = _Trainer(
        spec,
        accelerator,
        model,
        optimizer,
        scheduler,
        imaginer,
        reader,
        plan.stream,
        plan.layout,
        plan.output,
        plan.total,
        plan.ident,
        plan.digest,
        setup.em,
        setup.eval_examples,
        setup.deepspeed_config is not None,
        zero_stage(setup.deepspeed_config),
        checkpointed,
        distiller,
        best=_Best.of(spec, resume.checkpoint),
    )
    if main:
        trainer.best.mark(plan.checkpoints, step_folder_name)
    if setup.em is not None and resume.step == 0:
        trainer.log({"step": 0, **trainer.evaluate()})
    trainer.run(resume.step, progress=progress and main)
    accelerator.wait_for_everyone()
    final = latest_checkpoint(plan.checkpoints)
    assert final is not None
    return plan.output, _summary(plan.output, final)


def _plan(spec: TrainSpec, plugins: Plugins, setup: _Setup, accelerator: Any) -> _Plan:
    """How this session splits the global batch, the number of steps, the run's identity and its folder."""
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
    if spec.output is None and not output.exists():
        output = extended_folder(spec, spec.train_dir, name, ident, total) or output
    versions = plugin_versions(plugins, Resolved(setup.dataset, setup.imaginer, setup.reader, []))
    previous = extension(spec, output, ident, total)
    if previous is not None:  # the run keeps the identity, hash and name it was started with
        ident, digest, name = previous["identity"], previous["hash"], previous.get("name", name)
    return _Plan(layout, stream, total, ident, digest, name, output, versions, previous is not None)


def _finished(plan: _Plan, say: Callable[[str], None]) -> Path | None:
    """An existing folder must be this run's; its final checkpoint if it is already trained."""
    if not (plan.output / TRAIN_CONFIG).exists():
        return None
    _check_folder(plan.output, plan.ident, plan.versions, plan.layout)
    try:
        done = latest_checkpoint(plan.checkpoints)
        step = read_json(done / TRAINER_STATE)["step"] if done is not None else 0
    except (ConfigurationError, RunFolderError, OSError, ValueError, KeyError, TypeError):  # the resume reports it
        return None
    if done is not None and isinstance(step, int) and step >= plan.total:
        say(f"training already finished: {done} (step {plan.total})")
        return done
    return None


def _resume_point(plan: _Plan, setup: _Setup, accelerator: Any, components: tuple, objects: tuple) -> _Resume:
    """The newest checkpoint that loads (its weights now in the components), falling back past damaged ones."""
    trainable = {role: c for role, c in zip(("imaginer", "reader"), components) if _trainable(c) is not None}
    model, optimizer, scheduler = objects
    deepspeed, rank = setup.deepspeed_config is not None, accelerator.process_index

    def load(checkpoint: Path) -> Saved:
        return read_checkpoint(checkpoint, trainable, model, optimizer, scheduler, rank, deepspeed)

    return _Resume(*choose(plan.checkpoints, accelerator, load))


def _prepare_components(imaginer: Imaginer, reader: Reader, setup: _Setup, resumed: bool) -> None:
    """Before the optimizer exists, components fit what they fit on the training set (into buffers): on a fresh start,
    and on a resume those whose fit no checkpoint holds (``Trainable.prepare_on_resume``, e.g. chunk whitening)."""
    for component in (imaginer, reader):
        prepare = getattr(component, "prepare", None)
        if isinstance(component, Trainable) and callable(prepare) and (not resumed or component.prepare_on_resume()):
            prepare(setup.examples)


def _train_config(spec: TrainSpec, setup: _Setup, plan: _Plan, non_default: dict[str, Any] | None) -> dict[str, Any]:
    """What ``train_config.json`` records: the identity and its hash, how this session runs it, plugin versions."""
    return {
        "name": plan.name,
        "hash": plan.digest,
        "identity": plan.ident,
        "execution": _execution(spec, plan.layout),
        "plugins": plan.versions,
        "dataset_source": setup.data.describe(spec.split),
        "eval": {"split": spec.eval_split, "limit": spec.eval_limit, "every": spec.eval_every} if setup.em else None,
        "iagbench_version": __version__,
        "non_default_options": non_default or {},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _restore(accelerator: Any, prepared: tuple, resume: _Resume, deepspeed: bool) -> bool:
    """Load the checkpoint's optimizer, schedule and RNG states into the prepared (model, optimizer, scheduler) (its
    weights are in already); True if DeepSpeed's optimizer state was re-sharded from the whole moments."""
    saved = resume.saved
    if saved is None:
        return False
    model, optimizer, scheduler = prepared
    if deepspeed and saved.moments is not None:
        _reshard(model, saved.weights, saved.moments)
    apply_state(saved, accelerator, optimizer, scheduler)
    if deepspeed:  # the learning rate, as a loaded optimizer would have it
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
    return deepspeed and saved.moments is not None


def _announce(
    spec: TrainSpec, setup: _Setup, plan: _Plan, resume: _Resume, restored: bool, say: Callable[[str], None]
) -> None:
    """Say what this session does: train from the start, or resume (and how, if the world size changed)."""
    layout, output = plan.layout, plan.output
    if resume.checkpoint is None:
        say(
            f"training {output}: {plan.total} steps of {layout.global_batch} examples ({spec.batch_size} x "
            f"{layout.processes} process(es) x {spec.grad_accum}), {len(setup.examples)} examples"
        )
        return
    name, saved_by = resume.checkpoint.name, resume.saved.processes if resume.saved else layout.processes
    say(f"resuming {output} from {name} (step {resume.step} of {plan.total}) with {layout.processes} process(es)")
    change = f"world size changed {saved_by} -> {layout.processes}: " if saved_by != layout.processes else ""
    if setup.deepspeed_config is None:
        if change:
            say(f"{change}without DeepSpeed the optimizer state is whole on every process and loads as saved")
    elif not restored:
        say(
            f"{change}{name} has no whole copy of the optimizer state ({STATE}/{OPTIMIZER_FULL}), and DeepSpeed's "
            "own shards are not read: optimizer restarted from the saved weights (AdamW moments reset; the "
            "learning-rate schedule continues)"
        )
    elif change:
        say(
            f"{change}DeepSpeed ZeRO-{zero_stage(setup.deepspeed_config)} optimizer state re-sharded from "
            f"the checkpoint's whole fp32 weights and AdamW moments ({STATE}/{OPTIMIZER_FULL})"
        )
