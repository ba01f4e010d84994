"""`iagbench retrieve`: each question's retrieved passages written as FiD-format JSON lines (`iagbench.runs.passages`)."""

from __future__ import annotations

import json
from pathlib import Path

from iagbench.commands.arguments import (
    CommandOptions,
    Invocation,
    add_batch_size,
    add_component_options,
    add_data_options,  # fmt: skip
    add_progress,
)
from iagbench.commands.logs import info

NAME = "retrieve"
HELP = "write each question's retrieved passages as FiD-format JSON lines"


def configure(options: CommandOptions) -> None:
    add_data_options(options)
    add_component_options(options, imaginer=None, reader=False, imaginer_help="retriever, e.g. bm25",
                          imaginer_args_help="retriever options, e.g. corpus=PATH,k=100")  # fmt: skip
    options.add("--output", type=Path, required=True, help="JSON-lines file to write (.gz: gzip)")
    add_batch_size(options, 64, help="questions per retriever call (default: 64)")
    add_progress(options)


def run(invocation: Invocation) -> int:
    from iagbench.runs.passages import retrieve

    print(json.dumps(retrieve(invocation.plugins, invocation.job(), log=info), indent=2))
    return 0
