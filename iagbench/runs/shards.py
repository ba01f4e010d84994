"""Prediction shards of a multi-process run, and the main process's merge of them.

Design notes: docs/internals.md#iagbenchrunsshardspy
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ProcessesError, RunFolderError
from iagbench.contract.types import Example
from iagbench.runs.folder import (
    FolderLock,
    RunFolder,
    append_records,
    read_json,
    read_records,
    write_json_atomic,
    writing,
)
from iagbench.runs.processes import Processes, shard_of

SHARD = re.compile(r"predictions\.rank(\d+)-of-(\d+)\.jsonl")
STATUS = re.compile(r"rank(\d+)-of-(\d+)\.json")
POLL_S = 0.2


def shard_path(folder: Path, rank: int, world_size: int) -> Path:
    return folder / f"predictions.rank{rank}-of-{world_size}.jsonl"


def status_path(folder: Path, rank: int, world_size: int) -> Path:
    return folder / f"rank{rank}-of-{world_size}.json"


def shard_files(folder: Path) -> list[Path]:
    """Every shard in ``folder``, of any world size, ordered by (world size, rank)."""
    if not folder.is_dir():
        return []
    found = [(int(m[2]), int(m[1]), p) for p in folder.iterdir() if (m := SHARD.fullmatch(p.name))]
    return [path for _, _, path in sorted(found)]


def done_ids(folder: RunFolder, processes: Processes) -> set[str]:
    """Ids of the examples with a complete record in any predictions file of ``folder``.

    Shards are read before ``predictions.jsonl``: a merge running meanwhile replaces
    ``predictions.jsonl`` before it removes a shard, so no record can slip between the two reads.
    """
    own = shard_path(folder.path, processes.rank, processes.world_size)
    ids: set[str] = set()
    for path in shard_files(folder.path):
        ids.update(record["id"] for record in read_records(path, tail="repair" if path == own else "skip"))
    main_tail = "repair" if processes.main else "skip"
    ids.update(record["id"] for record in read_records(folder.predictions_path, tail=main_tail))
    return ids


def todo_examples(
    folder: RunFolder, examples: Sequence[Example], processes: Processes
) -> tuple[set[str], list[Example]]:
    """The ids already predicted, and this rank's examples left; repairs this rank's own files (hold its lock)."""
    done = done_ids(folder, processes)
    return done, [example for example in examples if example.id not in done and processes.owns(example.id)]


def claim_folder(folder: RunFolder, processes: Processes, lock: FolderLock, timeout: float) -> None:
    """Rank 0 makes a new run folder, the other ranks wait for rank 0 to start it; then each takes its lock."""
    if processes.main:
        with writing(folder.path):
            folder.path.mkdir(parents=True, exist_ok=True)
    else:
        wait_for_file(folder.config_path, timeout)
    lock.acquire()


class ShardWriter:
    """Appends this rank's records to its shard, after recording how they were made."""

    def __init__(self, folder: Path, processes: Processes):
        self.path = shard_path(folder, processes.rank, processes.world_size)
        self.status = status_path(folder, processes.rank, processes.world_size)

    def append(self, records: Sequence[dict[str, Any]], status: dict[str, Any]) -> None:
        write_json_atomic(self.status, status)  # first: a shard with records always has its status
        append_records(self.path, records)


class ShardWatcher:
    """Reads the complete lines that shards gain, file by file from where it stopped."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.offsets: dict[Path, int] = {}
        self.ids: set[str] = set()

    def poll(self) -> int:
        """Read what the shards gained; return how many new ids that was."""
        before = len(self.ids)
        for path in shard_files(self.folder):
            offset = self.offsets.get(path, 0)
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except FileNotFoundError:
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].decode("utf-8").split("\n")[:-1]:
                try:
                    self.ids.add(json.loads(line)["id"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise RunFolderError(f"{path}: a line after byte {offset} is not a prediction record") from None
            self.offsets[path] = offset + end
        return len(self.ids) - before


def wait_for_shards(
    folder: RunFolder, ids: Sequence[str], world_size: int, timeout: float, log: Callable[[str], None]
) -> None:
    """Return once every id has a record in ``predictions.jsonl`` or a shard; fail after ``timeout`` s without progress."""
    present = {record["id"] for record in read_records(folder.predictions_path, tail="skip")}
    watcher = ShardWatcher(folder.path)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        if watcher.poll():
            deadline = time.monotonic() + timeout
        missing = [i for i in ids if i not in present and i not in watcher.ids]
        if not missing:
            return
        ranks = sorted({shard_of(i, world_size) for i in missing})
        if time.monotonic() > deadline:
            raise ProcessesError(
                f"{folder.path}: no new prediction from rank(s) {', '.join(map(str, ranks))} of {world_size} in "
                f"{timeout:g} s ({len(missing)} examples missing); run the same command again to resume"
            )
        if not told:
            log(f"waiting for rank(s) {', '.join(map(str, ranks))} of {world_size} ({len(missing)} examples left)")
            told = True
        time.sleep(POLL_S)


def wait_for_file(path: Path, timeout: float, folder: Path | None = None) -> None:
    """Return once rank 0 wrote ``path``; fail after ``timeout`` s (without new predictions in ``folder``, if given)."""
    watcher = ShardWatcher(folder) if folder is not None else None
    deadline = time.monotonic() + timeout
    while not path.exists():
        if watcher is not None and watcher.poll():
            deadline = time.monotonic() + timeout
        if time.monotonic() > deadline:
            raise ProcessesError(f"{path}: rank 0 has not written it after {timeout:g} s; check rank 0's output")
        time.sleep(POLL_S)


def merge(folder: RunFolder, ordered_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Write ``predictions.jsonl`` from itself and every shard, in ``ordered_ids`` order; remove the shards.

    Return a description of each shard merged (its status and record count). The same record in
    two files (a merge cut short before it removed the shards) is kept once; two different records
    for one example are refused.
    """
    shards = shard_files(folder.path)
    by_id: dict[str, dict[str, Any]] = {}
    written: list[dict[str, Any]] = []
    for path in [folder.predictions_path, *shards]:
        records = read_records(path, tail="skip")
        _add(by_id, records, path)
        if path != folder.predictions_path:
            written.append(_shard_summary(path, len(records)))
    wanted = set(ordered_ids)
    unknown = [i for i in by_id if i not in wanted]
    if unknown:
        raise RunFolderError(
            f"{folder.path}: predictions for {len(unknown)} examples not in this run (first: {unknown[0]})"
        )
    folder.rewrite_records([by_id[i] for i in ordered_ids if i in by_id])
    for path in shards:
        path.unlink()
    for path in folder.path.iterdir():
        if STATUS.fullmatch(path.name):
            path.unlink()
    return written


def _add(by_id: dict[str, dict[str, Any]], records: Iterable[dict[str, Any]], path: Path) -> None:
    for record in records:
        previous = by_id.setdefault(record["id"], record)
        if previous is not record and previous != record:
            raise RunFolderError(
                f"{path}: field 'id': example '{record['id']}' has another prediction in an earlier file of {path.parent}"
            )


def _shard_summary(path: Path, count: int) -> dict[str, Any]:
    match = SHARD.fullmatch(path.name)
    assert match is not None
    status = status_path(path.parent, int(match[1]), int(match[2]))
    described = read_json(status) if status.exists() else {}
    return {"file": path.name, **described, "examples": count}  # the file's count, over all its sessions
