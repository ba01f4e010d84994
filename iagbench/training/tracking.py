"""What `iagbench train` reports while it trains, beside ``log.jsonl``: accelerate's trackers (``--report-to``),
a console line every ``--log-every`` steps, and the best dev checkpoint (``--keep-best``).

None of it is part of a training run's identity: they are how one session runs it."""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.checkpoints import BEST, write_marker
from iagbench.runs.folder import read_json
from iagbench.training.spec import BEST_METRICS, TrainSpec

logger = logging.getLogger(__name__)

# --report-to: the package accelerate's tracker needs, and how to install it
TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", 'pip install "tensorboard>=2.14" (or pip install -e ".[tensorboard]")'),
    "wandb": ("wandb", "pip install wandb"),
}
TENSORBOARD_FOLDER = "tensorboard"  # <output>/tensorboard/: the event files
WANDB_PROJECT = "iagbench"  # wandb writes <output>/wandb/ (offline with WANDB_MODE=offline)
LOSS_PARTS = ("kd", "ce", "hidden", "attention", "kl_term")  # the distillation loss's parts, when present


def check_tracker(report_to: str) -> str | None:
    """The ``log_with`` of accelerate's Accelerator for ``--report-to`` (None for none); a one-line
    ConfigurationError naming the option and the pip command if the tracker's package is missing."""
    if report_to == "none":
        return None
    module, command = TRACKER_PACKAGES[report_to]
    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(f"--report-to {report_to}: the {module} package is not installed ({command})")
    return report_to


def start_trackers(accelerator: Any, spec: TrainSpec, output: Path, name: str) -> None:
    """Start the ``--report-to`` tracker with its files under the training output folder (main process only)."""
    if spec.report_to == "none":
        return
    project = accelerator.project_configuration  # the folder is known now, after the accelerator was made
    project.project_dir = project.logging_dir = str(output)
    if spec.report_to == "tensorboard":
        accelerator.init_trackers(TENSORBOARD_FOLDER)
        return
    config = {key: value for key, value in vars(spec).items() if isinstance(value, int | float | str | bool)}
    accelerator.init_trackers(WANDB_PROJECT, config=config, init_kwargs={"wandb": {"dir": str(output), "name": name}})


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a log record that trackers get (all but ``step``)."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


def console_line(record: dict[str, Any]) -> str:
    """``step 20: loss 0.4123 (kd 0.3, ce 0.5), lr 1e-04, grad_norm 0.812, 51.2 examples/s, eval_em 40.00``."""
    parts = []
    if "loss" in record:
        loss = f"loss {record['loss']:.4f}"
        found = [f"{name} {record[name]:.4g}" for name in LOSS_PARTS if isinstance(record.get(name), int | float)]
        parts.append(f"{loss} ({', '.join(found)})" if found else loss)
    for key, form in (("lr", "lr {:.3g}"), ("grad_norm", "grad_norm {:.4g}"), ("examples_per_s", "{:g} examples/s")):
        if isinstance(record.get(key), int | float):
            parts.append(form.format(record[key]))
    parts += [f"{key} {value:.2f}" for key, value in record.items() if key.startswith("eval_") and key != "eval_n"]
    return f"step {record['step']}: {', '.join(parts)}"


@dataclass
class _Reporter:
    """Sends each logged record to the trackers and, as one line, to the console (main process only)."""

    accelerator: Any
    bar: Any = None  # the tqdm bar: lines go through its write, so that they do not break it

    def report(self, record: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        values = scalars(record)
        if values and self.accelerator.trackers:
            self.accelerator.log(values, step=int(record["step"]))
        line = console_line(record)
        if self.bar is not None and not self.bar.disable:
            self.bar.write(line)
        else:
            logger.info(line)


@dataclass
class _Best:
    """The best dev checkpoint so far (``--keep-best``): its metric's log key, value and step."""

    key: str | None = None  # the log.jsonl key compared (eval_em); None: --keep-best not given
    value: float | None = None
    step: int | None = None

    @classmethod
    def of(cls, spec: TrainSpec, checkpoint: Path | None) -> _Best:
        """The best of the checkpoint resumed from (its trainer_state.json), or none yet."""
        key = BEST_METRICS.get(spec.keep_best or "")
        best = cls(key)
        if key is None or checkpoint is None:
            return best
        saved = (read_json(checkpoint / "trainer_state.json").get("best") or {}) if checkpoint.is_dir() else {}
        if saved.get("metric") == key and isinstance(saved.get("value"), int | float):
            best.value, best.step = float(saved["value"]), int(saved["step"])
        return best

    def offer(self, step: int, record: dict[str, Any]) -> bool:
        """Whether ``record`` (at ``step`` > 0: a checkpoint can be saved there) is a new best."""
        value = record.get(self.key) if self.key else None
        if step < 1 or not isinstance(value, int | float) or (self.value is not None and value <= self.value):
            return False
        self.value, self.step = float(value), step
        return True

    def state(self) -> dict[str, Any] | None:
        return None if self.step is None else {"metric": self.key, "value": self.value, "step": self.step}

    def mark(self, checkpoints: Path, name_of: Any) -> None:
        """Point ``checkpoints/best`` at the best step's folder, if that folder is there."""
        if self.step is not None and (checkpoints / name_of(self.step)).is_dir():
            write_marker(checkpoints, BEST, name_of(self.step))
