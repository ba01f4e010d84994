"""A run folder: config.json, env.json, predictions.jsonl (appended as it goes), results.json.

Appends are line-sized, flushed and fsynced, so after ``kill -9`` at most the last line is cut
short; opening the folder again drops that partial line and the example is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iagbench.contract.errors import RunFolderError

CONFIG = "config.json"
ENV = "env.json"
PREDICTIONS = "predictions.jsonl"
RESULTS = "results.json"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def config_hash(identity: dict[str, Any]) -> str:
    """Ten hex digits naming a resolved configuration."""
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:10]


def folder_name(dataset: str, split: str, imaginer: str, reader: str, digest: str) -> str:
    raw = f"{dataset}-{split}__{imaginer}__{reader}__{digest}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", raw)


def write_json_atomic(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
        if not self.config_path.exists():
            raise RunFolderError(f"{self.path}: not a run folder (no {CONFIG})")
        return read_json(self.config_path)

    def results(self) -> dict[str, Any]:
        if not self.results_path.exists():
            raise RunFolderError(f"{self.path}: run not finished (no {RESULTS}); run the same command again to resume it")
        return read_json(self.results_path)

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
        tmp = self.predictions_path.with_name(PREDICTIONS + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        os.replace(tmp, self.predictions_path)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_path, results)


TAILS = ("error", "repair", "skip")


def read_records(path: Path, *, tail: str = "error") -> list[dict[str, Any]]:
    """The JSON-lines records of ``path`` (none if it does not exist), each id once.

    A last line without its newline is an interrupted write: ``tail="error"`` refuses it,
    ``"repair"`` truncates the file before it (the file's writer only), ``"skip"`` leaves it out
    (a file another process may be appending to).
    """
    if tail not in TAILS:
        raise ValueError(f"tail={tail!r}: expected one of {TAILS}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if data and not data.endswith(b"\n"):
        if tail == "error":
            raise RunFolderError(f"{path}: last line is incomplete (interrupted run); resume the run to repair it")
        cut = data.rfind(b"\n") + 1
        if tail == "repair":
            try:
                with open(path, "r+b") as handle:
                    handle.truncate(cut)
            except FileNotFoundError:  # merged and removed meanwhile by the main process of a sharded run
                pass
        data = data[:cut]
    records, seen = [], set()
    # split on "\n" only: str.splitlines() would also split inside strings holding U+2028, U+0085...
    for number, line in enumerate(data.decode("utf-8").split("\n")[:-1], start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise RunFolderError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if record.get("id") in seen:
            raise RunFolderError(f"{path}:{number}: field 'id': example '{record.get('id')}' appears twice")
        seen.add(record.get("id"))
        records.append(record)
    return records


def append_records(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records as JSON lines, flushed and fsynced (a crash cuts at most the last line short)."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


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
