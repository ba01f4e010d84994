"""Passage jobs: an index built on its own, each question's passages written as FiD JSON lines, and the
question -> passages source that `retrieve` and plugins' commands (``compress``) share. Any imaginer that takes
``corpus=`` or provides passages works; nothing here knows a particular retriever."""

from __future__ import annotations

import gzip
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from iagbench.contract.components import Imaginer
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.job import JobSpec
from iagbench.contract.plugins import Plugins
from iagbench.contract.types import Context, Example, Passage
from iagbench.lm.models import library_progress_bars


def index_build(plugins: Plugins, kind: str, corpus: str, options: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Build (or find) the index of imaginer ``kind`` over ``corpus``; return the imaginer's ``describe()``."""
    entry = plugins["imaginers"].get(kind)
    parameters = inspect.signature(entry.load()).parameters
    if "corpus" not in parameters:
        raise ConfigurationError(f"imaginer '{entry.name}' takes no corpus=: it has no index to build")
    if "corpus" in options:
        raise ConfigurationError("give the corpus once, with --corpus")
    options = {**options, "corpus": corpus}
    if "progress" in parameters:
        options["progress"] = progress
    with library_progress_bars(progress):  # a dense encoder's "Loading weights" follows --no-progress
        return entry.build(**options).describe()


def retrieve(
    plugins: Plugins, job: JobSpec, log: Callable[[str], None] = logging.getLogger(__name__).info
) -> dict[str, Any]:
    """Write one FiD-format JSON line per question: id, question, answers, and ctxs with id, title,
    text, score and has_answer (DPR's, from the ``has_answer`` metric). Returns a summary."""
    from tqdm.auto import tqdm

    has_answer = plugins["metrics"].get("has_answer").build() if "has_answer" in plugins["metrics"] else None
    examples, component = passage_source(plugins, job, purpose="retrieve")
    output, batch_size, progress = job.output, job.settings["batch_size"], job.progress

    started = time.perf_counter()
    hits_at: dict[int, int] = {}  # questions whose first passage with an answer is at this rank
    passages_total = most = 0
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with (
            _open_output(tmp, gz=output.name.endswith(".gz")) as out,
            tqdm(total=len(examples), disable=not progress, desc="retrieving", unit="q") as bar,
        ):
            for batch, contexts in imagined_batches(component, examples, batch_size):
                for example, context in zip(batch, contexts):
                    record = fid_record(example, context.passages, has_answer)
                    passages_total += len(record["ctxs"])
                    most = max(most, len(record["ctxs"]))
                    first = next(
                        (rank for rank, ctx in enumerate(record["ctxs"], start=1) if ctx.get("has_answer")), None
                    )
                    if first is not None:
                        hits_at[first] = hits_at.get(first, 0) + 1
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
                bar.update(len(batch))
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    seconds = time.perf_counter() - started
    summary = {
        "output": str(output),
        "questions": len(examples),
        "passages_per_question": round(passages_total / len(examples), 2),
        "seconds": round(seconds, 3),
        "questions_per_second": round(len(examples) / seconds, 2) if seconds > 0 else None,
        "imaginer": component.describe(),
    }
    if has_answer is not None and most:
        summary["has_answer"] = {
            f"@{cut}": round(100 * sum(n for rank, n in hits_at.items() if rank <= cut) / len(examples), 2)
            for cut in sorted({1, 5, 20, 100, most})
            if cut <= most
        }
    recall = " ".join(f"has_answer{cut} {value:.2f}" for cut, value in summary.get("has_answer", {}).items())
    log(
        f"retrieved {len(examples)} questions in {seconds:.2f} s ({summary['questions_per_second']} q/s): {output}  {recall}".rstrip()
    )
    return summary


def passage_source(plugins: Plugins, job: JobSpec, purpose: str) -> tuple[list[Example], Imaginer]:
    """The examples of a split and a built imaginer that provides passages (for `retrieve`, `compress`)."""
    from iagbench.runs.runner import load_examples

    dataset_entry = plugins["datasets"].get(job.dataset)
    imaginer_entry = plugins["imaginers"].get(job.imaginer)
    if "passages" not in frozenset(imaginer_entry.declared("provides")):
        raise ConfigurationError(f"imaginer '{imaginer_entry.name}' provides no passages: nothing to {purpose}")
    if job.settings["batch_size"] < 1:
        raise ConfigurationError(f"--batch-size {job.settings['batch_size']}: expected a positive integer")
    if job.limit is not None and job.limit < 1:
        raise ConfigurationError(f"--limit {job.limit}: expected a positive integer")
    examples = load_examples(dataset_entry.build(**job.dataset_args), job.split, job.limit, dataset_entry.name)
    with library_progress_bars(job.progress):
        return examples, imaginer_entry.build(**job.imaginer_args)


def imagined_batches(
    component: Imaginer, examples: Sequence[Example], batch_size: int
) -> Iterator[tuple[list[Example], list[Context]]]:
    """``(batch, contexts)`` for consecutive batches of ``examples``, checking one context per example."""
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start : start + batch_size])
        contexts = component.imagine(batch)
        if len(contexts) != len(batch):
            raise ConfigurationError(f"imaginer returned {len(contexts)} contexts for a batch of {len(batch)} examples")
        yield batch, contexts


def fid_record(example: Example, passages: tuple[Passage, ...], has_answer: Any) -> dict[str, Any]:
    """An example and its passages as a FiD/DPR JSON record (``has_answer`` per passage when the metric is there)."""
    ctxs = []
    for passage in passages:
        ctx: dict[str, Any] = passage.to_json()
        if has_answer is not None:
            scores = has_answer.score("", example.answers, [passage])
            ctx["has_answer"] = bool(scores.get(f"{has_answer.name}@1", 0.0))
        ctxs.append(ctx)
    return {"id": example.id, "question": example.question, "answers": list(example.answers), "ctxs": ctxs}


def _open_output(path: Path, gz: bool) -> IO[str]:
    if gz:
        return gzip.open(path, "wt", encoding="utf-8")
    return open(path, "w", encoding="utf-8")
