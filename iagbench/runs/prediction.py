"""Predicting a run's examples: batch order, the batch loop (halving on CUDA out of memory), scored records."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from iagbench.contract.components import Imaginer, Metric, Reader
from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context, Example
from iagbench.runs.batching import BatchSizer, out_of_memory_error, release_memory
from iagbench.runs.cost import batch_costs, model_shape, peak_memory
from iagbench.runs.scoring import score_example

ORDERS = ("length", "dataset")


def context_summary(context: Context) -> dict[str, Any]:
    summary: dict[str, Any] = {"passages": [p.to_json() for p in context.passages]}
    if context.adapter is not None:
        describe = getattr(context.adapter, "describe", None)
        summary["adapter"] = describe() if callable(describe) else type(context.adapter).__name__
    return summary


def prediction_record(
    example: Example, context: Context, prediction: str, metrics: Sequence[Metric], cost: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One line of predictions.jsonl; the reader's ``details["cost"]`` moves into ``cost`` (docs/cost.md)."""
    record: dict[str, Any] = {
        "id": example.id,
        "question": example.question,
        "answers": list(example.answers),
        "prediction": str(prediction),
    }
    raw = getattr(prediction, "raw", None)
    if raw is not None:
        record["raw"] = raw
    details = getattr(prediction, "details", None)
    if isinstance(details, dict) and cost is not None:
        details = {key: value for key, value in details.items() if key != "cost"}
    if details:
        record["details"] = details
    record["context"] = context_summary(context)
    record["scores"] = score_example(metrics, str(prediction), example.answers, context.passages)
    if cost is not None:
        record["cost"] = cost
    return record


def ordered_examples(examples: Sequence[Example], order: str = "length") -> list[Example]:
    """The order examples are predicted in; ``"length"`` (stable) groups questions of similar length to save padding."""
    if order not in ORDERS:
        raise ConfigurationError(f"unknown batch order '{order}'; orders: {', '.join(ORDERS)}")
    ordered = list(examples)
    if order == "length":
        ordered.sort(key=lambda e: len(e.question))
    return ordered


def batches(examples: Sequence[Example], batch_size: int, order: str = "length") -> list[list[Example]]:
    """Batches of ``batch_size`` examples in `ordered_examples` order."""
    ordered = ordered_examples(examples, order)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def predict(
    todo: Sequence[Example],
    imaginer: Imaginer,
    reader: Reader,
    metrics: Sequence[Metric],
    write: Callable[[list[dict[str, Any]], dict[str, Any]], None],
    sizer: BatchSizer,
    order: str,
    status: dict[str, Any],
    advance: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Predict and score ``todo`` batch by batch, writing each batch's records with this process's status.

    A batch that runs out of CUDA memory is retried, halved, when ``sizer`` probes (else it is a
    one-line error): every example is written once, in ``order``. Return the final status.
    """
    out_of_memory = out_of_memory_error()
    shape = model_shape(reader)
    ordered = ordered_examples(todo, order)
    lengths = prompt_lengths(reader, ordered) if sizer.tokens is not None else None
    if sizer.tokens is not None and lengths is None:
        sizer.without_tokens()
    start = predicted = 0
    while start < len(ordered):
        batch = ordered[start : start + sizer.take(lengths, start)]
        try:
            records = _predict_batch(batch, imaginer, reader, metrics, shape)
        except out_of_memory:
            failed = True
        else:
            failed = False
        if failed:  # outside the except block, so the error's frames (and their tensors) are gone
            sizer.out_of_memory(len(batch), batch[0].id)
            release_memory()
            continue
        sizer.fitted(len(batch))
        predicted += len(batch)
        status = {**status, **sizer.describe(), "examples": predicted}
        status["peak_memory"] = peak_memory(str(status.get("device", "cpu")))
        write(records, status)
        start += len(batch)
        advance(len(batch))
    return status


def prompt_lengths(reader: Reader, examples: Sequence[Example]) -> list[int] | None:
    """The reader's prompt tokens per example, without context (None: the reader does not count)."""
    count = getattr(reader, "prompt_tokens", None)
    lengths = count(examples, [Context()] * len(examples)) if callable(count) else None
    if lengths is not None and len(lengths) != len(examples):
        raise ConfigurationError(f"reader returned {len(lengths)} prompt lengths for {len(examples)} examples")
    return None if lengths is None else [int(n) for n in lengths]


def _predict_batch(
    batch: Sequence[Example], imaginer: Imaginer, reader: Reader, metrics: Sequence[Metric], shape: Any = None
) -> list[dict[str, Any]]:
    """Imagine, read and score one batch, timing each stage (docs/cost.md)."""
    started = time.perf_counter()
    contexts = imaginer.imagine(batch)
    imagined = time.perf_counter()
    _check_lengths("imaginer", contexts, batch)
    _check_kinds(imaginer, contexts)
    read_from = time.perf_counter()
    predictions = reader.answer(batch, contexts)
    read_s = time.perf_counter() - read_from
    _check_lengths("reader", predictions, batch)
    costs = batch_costs(predictions, contexts, imagined - started, read_s, shape)
    return [prediction_record(e, c, p, metrics, cost) for e, c, p, cost in zip(batch, contexts, predictions, costs)]


def _check_kinds(imaginer: Imaginer, contexts: Sequence[Context]) -> None:
    for context in contexts:
        undeclared = context.kinds - frozenset(imaginer.provides)
        if undeclared:
            raise ConfigurationError(
                f"imaginer {type(imaginer).__name__} returned {sorted(undeclared)} but declares provides="
                f"{sorted(imaginer.provides)}"
            )


def _check_lengths(component: str, outputs: Sequence[Any], batch: Sequence[Example]) -> None:
    if len(outputs) != len(batch):
        raise ConfigurationError(f"{component} returned {len(outputs)} outputs for a batch of {len(batch)} examples")
