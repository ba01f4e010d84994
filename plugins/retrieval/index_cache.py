"""Indexes built once and reused: ``cache_root()/indexes/{kind}-{corpus sha256[:16]}-{settings hash}``.

A folder is built under a temporary name and renamed into place when complete, so a crash
never leaves a half index: a folder with the final name is a finished one. Its ``meta.json``
records the kind, the corpus, the settings and how long the build took.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iagbench.files.cache import cache_root

META = "meta.json"

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Index:
    """A finished index folder, and whether this process built it or found it."""

    kind: str
    path: Path
    status: str  # "built" or "reused"
    seconds: float

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "status": self.status, "seconds": round(self.seconds, 3)}


def log(message: str) -> None:
    """Index building and reuse, for the user (the `iagbench` command line shows INFO messages)."""
    LOGGER.info(message)


def settings_hash(settings: dict[str, Any]) -> str:
    """Twelve hex digits of the canonical JSON of an index's settings."""
    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def index_path(kind: str, corpus_sha256: str, settings: dict[str, Any]) -> Path:
    return cache_root() / "indexes" / f"{kind}-{corpus_sha256[:16]}-{settings_hash(settings)}"


def ensure_index(
    kind: str,
    corpus_path: Path,
    corpus_sha256: str,
    settings: dict[str, Any],
    build: Callable[[Path], dict[str, Any] | None],
) -> Index:
    """The index folder for (kind, corpus, settings), building it with ``build(tmp_folder)`` if absent.

    ``build`` writes its files into the folder it is given and may return extra facts for
    ``meta.json``. Concurrent builders race harmlessly: the first rename wins, the others
    drop their copy.
    """
    path = index_path(kind, corpus_sha256, settings)
    started = time.perf_counter()
    if (path / META).is_file():
        return Index(kind, path, "reused", time.perf_counter() - started)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir()
    try:
        facts = build(tmp) or {}
        meta = {
            "kind": kind,
            "corpus": {"path": str(corpus_path), "sha256": corpus_sha256},
            "settings": settings,
            "build_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **facts,
        }
        (tmp / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished the same index first
            if not (path / META).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return Index(kind, path, "reused", time.perf_counter() - started)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Index(kind, path, "built", time.perf_counter() - started)


def _remove_abandoned(path: Path) -> None:
    """Temporary folders of this index left by builders that died (their process is gone)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue
