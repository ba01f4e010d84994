"""Where iagbench keeps what is expensive to rebuild: converted models, indexes."""

from __future__ import annotations

import hashlib
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
