"""`iagbench compress`: question -> compressed-context training pairs for the `imagine` imaginer, resumable.

Design notes: docs/internals.md#pluginsimaginationcommandspy
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iagbench.commands.arguments import (
    CommandOptions,
    Invocation,
    add_batch_size,
    add_component_options,
    add_data_options,  # fmt: skip
    add_progress,
)
from iagbench.commands.logs import info
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.job import JobSpec
from iagbench.contract.plugins import Plugins
from iagbench.lm.models import library_progress_bars
from iagbench.runs.folder import append_records, check_configuration, read_json, read_records, write_json_atomic
from iagbench.runs.passages import imagined_batches, passage_source
from iagbench.runs.runner import EXECUTION_KEYS


def configure(options: CommandOptions) -> None:
    """The options of `iagbench compress`."""
    add_data_options(options)
    add_component_options(options, imaginer=None, reader=False, imaginer_help="where the passages come from, e.g. bm25 or given",
                          imaginer_args_help="its options, e.g. corpus=PATH,k=5")  # fmt: skip
    add = options.add
    add("--output", type=Path, required=True, help="JSON-lines file of pairs (appended to; resumable)")
    add("--target-tokens", type=int, default=64, help="token budget of a compressed context (default: 64)")
    add("--model", default="smollm2-135m", help="scoring causal LM (default: smollm2-135m)")
    add("--granularity", default="sentence", choices=("sentence", "passage"), help="what is kept or dropped whole")
    add("--prune", default="none", choices=("none", "tokens", "llmlingua"),
        help="after the coarse selection: tokens = keep the --target-tokens tokens of highest contrastive perplexity "
        "given the question (LongLLMLingua's condition_compare; default: none); llmlingua = instead of both stages, "
        "LLMLingua 0.2.2's compress_prompt with the reference's arguments (needs --granularity passage)")  # fmt: skip
    add("--context-budget", type=int, default=100,
        help="with --prune tokens or llmlingua: the coarse selection keeps up to --target-tokens + this many "
        "(default: 100)")  # fmt: skip
    add_batch_size(options, 16, help="questions per imaginer call (default: 16)")
    add_progress(options)


def run(invocation: Invocation) -> int:
    job = invocation.job()
    compressor = {key: job.settings[key] for key in ("model", "target_tokens", "granularity")}
    if job.settings["prune"] != "none":  # recorded only when on: earlier pairs files keep their identity
        compressor.update(prune=job.settings["prune"], context_budget=job.settings["context_budget"])
    print(json.dumps(compress(invocation.plugins, job, compressor_options=compressor, log=info), indent=2))
    return 0


def config_path(output: Path) -> Path:
    return output.with_name(output.name + ".config.json")


def compress(
    plugins: Plugins,
    job: JobSpec,
    *,
    compressor_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = logging.getLogger(__name__).info,
    compressor: Any = None,
) -> dict[str, Any]:
    """Append a pair for every example of the split not yet in ``output``; return a summary.

    ``compressor`` (tests) replaces the `Compressor` built from ``compressor_options``.
    """
    from .compress import Compressor

    output = job.output
    options = {"model": "smollm2-135m", "target_tokens": 64, "granularity": "sentence", **(compressor_options or {})}
    identity = _identity(plugins, job, options)
    config = config_path(output)
    if config.exists():
        check_configuration(config, read_json(config), identity, {}, "compression configuration")
    elif output.exists() and output.stat().st_size:
        raise ConfigurationError(
            f"{output} exists without {config.name}: not a pairs file of iagbench compress; choose another --output"
        )
    examples, source = passage_source(plugins, job, purpose="compress")
    done = {record["id"] for record in read_records(output, tail="repair")}
    todo = [example for example in examples if example.id not in done]
    started = time.perf_counter()
    tokens: list[int] = []
    if todo:
        with library_progress_bars(job.progress):  # transformers' "Loading weights" follows --no-progress
            compressor = compressor or Compressor(**options)
        if not config.exists():
            output.parent.mkdir(parents=True, exist_ok=True)
            described = {"identity": identity, "compressor": compressor.describe(), "source": source.describe()}
            write_json_atomic(config, described)
        already = len(examples) - len(todo)
        log(f"compressing {len(todo)} of {len(examples)} questions into {output} ({already} already there)")
        tokens = _write_pairs(job, source, compressor, examples, todo)
    return {
        "output": str(output),
        "questions": len(examples),
        "written": len(todo),
        "already_there": len(examples) - len(todo),
        "mean_tokens_written": round(sum(tokens) / len(tokens), 2) if tokens else None,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _identity(plugins: Plugins, job: JobSpec, options: dict[str, Any]) -> dict[str, Any]:
    """What makes a pairs file what it is: the questions, where the passages come from, the compressor."""
    from .compress import version

    dataset = {
        "name": plugins["datasets"].get(job.dataset).name,
        "split": job.split,
        "options": {k: v for k, v in job.dataset_args.items() if k not in EXECUTION_KEYS},
    }
    imaginer = {"name": plugins["imaginers"].get(job.imaginer).name, "options": job.imaginer_args}
    compressor = {**options, "version": version(options.get("prune", "none"))}
    return {"dataset": dataset, "imaginer": imaginer, "compressor": compressor}


def _write_pairs(job: JobSpec, source: Any, compressor: Any, examples: list[Any], todo: list[Any]) -> list[int]:
    """Compress and append the pairs of ``todo``, a batch at a time; the compressed token counts."""
    from tqdm.auto import tqdm

    tokens: list[int] = []
    progress = tqdm(
        total=len(examples), initial=len(examples) - len(todo), disable=not job.progress, desc="compressing", unit="q"
    )
    with progress as bar:
        for batch, contexts in imagined_batches(source, todo, job.settings["batch_size"]):
            records = []
            for example, context in zip(batch, contexts):
                pair = compressor.compress(example.question, context.passages)
                tokens.append(pair["tokens"])
                records.append(
                    {"id": example.id, "question": example.question, "answers": list(example.answers), **pair}
                )
            append_records(job.output, records)
            bar.update(len(batch))
    return tokens
