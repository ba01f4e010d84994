"""A run folder: config.json, env.json, predictions.jsonl (appended as it goes), results.json.

Appends are line-sized, flushed and fsynced, so after ``kill -9`` at most the last line is cut
short; opening the folder again drops that partial line and the example is redone. An append
that fails (a full disk) is cut back to the lines before it. Whole files are written to a
temporary file and moved over the old one (``os.replace``). Each writer holds a `FolderLock`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iagbench.contract.errors import RunFolderError

try:
    import fcntl
except ImportError:  # Windows: no flock; a run folder there is not guarded against a second writer
    fcntl = None  # type: ignore[assignment]

CONFIG = "config.json"
ENV = "env.json"
PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"
COMPONENTS = "components.json"
WHERE_KEYS = frozenset({"device"})  # where a component runs, not what it computes: may change on resume
LOCK = ".lock"  # rank 0's lock: config, env, components, predictions.jsonl, results (and the merge)
LOGGER = logging.getLogger(__name__)
WRITE_HINTS = dict.fromkeys((errno.ENOSPC, errno.EDQUOT), "; free some space, then run the same command again")
WRITE_HINTS.update(dict.fromkeys((errno.EACCES, errno.EPERM, errno.EROFS), "; choose a writable --output"))


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def config_hash(identity: dict[str, Any]) -> str:
    """Ten hex digits naming a resolved configuration."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]


def folder_name(dataset: str, split: str, imaginer: str, reader: str, digest: str) -> str:
    raw = f"{dataset}-{split}__{imaginer}__{reader}__{digest}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an OSError while writing ``path`` into a one-line RunFolderError naming it."""
    try:
        yield
    except OSError as error:
        hint = WRITE_HINTS.get(error.errno or 0, "")
        raise RunFolderError(f"{path}: cannot write ({error.strerror or error}){hint}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all: a temporary file, fsynced, then ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                _write_all(fd, text.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def write_json_atomic(path: Path, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


class RunFolder:
    """The files of one run, with resume-safe appends."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def env_path(self) -> Path:
        return self.path / ENV

    def exists(self) -> bool:
        return self.config_path.exists()

    def is_finished(self) -> bool:
        return self.results_path.exists()

    def config(self) -> dict[str, Any]:
        if not self.path.exists():
            raise RunFolderError(f"no run folder at {self.path}")
        if not self.config_path.exists():
            raise RunFolderError(f"{self.path}: not a run folder (no {CONFIG})")
        return read_json(self.config_path)

    def results(self) -> dict[str, Any]:
        if not self.results_path.exists():
            self.config()  # no folder, or not a run folder, first
            raise RunFolderError(
                f"{self.path}: run not finished (no {RESULTS}); run the same command again to resume it"
            )
        return read_json(self.results_path)

    def check_new(self) -> None:
        """Refuse to start a run at a file, or in a folder holding predictions without their config.json."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path}: is a file, not a run folder; give --output a folder")
        if not self.exists() and (self.predictions_path.exists() or any(self.path.glob("predictions.rank*.jsonl"))):
            raise RunFolderError(
                f"{self.path}: holds predictions but no {CONFIG}, so which configuration made them is unknown; "
                "move them away or choose another --output"
            )

    def lock(self, rank: int = 0) -> FolderLock:
        """The lock of rank 0's files (every file but the other ranks' shards), or of rank ``rank``'s shard."""
        if rank == 0:
            return FolderLock(self.path, LOCK, "this run folder")
        return FolderLock(self.path, f".rank{rank}.lock", f"rank {rank}'s shard of this run folder")

    def record_components(self, described: dict[str, Any]) -> None:
        write_json_atomic(self.path / COMPONENTS, described)

    def check_components(self, described: dict[str, Any]) -> None:
        """Refuse to resume with components ``described`` otherwise (a prompt version, a model...).

        The run's identity holds the options as given; what they resolve to can change under them
        (a new prompt version, another model behind a name), and one run must not mix predictions of both.
        """
        path = self.path / COMPONENTS
        if not path.is_file():
            return
        now = json.loads(canonical_json(described))
        differences = [d for d in diff_paths(read_json(path), now) if d.rsplit(".", 1)[-1] not in WHERE_KEYS]
        if differences:
            raise RunFolderError(
                f"{path}: this run's predictions so far were made by components described otherwise (differs in: "
                f"{', '.join(differences[:5])}); rerun in a new folder (--output) or with the components it was started with"
            )

    def check(self, identity: dict[str, Any], plugins: dict[str, Any]) -> None:
        """Refuse a folder that holds another configuration or was started by other plugin versions."""
        check_configuration(self.config_path, self.config(), identity, plugins)

    def start(self, config: dict[str, Any], environment: dict[str, Any]) -> None:
        """Write config.json for a new run, and this session's environment into env.json."""
        if not self.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config_path, config)
            write_json_atomic(self.env_path, environment)
            return
        recorded = read_json(self.env_path) if self.env_path.exists() else {}
        recorded.setdefault("resumed", []).append(environment)
        write_json_atomic(self.env_path, recorded)

    def records(self, *, repair: bool = False) -> list[dict[str, Any]]:
        """The prediction records written so far; ``repair`` drops a last line cut short by a crash."""
        return read_records(self.predictions_path, tail="repair" if repair else "error")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        append_records(self.predictions_path, records)

    def rewrite_records(self, records: list[dict[str, Any]]) -> None:
        write_text_atomic(self.predictions_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_path, results)


TAILS = ("error", "repair", "skip")


def read_records(path: Path, *, tail: str = "error") -> list[dict[str, Any]]:
    """The JSON-lines records of ``path`` (none if it does not exist), each id once.

    A last line without its newline is an interrupted write: ``tail="error"`` refuses it,
    ``"repair"`` truncates the file before it (the file's writer only, under its lock), ``"skip"`` leaves it out
    (a file another process may be appending to). An id written twice (two writers on one folder) is refused
    with ``"error"``; ``"repair"`` and ``"skip"`` keep its first record, and ``"repair"`` rewrites the file so.
    """
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}: expected one of {TAILS}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        data = _cut_tail(path, data, tail)
    records, kept, first_line = [], [], {}
    lines = _decoded(path, data).split("\n")[:-1]  # "\n" only: splitlines() also splits at U+2028, U+0085...
    for number, line in enumerate(lines, start=1):
        record = _record(path, number, line)
        if record.get("id") in first_line:
            if tail == "error":
                raise RunFolderError(
                    f"{path}:{number}: field 'id': example '{record.get('id')}' appears twice (first on line "
                    f"{first_line[record.get('id')]}); resuming the unfinished run keeps the first of each"
                )
            continue
        first_line[record.get("id")] = number
        records.append(record)
        kept.append(line)
    if len(records) < len(lines) and tail == "repair":
        write_text_atomic(path, "".join(line + "\n" for line in kept))
        LOGGER.warning(
            f"{path}: dropped {len(lines) - len(records)} duplicated records (two writers on one run folder); "
            f"kept the first complete record of each of {len(records)} examples"
        )
    return records


def _cut_tail(path: Path, data: bytes, tail: str) -> bytes:
    """``data`` without its last line, cut short by an interrupted write (truncated in the file for "repair")."""
    if tail == "error":
        raise RunFolderError(f"{path}: last line is incomplete (interrupted run); resume the run to repair it")
    cut = data.rfind(b"\n") + 1
    if tail == "repair":
        try:
            with open(path, "r+b") as handle:
                handle.truncate(cut)
        except FileNotFoundError:  # merged and removed meanwhile by the main process of a sharded run
            pass
    return data[:cut]


def _decoded(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RunFolderError(f"{path}:{line}: not UTF-8 text ({error.reason}); was it edited by hand?") from None


def _record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}:{number}: not valid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise RunFolderError(f"{path}:{number}: expected a JSON object (a prediction record)")
    return record


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines, fsynced; an append that fails (a full disk) is cut back to the lines before it."""
    data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records).encode("utf-8")
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size  # the lock holder is the only writer: nobody appends meanwhile
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


HOLDER_TRIES = 20  # x 50 ms: how long a refused process waits for the holder to write who it is
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)


class FolderLock:
    """An exclusive OS lock (``flock``) on one writer's files of a run folder; the lock file names its holder.

    Taken without waiting: a second process stops at once with one line naming the holder (pid, host, since
    when), since one command launched twice is a mistake far more often than a wish to queue. The kernel drops
    the lock when its process ends, ``kill -9`` included, so no stale lock outlives a crash.
    """

    def __init__(self, folder: Path, name: str, what: str):
        self.folder, self.path, self.what = folder, folder / name, what
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        if self.held:
            return
        if fcntl is None:
            self.held = True
            return
        with writing(self.folder):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"{self.folder}: another iagbench process is writing {self.what} ({self.holder()}); "
                "wait for it to end, or choose another --output"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in NO_FLOCK:
                raise RunFolderError(f"{self.path}: cannot lock ({error.strerror or error})") from None
            LOGGER.warning(f"{self.path}: this file system cannot lock files; nothing stops a second writer")
            self.held = True
            return
        self._fd, self.held = fd, True
        since = datetime.now(UTC).isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # who holds it is for the message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode(), 0)

    def holder(self) -> str:
        """Who holds the lock, as its lock file says (waiting a moment for a holder that is just writing it)."""
        for _ in range(HOLDER_TRIES):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                held = json.loads(self.path.read_text(encoding="utf-8"))
                return f"pid {held['pid']} on {held['host']} since {held['since']}"
            time.sleep(0.05)
        return "holder unknown"

    def release(self) -> None:
        fd, self._fd, self.held = self._fd, None, False
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # drops the lock

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_configuration(
    path: Path, previous: dict[str, Any], identity: dict[str, Any], plugins: dict[str, Any], what: str = "configuration"
) -> None:
    """Refuse to continue in a folder whose recorded ``previous`` config has another identity or plugin versions."""
    differences = diff_paths(previous.get("identity"), identity)
    if differences:
        raise RunFolderError(
            f"{path}: this folder holds another {what} (differs in: {', '.join(differences[:5])}); choose another --output"
        )
    recorded = previous.get("plugins", {})
    for name, version in plugins.items():
        if recorded.get(name) not in (None, version):
            raise RunFolderError(
                f"{path}: started with plugin '{name}' {recorded[name]}, now {version}; resume with the same version "
                "or choose another --output"
            )


def diff_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        paths: list[str] = []
        for key in sorted(set(old) | set(new)):
            paths += diff_paths(old.get(key), new.get(key), f"{prefix}{key}.")
        return paths
    return [] if old == new else [prefix.rstrip(".") or "(root)"]
