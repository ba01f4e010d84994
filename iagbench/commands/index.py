"""`iagbench index build`: a retriever's index of a corpus, built ahead of runs."""

from __future__ import annotations

import json

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.options import parse_options

NAME = "index"
HELP = "build retrieval indexes ahead of runs"


def configure(options: CommandOptions) -> None:
    actions = options.parser.add_subparsers(dest="index_command", required=True, metavar="ACTION")
    build = CommandOptions(actions.add_parser("build", help="build (or find) the index of a corpus; print where it is, as JSON"),
                           "index build")  # fmt: skip
    build.add(
        "--corpus",
        required=True,
        help="DPR passages TSV, {id,title,text} JSON lines, or FlashRAG {id,contents} JSON lines",
    )
    build.add("--kind", required=True, metavar="IMAGINER", help="retriever whose index to build: bm25, dense or hybrid")
    build.add("--model", help="dense model: name, hub id or folder (default: all-MiniLM-L6-v2)")
    build.add("--args", default="", metavar="K=V,...", help="other retriever options (k1=, b=, normalize=...)")
    build.add("--no-progress", action="store_true", help="no progress bar")
    options.options.update(build.options)


def run(invocation: Invocation) -> int:
    from iagbench.runs.passages import index_build

    given = invocation.given
    invocation.options.check_required({name: given(name) for name in ("corpus", "kind")})
    options = parse_options(given("args"), flag="--args")
    if given("model"):
        if "model" in options:
            raise ConfigurationError("give the model once: --model or --args model=...")
        options["model"] = given("model")
    described = index_build(
        invocation.plugins, given("kind"), given("corpus"), options, progress=not given("no_progress")
    )
    print(json.dumps(described, indent=2))
    return 0
