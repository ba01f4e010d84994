"""Score predictions again: a JSON-lines file, or a run folder (optionally storing the new scores)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iagbench.contract.components import Metric
from iagbench.contract.errors import DataError, RunFolderError
from iagbench.contract.types import Passage
from iagbench.files.jsonl import json_objects
from iagbench.runs.folder import RESULTS, RunFolder
from iagbench.runs.scoring import aggregate, metric_versions, score_example


def read_scorable(path: Path) -> Iterator[tuple[int, str, list[str], list[Passage]]]:
    """(line, prediction, answers, passages) of each line; passages from 'ctxs' or 'context.passages'.

    An id on two lines, or a file without records, is an error (it would be scored as another n).
    """
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise DataError(path, None, None, f"cannot read: {error.strerror}") from None
    first_line: dict[Any, int] = {}
    count = 0
    with handle:
        for number, record in json_objects(_utf8_lines(handle, path), path):
            _check_id(record.get("id"), first_line, path, number)
            count += 1
            yield number, *_fields(record, path, number)
    if not count:
        raise DataError(path, None, None, "no records to score (an empty file)")


def _utf8_lines(lines: Iterable[bytes], path: Path) -> Iterator[str]:
    for number, raw in enumerate(lines, start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(path, number, None, f"not UTF-8 text ({error.reason}); convert the file to UTF-8") from None


def _check_id(example_id: Any, first_line: dict[Any, int], path: Path, line: int) -> None:
    if not isinstance(example_id, (str, int)):
        return
    if example_id in first_line:
        raise DataError(
            path, line, "id", f"example '{example_id}' appears twice (first on line {first_line[example_id]})"
        )
    first_line[example_id] = line


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
    """Score a run folder's records again; ``write`` stores the new scores (a finished run only, under its lock)."""
    folder = RunFolder(path)
    folder.config()
    if not write:
        return _rescore(folder, metrics, write=False)
    if not folder.is_finished():  # before anything is touched
        raise RunFolderError(
            f"{folder.path}: run not finished (no {RESULTS}); finish it (run the same command again), then score --write"
        )
    with folder.lock():
        return _rescore(folder, metrics, write=True)


def _rescore(folder: RunFolder, metrics: Sequence[Metric], *, write: bool) -> dict[str, Any]:
    records = folder.records()
    if not records:
        raise RunFolderError(f"{folder.predictions_path}: no records to score")
    for number, record in enumerate(records, start=1):
        prediction, answers, passages = _fields(record, folder.predictions_path, number)
        record["scores"] = score_example(metrics, prediction, answers, passages)
    result = summary([record["scores"] for record in records], metrics)
    if write:
        results = folder.results()
        results.update(result)
        results["rescored_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        folder.rewrite_records(records)  # each file whole or not at all (a temporary file, then os.replace)
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
