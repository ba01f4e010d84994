"""Where iagbench keeps what is expensive to rebuild (converted models, indexes), and content fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_root() -> Path:
    """``$IAGBENCH_CACHE``, else ``$XDG_CACHE_HOME/iagbench``, else ``~/.cache/iagbench``."""
    root = os.environ.get("IAGBENCH_CACHE")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "iagbench"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


REMEMBER_FROM_BYTES = 64 << 20


def cached_sha256(path: str | Path) -> str:
    """A file's sha256; a large one's is remembered by (path, size, mtime, inode) so it is hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    if stat.st_size < REMEMBER_FROM_BYTES:  # cheap to hash, and immune to same-size edits within a clock tick
        return file_sha256(path)
    key = hashlib.sha1(str(path).encode("utf-8")).hexdigest()
    record_path = cache_root() / "fingerprints" / f"{key}.json"
    stamp = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if {k: record.get(k) for k in stamp} == stamp and isinstance(record.get("sha256"), str):
            return record["sha256"]
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = record_path.with_name(f"{record_path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**stamp, "sha256": digest}), encoding="utf-8")
    os.replace(tmp, record_path)
    return digest


def folder_sha256(folder: str | Path) -> str:
    """A fingerprint of every file under a folder (relative names and contents; hidden files skipped)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = file.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        digest.update(f"{relative}\0{cached_sha256(file)}\n".encode())
    return digest.hexdigest()
