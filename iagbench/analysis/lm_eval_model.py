"""An lm-evaluation-harness model, ``iagbench``, registered on import, that answers ``generate_until``
requests with an iagbench imaginer + reader; ``python -m iagbench.analysis.lm_eval_model`` is ``lm_eval`` with it.

Design notes: docs/internals.md#iagbenchanalysislm_eval_modelpy"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import sys
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own models, lazily: registering ours first would hide them)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Example

QUESTION_LINE = re.compile(r"^[ \t]*(?:Q|Question)[ \t]*:[ \t]*(.*?)[ \t]*$", re.MULTILINE)
DEFAULT_BATCH = 16


def question_from(context: str, pattern: str | None = None) -> str:
    """The question inside an lm-eval prompt (see the module docstring)."""
    if pattern:
        match = re.search(pattern, context, re.DOTALL)
        if not match:
            raise ConfigurationError(f"question_regex {pattern!r} does not match the prompt {context[:200]!r}")
        return (match.group(1) if match.groups() else match.group(0)).strip()
    lines = [line for line in QUESTION_LINE.findall(context) if line]
    return lines[-1] if lines else context.strip()


def cut_at(text: str, until: Any) -> str:
    """``text`` up to the first occurrence of any stop string."""
    stops = [until] if isinstance(until, str) else list(until or [])
    cut = len(text)
    for stop in stops:
        if stop:
            position = text.find(stop)
            if position != -1:
                cut = min(cut, position)
    return text[:cut]


def _batch_size(value: Any) -> int:
    if value is None or (isinstance(value, str) and value.startswith("auto")):
        return DEFAULT_BATCH
    size = int(value)
    if size < 1:
        raise ConfigurationError(f"batch_size {value}: expected a positive integer")
    return size


class IagbenchLM(LM):
    """Answers each ``generate_until`` request's question with ``imaginer.imagine`` then ``reader.answer``."""

    def __init__(
        self,
        reader: str | None = None,
        imaginer: str | None = "none",
        question_regex: str | None = None,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        **options: Any,
    ) -> None:
        super().__init__()
        from iagbench.contract.plugins import default_plugins
        from iagbench.runs.runner import check_compatible

        if not reader:
            raise ConfigurationError("model_args needs reader=NAME (and optionally imaginer=NAME)")
        imaginer = imaginer or "none"  # lm-eval parses imaginer=none into None
        imaginer_args, reader_args = {}, {}
        for key, value in options.items():
            component, dot, option = key.partition(".")
            if not dot or component not in ("imaginer", "reader") or not option.isidentifier():
                raise ConfigurationError(
                    f"unknown model argument '{key}': expected reader=, imaginer=, question_regex=, batch_size=, "
                    "imaginer.OPTION= or reader.OPTION="
                )
            (imaginer_args if component == "imaginer" else reader_args)[option] = value
        plugins = default_plugins()
        imaginer_entry, reader_entry = plugins["imaginers"].get(imaginer), plugins["readers"].get(reader)
        check_compatible(imaginer_entry, reader_entry)
        for entry, args in ((imaginer_entry, imaginer_args), (reader_entry, reader_args)):
            if device and "device" not in args and _takes(entry.load(), "device") and _usable(device):
                args["device"] = str(device)
        self.imaginer = imaginer_entry.build(**imaginer_args)
        self.reader = reader_entry.build(**reader_args)
        self.question_regex = question_regex
        self.batch_size = _batch_size(batch_size)
        self.config = {
            "imaginer": {"name": imaginer_entry.name, "options": imaginer_args},
            "reader": {"name": reader_entry.name, "options": reader_args},
        }

    @property
    def tokenizer_name(self) -> str:
        return f"iagbench:{self.config['imaginer']['name']}+{self.config['reader']['name']}"

    def answer(self, questions: list[str], progress: bool = False) -> list[str]:
        """The harness's answers to bare questions (batched by question length, returned in order)."""
        from tqdm.auto import tqdm

        from iagbench.runs.runner import batches

        examples = [
            Example(f"q-{hashlib.sha256(q.encode()).hexdigest()[:12]}-{i}", q, ()) for i, q in enumerate(questions)
        ]
        answers: dict[str, str] = {}
        bar = tqdm(total=len(examples), disable=not progress, desc=f"iagbench {self.tokenizer_name[9:]}", unit="q")
        for batch in batches(examples, self.batch_size, "length"):
            contexts = self.imaginer.imagine(batch)
            predictions = self.reader.answer(batch, contexts)
            if len(contexts) != len(batch) or len(predictions) != len(batch):
                raise ConfigurationError(
                    f"imaginer/reader returned a wrong number of outputs for a batch of {len(batch)}"
                )
            answers.update((example.id, str(prediction)) for example, prediction in zip(batch, predictions))
            bar.update(len(batch))
        bar.close()
        return [answers[example.id] for example in examples]

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        questions = [question_from(request.args[0], self.question_regex) for request in requests]
        answers = self.answer(questions, progress=not disable_tqdm)
        results = []
        for request, answer in zip(requests, answers):
            kwargs = request.args[1] if len(request.args) > 1 and isinstance(request.args[1], dict) else {}
            text = cut_at(answer, kwargs.get("until"))
            self.cache_hook.add_partial("generate_until", request.args, text)
            results.append(text)
        return results

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError("the iagbench model answers generate_until tasks only (it has no log-likelihoods)")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError("the iagbench model answers generate_until tasks only (it has no log-likelihoods)")


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """iagbench's em, f1 and subspan_em (0..1) of a ``generate_until`` answer against ``doc["answers"]``
    (or ``doc["answer"]``), for a task YAML: ``process_results: !function utils.process_results`` with
    ``utils.py`` holding ``from iagbench.analysis.lm_eval_model import process_results``."""
    from iagbench.text.normalize import exact_match, f1, subspan_em

    answers = doc.get("answers", doc.get("answer"))
    answers = [answers] if isinstance(answers, str) else list(answers)
    prediction = results[0]
    return {
        "em": exact_match(prediction, answers),
        "f1": f1(prediction, answers),
        "subspan_em": subspan_em(prediction, answers),
    }


def _usable(device: Any) -> bool:
    """Whether lm-eval's device (its command line gives ``cuda:0`` when ``--device`` is left out) exists here."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("lm-eval device %s: no CUDA here, the components choose theirs", device)
        return False
    return True


def _takes(factory: Any, name: str) -> bool:
    """Whether ``factory`` accepts the keyword ``name`` (by name or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def model_name(model_args: Any) -> str | None:
    """``iagbench__IMAGINER+READER`` for the iagbench model's arguments (a ``k=v,...`` string or a dict), else None."""
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) else dict(model_args or {})
    if not args.get("reader"):
        return None
    return f"iagbench__{args.get('imaginer') or 'none'}+{args['reader']}"


def main(argv: list[str] | None = None) -> None:
    """The ``lm_eval`` command line (``argv``, else ``sys.argv[1:]``), with the ``iagbench`` model registered and
    its results folder under ``--output_path`` named ``iagbench__IMAGINER+READER`` (lm-eval names it from a
    ``pretrained=``-like argument, else at random)."""
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.loggers.evaluation_tracker import GeneralConfigTracker

    original = GeneralConfigTracker._get_model_name
    saved = sys.argv
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    GeneralConfigTracker._get_model_name = staticmethod(lambda args: model_name(args) or original(args))
    try:
        cli_evaluate()
    finally:
        GeneralConfigTracker._get_model_name = staticmethod(original)
        sys.argv = saved


if __name__ == "__main__":  # python -m iagbench.analysis.lm_eval_model: the module proper registers the model, once
    from iagbench.analysis.lm_eval_model import main as _main

    _main()
else:
    register_model("iagbench")(IagbenchLM)
