"""The training loop of `iagbench train` (`_Trainer`, one per process): optimizer steps over micro-batches,
the log, evaluation (em on the eval examples) and checkpoints written whole or not at all."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.contract.components import Imaginer, Metric, Reader
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Example
from iagbench.lm.checkpoints import (
    CHECKPOINTS,
    ROLES,
    prune,
    save_weights,
    step_folder_name,
    weights_file,
    write_latest,
)
from iagbench.runs.folder import write_json_atomic
from iagbench.runs.runner import batches
from iagbench.runs.scoring import score_example
from iagbench.training.distill import _Distiller
from iagbench.training.folder import LOG, STATE, TRAINER_STATE, _execution
from iagbench.training.objective import _Batch, _trainable
from iagbench.training.spec import TrainSpec
from iagbench.training.state import save_state
from iagbench.training.stream import _Layout, _Stream
from iagbench.training.tracking import _Best, _Reporter
from iagbench.training.zero import OPTIMIZER_FULL, _gather_zero
from iagbench.version import __version__


@dataclass
class _Meter:
    """Examples trained on since the last logged step, and when that was: the examples/s of the log."""

    examples: int = 0
    clock: float = field(default_factory=time.perf_counter)

    def rate(self) -> float | None:
        elapsed = time.perf_counter() - self.clock
        return round(self.examples / elapsed, 2) if elapsed > 0 else None

    def reset(self) -> None:
        self.examples, self.clock = 0, time.perf_counter()


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
    best: _Best = field(default_factory=_Best)  # the best dev checkpoint so far (--keep-best)
    reporter: _Reporter | None = None  # trackers and console lines, set by run()
    grad_norm: float | None = None  # the gradient norm of the latest optimizer step, before clipping

    @property
    def trainables(self) -> list[Any]:
        return [c for c in (self.imaginer, self.reader) if _trainable(c) is not None]

    def _mode(self, training: bool) -> None:
        for component in self.trainables:
            component.train(training)
        for module in self.checkpointed:
            module.training = training

    def run(self, start: int, progress: bool) -> None:
        """Optimizer steps ``start+1 ... total``, logging, evaluating and saving when the spec says."""
        from tqdm.auto import tqdm

        spec = self.spec
        self._mode(True)
        meter = _Meter()
        with tqdm(total=self.total, initial=start, disable=not progress, desc="steps", unit="step") as bar:
            self.reporter = _Reporter(self.accelerator, bar)
            for step in range(start + 1, self.total + 1):
                losses, parts = self._step(step, meter)
                lr = self.scheduler.get_last_lr()[0]
                self.scheduler.step()
                record: dict[str, Any] = {}
                if step % spec.log_every == 0 or step == self.total:
                    record = self._progress(step, lr, losses, parts, meter)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                if self.em is not None and (step % spec.eval_every == 0 or step == self.total):
                    record.update({"step": step, **self.evaluate()})
                if record:
                    self.log(record)
                best = self.best.offer(step, record)  # a new best dev result is saved, whatever --save-every says
                if step % spec.save_every == 0 or step == self.total or best:
                    self.save(step)
                bar.update(1)

    def _step(self, step: int, meter: _Meter) -> tuple[list[Any], list[dict[str, Any]]]:
        """Optimizer step ``step``: forward and backward of its micro-batches, accumulated; their losses (and the
        distillation loss's parts)."""
        spec, accelerator, layout = self.spec, self.accelerator, self.layout
        losses, parts = [], []
        if self.distiller is not None:
            self.distiller.step = step - 1  # optimizer steps done: the first step is at T0
        for micro in range(spec.grad_accum):
            batch = layout.batch(self.stream, step, micro)
            with accelerator.accumulate(self.model):
                loss = self.model(_Batch(batch))
                self._backward(loss)
                if accelerator.sync_gradients:
                    self._clip()
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(loss.detach().float())
            if self.distiller is not None:
                parts.append(self.distiller.parts)
            meter.examples += len(batch) * layout.processes
        if not accelerator.sync_gradients:
            raise RuntimeError(f"step {step}: gradient accumulation is out of step with accelerate")
        return losses, parts

    def _clip(self) -> None:
        """Clip the gradients to --max-grad-norm (0: measure only); keep their norm for the log."""
        limit = self.spec.max_grad_norm or math.inf
        norm = self.accelerator.clip_grad_norm_(self.model.parameters(), limit)
        self.grad_norm = float(norm) if norm is not None and math.isfinite(float(norm)) else None

    def _progress(
        self, step: int, lr: float, losses: list[Any], parts: list[dict[str, Any]], meter: _Meter
    ) -> dict[str, Any]:
        """The log record of a logged step: the loss (and its parts) averaged over micro-batches and processes,
        lr, examples/s since the last logged step, this process's peak GPU memory since the start on CUDA."""
        import torch

        accelerator = self.accelerator
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(step * self.layout.global_batch / len(self.stream.examples), 4),
            "loss": accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item(),
            "lr": lr,
            "examples_per_s": meter.rate(),
        }
        if self.grad_norm is not None:
            record["grad_norm"] = round(self.grad_norm, 6)
        if accelerator.device.type == "cuda":
            record["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated(accelerator.device) / 2**30, 2)
        meter.reset()
        if parts:  # the distillation loss's parts, averaged as the loss is
            for name in parts[0]:
                mean = torch.stack([part[name] for part in parts]).mean()
                record[name] = accelerator.reduce(mean, reduction="mean").item()
            record["temperature"] = self.distiller.temperature()  # type: ignore[union-attr]
        return record

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
                        raise ConfigurationError(
                            f"evaluation: {len(contexts)} contexts, {len(answers)} answers for {len(batch)} examples"
                        )
                    for example, context, answer in zip(batch, contexts, answers):
                        scores.append(
                            score_example([self.em], str(answer), example.answers, context.passages).get("em", 0.0)
                        )
        finally:
            self._mode(True)
        gathered = gather_object([scores[: len(mine)]])
        every = [score for part in gathered for score in part]
        return {"eval_em": 100.0 * sum(every) / len(every), "eval_n": len(every)}

    def log(self, record: dict[str, Any]) -> None:
        self.last.update(record)
        (self.reporter or _Reporter(self.accelerator)).report(record)
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
        if self.deepspeed:  # DeepSpeed's own shards (pickles), for its tools: a resume never reads them
            self.model.save_checkpoint(str(tmp / STATE), "pytorch_model")
        save_state(tmp / STATE, accelerator, self.optimizer, self.scheduler, self.deepspeed)  # each its part
        state_dict = accelerator.get_state_dict(self.model)  # on every process: ZeRO-3 gathers the weights
        # under DeepSpeed: the fp32 weights (not their bf16 copies) and the moments, whole, for any world size
        whole = _gather_zero(self.model) if self.deepspeed else None
        accelerator.wait_for_everyone()  # all parts written before the folder is renamed
        if accelerator.is_main_process:
            if whole is not None:
                state_dict = {**state_dict, **whole[0]}
                save_weights(whole[1], tmp / STATE / OPTIMIZER_FULL)
            self._describe_checkpoint(tmp, step, self._save_weights(tmp, state_dict))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_latest(checkpoints, name)
            self.best.mark(checkpoints, step_folder_name)
            prune(checkpoints, self.spec.keep)
        accelerator.wait_for_everyone()

    def _save_weights(self, folder: Path, state_dict: dict[str, Any]) -> dict[str, str]:
        """Each role's trainable weights (``parts.<role>.*`` of the objective) in its own file; their names by role."""
        files = {}
        for role in ROLES:
            prefix = f"parts.{role}."
            weights = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
            if weights:
                save_weights(weights, folder / weights_file(role))
                files[role] = weights_file(role)
        return files

    def _describe_checkpoint(self, folder: Path, step: int, files: dict[str, str]) -> None:
        """A checkpoint's ``config.json`` (components, options, weights files) and ``trainer_state.json`` (where in the
        stream it stands, how this session ran, the latest logged values)."""
        layout = self.layout
        seen = step * layout.global_batch
        epoch, index = self.stream.position(seen)
        write_json_atomic(
            folder / "config.json",
            {
                "step": step,
                "total_steps": self.total,
                "imaginer": {**self.ident["imaginer"], "weights": files.get("imaginer")},
                "reader": {**self.ident["reader"], "weights": files.get("reader")},
                "train_config_hash": self.digest,
                "iagbench_version": __version__,
            },
        )
        write_json_atomic(
            folder / TRAINER_STATE,
            {
                "step": step,
                "epoch": epoch,
                "index_in_epoch": index,
                "examples_seen": seen,
                "processes": layout.processes,
                "execution": _execution(self.spec, layout),
                "last_log": self.last,
                **({"best": self.best.state()} if self.best.state() else {}),
            },
        )
