"""`iagbench compress`: question -> compressed-context training pairs for the `imagine` imaginer, resumable.

For each question of a dataset split, the passages of any imaginer that provides them (``bm25``,
``given``, a composite) are compressed question-aware to about ``--target-tokens`` tokens
(`iagbench_plugins.imagination.compress`), and one JSON line is appended per question:
``{"id", "question", "answers", "compressed", "source_ids", "tokens", ...}``. The settings are kept
in ``<output>.config.json``; the same command again skips the ids already written (a line cut short
by a crash is dropped and redone), and other settings on the same file are refused.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.plugins import Plugins
from iagbench.runs.folder import append_records, check_configuration, read_json, read_records, write_json_atomic


def add_compress_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the `compress` subcommand to the parser's subcommands."""
    from iagbench.commands.main import _component_arguments

    compress = commands.add_parser(
        "compress", help="write question -> compressed retrieved context pairs as JSON lines (resumable; for imagine)"
    )
    _component_arguments(compress)
    compress.add_argument("--imaginer", required=True, help="where the passages come from, e.g. bm25 or given")
    compress.add_argument("--imaginer-args", default="", metavar="K=V,...", help="its options, e.g. corpus=PATH,k=5")
    compress.add_argument("--output", type=Path, required=True, help="JSON-lines file of pairs (appended to; resumable)")
    compress.add_argument("--target-tokens", type=int, default=64, help="token budget of a compressed context (default: 64)")
    compress.add_argument("--model", default="smollm2-135m", help="scoring causal LM (default: smollm2-135m)")
    compress.add_argument("--granularity", default="sentence", choices=("sentence", "passage"), help="what is kept or dropped whole")
    compress.add_argument("--batch-size", type=int, default=16, help="questions per imaginer call (default: 16)")
    compress.add_argument("--no-progress", action="store_true", help="no progress bar")
    return compress


def command_compress(args: argparse.Namespace, plugins: Plugins) -> int:
    from iagbench.commands.main import passage_job_options

    compressor = {"model": args.model, "target_tokens": args.target_tokens, "granularity": args.granularity}
    print(json.dumps(compress(plugins, **passage_job_options(args), compressor_options=compressor), indent=2))
    return 0


def config_path(output: Path) -> Path:
    return output.with_name(output.name + ".config.json")


def compress(
    plugins: Plugins,
    *,
    dataset: str,
    dataset_options: dict[str, Any],
    split: str,
    imaginer: str,
    imaginer_options: dict[str, Any],
    output: Path,
    compressor_options: dict[str, Any] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    log: Callable[[str], None] = print,
    compressor: Any = None,
) -> dict[str, Any]:
    """Append a pair for every example of the split not yet in ``output``; return a summary.

    ``compressor`` (tests) replaces the `Compressor` built from ``compressor_options``.
    """
    from tqdm.auto import tqdm

    from iagbench_plugins.imagination.compress import VERSION, Compressor

    from iagbench.commands.retrieve import imagined_batches, passage_source
    from iagbench.runs.runner import EXECUTION_KEYS

    options = {"model": "smollm2-135m", "target_tokens": 64, "granularity": "sentence", **(compressor_options or {})}
    identity = {
        "dataset": {"name": plugins["datasets"].get(dataset).name, "split": split,
                    "options": {k: v for k, v in dataset_options.items() if k not in EXECUTION_KEYS}},
        "imaginer": {"name": plugins["imaginers"].get(imaginer).name, "options": imaginer_options},
        "compressor": {**options, "version": VERSION},
    }
    config = config_path(output)
    if config.exists():
        check_configuration(config, read_json(config), identity, {}, "compression configuration")
    elif output.exists() and output.stat().st_size:
        raise ConfigurationError(f"{output} exists without {config.name}: not a pairs file of iagbench compress; choose another --output")
    examples, source = passage_source(
        plugins, dataset=dataset, dataset_options=dataset_options, split=split, imaginer=imaginer,
        imaginer_options=imaginer_options, limit=limit, batch_size=batch_size, purpose="compress",
    )  # fmt: skip
    done = {record["id"] for record in read_records(output, tail="repair")}
    todo = [example for example in examples if example.id not in done]
    started = time.perf_counter()
    tokens: list[int] = []
    if todo:
        compressor = compressor or Compressor(**options)
        if not config.exists():
            output.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(config, {"identity": identity, "compressor": compressor.describe(), "source": source.describe()})
        log(f"compressing {len(todo)} of {len(examples)} questions into {output} ({len(examples) - len(todo)} already there)")
        with tqdm(total=len(examples), initial=len(examples) - len(todo), disable=not progress, desc="compressing", unit="q") as bar:
            for batch, contexts in imagined_batches(source, todo, batch_size):
                records = []
                for example, context in zip(batch, contexts):
                    pair = compressor.compress(example.question, context.passages)
                    tokens.append(pair["tokens"])
                    records.append({"id": example.id, "question": example.question, "answers": list(example.answers), **pair})
                append_records(output, records)
                bar.update(len(batch))
    seconds = time.perf_counter() - started
    return {
        "output": str(output),
        "questions": len(examples),
        "written": len(todo),
        "already_there": len(examples) - len(todo),
        "mean_tokens_written": round(sum(tokens) / len(tokens), 2) if tokens else None,
        "seconds": round(seconds, 3),
    }
