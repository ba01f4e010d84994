"""Run an imaginer + reader over a dataset split, scoring as it goes, resumable at any point.

One process, or several under ``torchrun``/``accelerate launch``/``deepspeed``, each predicting the
examples whose id hashes to its rank (`iagbench.runs.processes`, `iagbench.runs.shards`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from iagbench.contract.components import CONTEXT_KINDS, Dataset, Imaginer, Metric, Reader
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.plugins import Plugins
from iagbench.contract.preflight import preflight
from iagbench.contract.registry import Entry
from iagbench.contract.types import Example
from iagbench.runs import collector
from iagbench.runs.batching import BatchSizer
from iagbench.runs.cost import COST_VERSION, run_cost
from iagbench.runs.env import environment
from iagbench.runs.folder import RunFolder, canonical_json, config_hash, folder_name
from iagbench.runs.prediction import ORDERS, batches, context_summary, ordered_examples, predict, prediction_record  # noqa: F401 (ORDERS, batches, context_summary, prediction_record: still importable from here)
from iagbench.runs.processes import Processes
from iagbench.runs.scoring import aggregate, metric_versions
from iagbench.runs.shards import (
    ShardWriter,
    claim_folder,
    merge,
    shard_files,
    todo_examples,
    wait_for_file,
    wait_for_shards,
)
from iagbench.runs.sources import component_identity
from iagbench.version import __version__

DEFAULT_RUNS_DIR = Path("runs")
EXECUTION_KEYS = ("data_dir",)  # options that say where, not what: kept out of the configuration hash


@dataclass
class RunSpec:
    """Everything that defines one run, as the user gave it."""

    dataset: str
    split: str
    imaginer: str
    reader: str
    dataset_args: dict[str, Any] = field(default_factory=dict)
    imaginer_args: dict[str, Any] = field(default_factory=dict)
    reader_args: dict[str, Any] = field(default_factory=dict)
    metrics: Sequence[str] | None = None
    limit: int | float | None = None  # a float 0 < x < 1: the first ceil(x * N) examples
    batch_size: int | str | None = None  # or "auto"; None: by batch_tokens (see iagbench.runs.batching)
    batch_tokens: int | None = None  # None: the default budget unless batch_size is given
    order: str = "length"
    seed: int = 0
    output: Path | None = None
    runs_dir: Path = DEFAULT_RUNS_DIR
    wait_timeout: float = 1800.0  # seconds a process of a sharded run waits for the others without progress


@dataclass
class Resolved:
    """Registry entries for a spec, checked against each other before any model loads."""

    dataset: Entry
    imaginer: Entry
    reader: Entry
    metrics: list[Metric]


def resolve(spec: RunSpec, plugins: Plugins) -> Resolved:
    imaginer = plugins["imaginers"].get(spec.imaginer)
    reader = plugins["readers"].get(spec.reader)
    check_compatible(imaginer, reader)
    metric_names = list(spec.metrics) if spec.metrics else [entry.name for entry in plugins["metrics"]]
    metrics = [plugins["metrics"].get(name).build() for name in metric_names]
    return Resolved(plugins["datasets"].get(spec.dataset), imaginer, reader, metrics)


def check_compatible(imaginer: Entry, reader: Entry) -> None:
    """Reject an imaginer whose contexts the reader cannot read."""
    provides = frozenset(imaginer.declared("provides"))
    accepts = frozenset(reader.declared("accepts"))
    unknown = (provides | accepts) - CONTEXT_KINDS
    if unknown:
        raise ConfigurationError(
            f"unknown context kinds {sorted(unknown)}; expected a subset of {sorted(CONTEXT_KINDS)}"
        )
    missing = provides - accepts
    if missing:
        raise ConfigurationError(
            f"imaginer '{imaginer.name}' provides {sorted(provides)} but reader '{reader.name}' accepts "
            f"only {sorted(accepts) or 'no context'}: {', '.join(sorted(missing))} would be ignored"
        )


def load_examples(dataset: Dataset, split: str, limit: int | float | None, dataset_name: str) -> list[Example]:
    """The split's examples: all, the first ``limit`` (an integer), or the first ceil(limit * N) (0 < limit < 1)."""
    if split not in dataset.splits:
        raise ConfigurationError(
            f"dataset '{dataset_name}' has no split '{split}'; splits: {', '.join(dataset.splits)}"
        )
    fraction = isinstance(limit, float) and 0 < limit < 1
    examples = []
    for example in dataset.load(split):
        if limit is not None and not fraction and len(examples) >= limit:
            break
        examples.append(example)
    if fraction:
        examples = examples[: math.ceil(Fraction(repr(limit)) * len(examples))]  # exact: 0.1 * 30 is 3, not 4
    if not examples:
        raise ConfigurationError(f"dataset '{dataset_name}' split '{split}' has no examples")
    return examples


def fingerprint(examples: Sequence[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(canonical_json(example.to_json()).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def identity(spec: RunSpec, resolved: Resolved, examples: Sequence[Example]) -> dict[str, Any]:
    """What makes two runs the same run; hashed into the folder name."""
    return {
        "dataset": {
            "name": resolved.dataset.name,
            "split": spec.split,
            "options": {k: v for k, v in spec.dataset_args.items() if k not in EXECUTION_KEYS},
            "fingerprint": fingerprint(examples),
            "n": len(examples),
        },
        "imaginer": component_identity(resolved.imaginer.name, spec.imaginer_args),
        "reader": component_identity(resolved.reader.name, spec.reader_args),
        "limit": spec.limit,
        "seed": spec.seed,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)


def results_from(records: Sequence[dict[str, Any]], config: dict[str, Any], elapsed: float) -> dict[str, Any]:
    summary = aggregate(record["scores"] for record in records)
    return {
        "metrics": summary["metrics"],
        "counts": summary["counts"],
        "n": len(records),
        "metric_versions": config["metrics"],
        "run": config["name"],
        "config_hash": config["hash"],
        "dataset": config["identity"]["dataset"]["name"],
        "split": config["identity"]["dataset"]["split"],
        "imaginer": config["identity"]["imaginer"]["name"],
        "reader": config["identity"]["reader"]["name"],
        "elapsed_s_last_session": round(elapsed, 3),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def plugin_versions(plugins: Plugins, resolved: Resolved) -> dict[str, str | None]:
    versions = {item["name"]: item["version"] for item in plugins.describe()}
    used = {plugin for entry in (resolved.dataset, resolved.imaginer, resolved.reader) for plugin in entry.plugins}
    return {name: versions.get(name) for name in sorted(used)}


@dataclass
class RunPlan:
    """A spec resolved against the plugins: its examples, identity and folder, before any component is built."""

    resolved: Resolved
    dataset: Dataset
    examples: list[Example]
    identity: dict[str, Any]
    hash: str
    name: str
    folder: RunFolder
    versions: dict[str, str | None]


def plan_run(spec: RunSpec, plugins: Plugins) -> RunPlan:
    """Resolve ``spec``, load its examples and name its run folder (from the configuration hash)."""
    resolved = resolve(spec, plugins)
    preflight(resolved.imaginer, spec.imaginer_args, resolved.reader, spec.reader_args, purpose="run")
    dataset: Dataset = resolved.dataset.build(**spec.dataset_args)
    examples = load_examples(dataset, spec.split, spec.limit, resolved.dataset.name)
    ident = identity(spec, resolved, examples)
    digest = config_hash(ident)
    name = folder_name(resolved.dataset.name, spec.split, resolved.imaginer.name, resolved.reader.name, digest)
    folder = RunFolder(spec.output or spec.runs_dir / name)
    return RunPlan(resolved, dataset, examples, ident, digest, name, folder, plugin_versions(plugins, resolved))


def run(
    spec: RunSpec,
    plugins: Plugins,
    *,
    progress: bool = True,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
    non_default: dict[str, Any] | None = None,
    processes: Processes | None = None,
) -> tuple[RunFolder, dict[str, Any]]:
    """Run (or resume, or just read back) the run that ``spec`` defines; return its folder and results.

    Under a launcher (``processes``, default: from ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) each
    process predicts its shard of the examples and rank 0 merges them (see `iagbench.runs.shards`).
    """
    procs = processes or Processes.from_environment()
    with collector.sparse():  # start-up: imports (iagbench.runs.collector)
        plan = plan_run(spec, plugins)
    folder, examples = plan.folder, plan.examples
    finished = _finished_results(plan, procs, log)
    if finished is not None:
        return folder, finished
    lock = folder.lock(procs.rank)  # one writer per (folder, rank): see RunFolder.lock
    try:
        if folder.path.is_dir():
            lock.acquire()  # before any model loads: a second process on this folder stops at once
            done, todo = todo_examples(folder, examples, procs)
        else:  # a new folder: nothing done yet (and nothing read before the lock is held)
            done, todo = set(), [example for example in examples if procs.owns(example.id)]
        started = time.perf_counter()
        # build (and so validate) the components before anything is written
        with collector.sparse():
            built = _build_components(spec, plan.resolved, procs, progress) if todo else None
        if not lock.held:  # a new folder: start it (rank 0) or wait for it, lock it, look again
            claim_folder(folder, procs, lock, spec.wait_timeout)
            finished = _finished_results(plan, procs, log)
            if finished is not None:
                return folder, finished
            done, todo = todo_examples(folder, examples, procs)  # no more than before: the components built cover it
        _open_folder(spec, plan, procs, done, len(todo), non_default, log)
        with collector.settled():
            status = _predict_todo(spec, plan, procs, built, todo, progress) if built and todo else None
        if not procs.main:
            lock.release()  # this rank's shard is written; rank 0 merges it
            wait_for_file(folder.results_path, spec.wait_timeout, folder.path)
            return folder, folder.results()
        return folder, _finish(folder, examples, spec, procs, status, time.perf_counter() - started, log)
    finally:
        lock.release()


def _finished_results(plan: RunPlan, procs: Processes, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The results of a finished run in the plan's folder (after checking it is this configuration's), else None."""
    folder = plan.folder
    if not folder.exists():
        if procs.main:
            folder.check_new()
        return None
    folder.check(plan.identity, plan.versions)
    if not folder.is_finished():
        return None
    log(f"run already finished: {folder.path} (not recomputed)")
    return folder.results()


def _build_components(
    spec: RunSpec, resolved: Resolved, procs: Processes, progress: bool = True
) -> tuple[str, Imaginer, Reader]:
    """This process's device, and the imaginer and reader built on it (after seeding); without ``progress``, the
    libraries' own bars ("Loading weights") are off too."""
    from iagbench.lm.models import library_progress_bars

    device = procs.use_device()
    seed_everything(spec.seed)
    with library_progress_bars(progress):
        imaginer: Imaginer = resolved.imaginer.build(**spec.imaginer_args)
        reader: Reader = resolved.reader.build(**spec.reader_args)
    return device, imaginer, reader


def _open_folder(
    spec: RunSpec,
    plan: RunPlan,
    procs: Processes,
    done: set[str],
    todo: int,
    non_default: dict[str, Any] | None,
    log: Callable[[str], None],
) -> None:
    """Rank 0 starts the folder (config.json only if new); the other ranks wait for it and check it."""
    folder = plan.folder
    if procs.main:
        fresh = {
            "name": plan.name,
            "hash": plan.hash,
            "identity": plan.identity,
            "batch_size": spec.batch_size,
            "batch_tokens": spec.batch_tokens,
            "batch_order": spec.order,
            "metrics": metric_versions(plan.resolved.metrics),
            "plugins": plan.versions,
            "dataset_source": plan.dataset.describe(spec.split),
            "iagbench_version": __version__,
            "non_default_options": non_default or {},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        folder.start(fresh, {**environment(), "world_size": procs.world_size})  # config.json only if new
        done_here = sum(example.id in done for example in plan.examples)
        log(f"run folder: {folder.path} ({done_here} of {len(plan.examples)} examples already done)")
    else:
        wait_for_file(folder.config_path, spec.wait_timeout)
        folder.check(plan.identity, plan.versions)
        log(f"rank {procs.rank} of {procs.world_size}: {todo} examples to predict into {folder.path}")


def _predict_todo(
    spec: RunSpec,
    plan: RunPlan,
    procs: Processes,
    built: tuple[str, Imaginer, Reader],
    todo: Sequence[Example],
    progress: bool,
) -> dict[str, Any]:
    """Predict this process's ``todo`` into the folder (or its shard), with a progress bar; return its status."""
    device, imaginer, reader = built
    folder, examples = plan.folder, plan.examples
    described = {"imaginer": imaginer.describe(), "reader": reader.describe()}
    folder.check_components(described)  # a resume with components described otherwise is refused
    if procs.main:
        folder.record_components(described)
    sizer = BatchSizer.for_setting(spec.batch_size, device.startswith("cuda"), spec.batch_tokens)
    status = {"rank": procs.rank, "world_size": procs.world_size, "device": device}
    shard = ShardWriter(folder.path, procs) if procs.sharded else None
    write = shard.append if shard else lambda records, _status: folder.append(records)
    # one bar: all examples for one process; rank 0's shard for several
    total, initial = (len(todo), 0) if procs.sharded else (len(examples), len(examples) - len(todo))
    with _bar(progress and procs.main, total, initial) as bar:
        return predict(todo, imaginer, reader, plan.resolved.metrics, write, sizer, spec.order, status, bar.update)


def _bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="examples", unit="q")


def _finish(
    folder: RunFolder,
    examples: Sequence[Example],
    spec: RunSpec,
    procs: Processes,
    status: dict[str, Any] | None,
    elapsed: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Rank 0: wait for the other shards, merge any there are, check every example is scored; write results."""
    if procs.sharded:
        wait_for_shards(folder, [example.id for example in examples], procs.world_size, spec.wait_timeout, log)
    written = []
    if status is not None and not procs.sharded:
        written.append({"file": folder.predictions_path.name, **status})
    if shard_files(folder.path):
        written += merge(folder, [example.id for example in ordered_examples(examples, spec.order)])
    records = folder.records()
    by_id = {record["id"]: record for record in records}
    missing = [example.id for example in examples if example.id not in by_id]
    if missing:
        raise ConfigurationError(
            f"{folder.predictions_path}: {len(missing)} examples missing after the run (first: {missing[0]})"
        )
    ordered = [by_id[example.id] for example in examples]
    results = results_from(ordered, folder.config(), elapsed)
    results["world_size"] = procs.world_size
    results["predicted_by"] = written
    cost = run_cost(ordered, written)
    if cost is not None:  # a measurement (peak memory: this session's processes), not part of the run's identity
        results["cost"], results["cost_version"] = cost, COST_VERSION
    folder.write_results(results)
    return results
