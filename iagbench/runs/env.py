"""What a run ran on: recorded in every run folder's env.json."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

RECORDED_VARIABLES = ("IAGBENCH_", "HF_", "CUDA_VISIBLE", "OMP_NUM")  # prefixes of the variables env.json records
SECRET_WORDS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "CREDENTIAL")  # in a name: recorded without its value
REDACTED = "<redacted>"
PACKAGES = (
    "iagbench",
    "torch",
    "transformers",
    "accelerate",
    "peft",
    "datasets",
    "pluggy",
    "numpy",
    "tokenizers",
    "gguf",
)


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit(path: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def accelerator() -> dict[str, Any]:
    """CUDA devices, read only when torch is already imported (so listing never imports it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {"torch_imported": False}
    info: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


def environment() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "packages": package_versions(),
        "iagbench_git_commit": git_commit(Path(__file__).resolve().parents[2]),
        "accelerator": accelerator(),
        "env": recorded_variables(os.environ),
    }


def recorded_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables env.json records; those whose name suggests a secret (HF_TOKEN, ..._API_KEY) as REDACTED."""
    return {
        name: REDACTED if any(word in name.upper() for word in SECRET_WORDS) else value
        for name, value in environ.items()
        if name.startswith(RECORDED_VARIABLES)
    }
