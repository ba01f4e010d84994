"""Score predictions again: a JSON-lines file, or a run folder (optionally storing the new scores)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from iagbench.contract.components import Metric
from iagbench.contract.errors import DataError
from iagbench.runs.folder import RunFolder
from iagbench.runs.scoring import aggregate, metric_versions, score_example
from iagbench.files.jsonl import json_objects
from iagbench.contract.types import Passage


def read_scorable(path: Path) -> Iterator[tuple[int, str, list[str], list[Passage]]]:
    """(line, prediction, answers, passages) of each line; passages from 'ctxs' or 'context.passages'."""
    try:
        handle = open(path, encoding="utf-8")
    except OSError as error:
        raise DataError(path, None, None, f"cannot read: {error.strerror}") from None
    with handle:
        for number, record in json_objects(handle, path):
            yield number, *_fields(record, path, number)


def _fields(record: dict[str, Any], path: Path, line: int) -> tuple[str, list[str], list[Passage]]:
    prediction = record.get("prediction")
    if not isinstance(prediction, str):
        raise DataError(path, line, "prediction", "expected a string")
    answers = record.get("answers", record.get("answer"))
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
        raise DataError(path, line, "answers", "expected a non-empty list of strings")
    raw_passages = record.get("ctxs")
    field = "ctxs"
    if raw_passages is None and isinstance(record.get("context"), dict):
        raw_passages, field = record["context"].get("passages"), "context.passages"
    passages = []
    for index, ctx in enumerate(raw_passages or []):
        if not isinstance(ctx, dict) or not isinstance(ctx.get("text"), str):
            raise DataError(path, line, f"{field}[{index}].text", "expected an object with a string 'text'")
        passages.append(Passage(text=ctx["text"], title=str(ctx.get("title") or "")))
    return prediction, answers, passages


def rescore_file(path: Path, metrics: Sequence[Metric]) -> dict[str, Any]:
    scores = [score_example(metrics, p, a, c) for _, p, a, c in read_scorable(path)]
    return summary(scores, metrics)


def rescore_run(path: Path, metrics: Sequence[Metric], *, write: bool) -> dict[str, Any]:
    folder = RunFolder(path)
    folder.config()
    records = folder.records()
    for number, record in enumerate(records, start=1):
        prediction, answers, passages = _fields(record, folder.predictions_path, number)
        record["scores"] = score_example(metrics, prediction, answers, passages)
    result = summary([record["scores"] for record in records], metrics)
    if write:
        folder.rewrite_records(records)
        results = folder.results()
        results.update(result)
        results["rescored_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        folder.write_results(results)
    return result


def summary(scores: list[dict[str, float]], metrics: Sequence[Metric]) -> dict[str, Any]:
    aggregated = aggregate(scores)
    return {
        "metrics": aggregated["metrics"],
        "counts": aggregated["counts"],
        "n": len(scores),
        "metric_versions": metric_versions(metrics),
    }
