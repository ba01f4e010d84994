"""The output folder of a training run: its identity (hashed into its name, checked on resume), the files
``train_config.json``, ``env.json`` and ``log.jsonl``, and the summary of its latest checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from iagbench.contract.errors import RunFolderError
from iagbench.runs.env import environment
from iagbench.runs.folder import check_configuration, diff_paths, read_json, write_json_atomic
from iagbench.runs.runner import EXECUTION_KEYS, fingerprint
from iagbench.runs.sources import component_identity
from iagbench.training.spec import REFERENCE_KD_OPTIONS, REFERENCE_OPTIMIZER_OPTIONS, TrainSpec, _default, _Setup
from iagbench.training.stream import _Layout

TRAIN_CONFIG = "train_config.json"
LOG = "log.jsonl"
STATE = "state"
TRAINER_STATE = "trainer_state.json"


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
            **_changed(spec, REFERENCE_OPTIMIZER_OPTIONS),  # absent at the defaults: earlier runs keep theirs
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
        ident["distillation"].update(_changed(spec, REFERENCE_KD_OPTIONS))
    return ident


def _changed(spec: TrainSpec, names: tuple[str, ...]) -> dict[str, Any]:
    """Those of the options ``names`` that differ from their defaults: runs with the defaults keep their identity."""
    return {name: getattr(spec, name) for name in names if getattr(spec, name) != _default(name)}


def _execution(spec: TrainSpec, layout: _Layout) -> dict[str, Any]:
    """How this session runs the training (may change between sessions of one run)."""
    return {**layout.describe(), "gradient_checkpointing": spec.gradient_checkpointing}


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
    """Write ``train_config.json`` (the resolved configuration, hashed; plugin versions) and ``env.json`` in a new
    folder, or add this session's environment to ``env.json`` on resume.

    The folder (``--output``, default ``trained/<dataset>-<split>__<imaginer>__<reader>__<hash>``) also holds
    ``log.jsonl`` (one line per logged step: loss, lr, examples/s, peak GPU memory on CUDA, eval em) and
    ``checkpoints/`` (see `iagbench.lm.checkpoints`). The same command again resumes from
    ``checkpoints/latest``: optimizer, scheduler and RNG states are restored and ``log.jsonl`` continues
    after the saved step.
    """
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
        **_best_summary(output, state),
    }


def _best_summary(output: Path, state: dict[str, Any]) -> dict[str, Any]:
    """With --keep-best: the best dev checkpoint (``checkpoints/best``), its step and metric value."""
    best = state.get("best")
    if not best:
        return {}
    checkpoint = output / "checkpoints" / "best"
    return {"best": {**best, "checkpoint": str(checkpoint) if checkpoint.is_file() else None}}
