"""Built-in datasets: NQ-open, TriviaQA, WebQuestions, FiD/DPR question files, and the sample set.

Factories are lazy ``"module:attribute"`` strings, so listing plugins imports neither the
readers nor ``datasets``.
"""

from __future__ import annotations

from iagbench.contract.hookspecs import Register, hookimpl

_QA = "iagbench_plugins.datasets.qa"


@hookimpl
def register_datasets(register: Register) -> None:
    """Register the built-in datasets."""
    register(
        "nq",
        f"{_QA}:NaturalQuestions",
        aliases=("nq-open", "naturalquestions"),
        description="NQ-open: test 3,610, dev = EfficientQA dev 1,800, train = DPR's held-out NQ dev 8,757",
    )
    register(
        "triviaqa",
        f"{_QA}:TriviaQA",
        aliases=("tqa", "trivia_qa"),
        description="Open-domain TriviaQA: test = unfiltered dev 11,313, train = DPR's held-out dev 8,837",
    )
    register(
        "webq",
        f"{_QA}:WebQuestions",
        aliases=("webquestions", "web_questions"),
        description="WebQuestions: test 2,032, train 3,778",
    )
    register(
        "fid-json",
        f"{_QA}:FidJson",
        description="A FiD/DPR question file (JSON or JSON lines, gzip too) given with path=, ctxs as passages",
    )
    register(
        "sample",
        "iagbench_plugins.datasets.sample:Sample",
        description="The package's own questions with gold passages: a smoke-test set, not a benchmark",
    )
