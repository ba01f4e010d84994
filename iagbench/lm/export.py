"""Writing trained components in their own libraries' formats, for `iagbench export` (`Exportable.export`):
a peft adapter folder, a transformers ``save_pretrained`` folder, safetensors weights with a JSON config."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*") if path.is_file())


def export_peft_adapter(reader: Any, folder: Path, trained: Collection[str] = ()) -> dict[str, Any]:
    """The reader's peft LoRA baseline (`iagbench.lm.peft_lora.add_peft_lora`) as a peft adapter folder, which
    ``PeftModel.from_pretrained(base_model, folder)`` loads onto the reader's base model.

    ``trained``: names of base-model parameters trained next to the LoRA (the ImcQA reference's layer norms and
    embeddings); the modules holding them, tied copies included (T5's ``embed_tokens``, a tied ``lm_head``), go in
    as peft ``modules_to_save``, so the same call loads them too."""
    model = getattr(reader, "peft_model", None)
    if model is None:
        raise ConfigurationError(f"{type(reader).__name__}: no peft LoRA to export (trained with lora_rank=R?)")
    if trained:
        model = with_modules_to_save(model, trained)
    model.save_pretrained(str(folder))
    return {"format": "peft-adapter", "files": _files(folder)}


def with_modules_to_save(model: Any, trained: Collection[str]) -> Any:
    """A copy of the peft model ``model`` whose adapter also saves the modules holding the ``trained`` parameters
    of its base model (named as in the base model): peft's ``modules_to_save``, by their last name segment where
    peft's suffix match then picks exactly them (``layer_norm``, ``shared``, ...), else by full name."""
    import copy
    import warnings

    from peft import get_peft_model

    base = model.get_base_model()
    chosen = {id(p) for name, p in base.named_parameters() if name in trained}
    owners = {name.rpartition(".")[0] for name, p in base.named_parameters(remove_duplicate=False) if id(p) in chosen}
    short = {owner.rpartition(".")[2] for owner in owners}
    picked = {name for name, _ in base.named_modules(remove_duplicate=False) if name.endswith(tuple(short))}
    config = copy.deepcopy(model.peft_config[model.active_adapter])
    config.modules_to_save = sorted(short if picked == owners else owners)
    lora = {key: value for key, value in model.state_dict().items() if ".lora_" in key}
    with warnings.catch_warnings():  # tied modules are listed one by one (each saved), which peft warns about
        warnings.filterwarnings("ignore", message=".*ensure_weight_tying.*")
        exported = get_peft_model(copy.deepcopy(model).unload(), config)  # the base with its trained modules
    loaded = exported.load_state_dict(lora, strict=False)
    if loaded.unexpected_keys or len(chosen) != len(set(trained)):
        raise RuntimeError(f"export: the LoRA or the trained modules do not fit the base model {type(base).__name__}")
    return exported


def export_pretrained(model: Any, tokenizer: Any, folder: Path) -> dict[str, Any]:
    """A whole transformers model (and its tokenizer) as a ``save_pretrained`` folder (``from_pretrained`` loads it)."""
    model.save_pretrained(str(folder))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return {"format": "transformers", "files": _files(folder)}


def export_safetensors(state_dict: dict[str, Any], config: dict[str, Any], folder: Path, name: str) -> dict[str, Any]:
    """``<name>.safetensors`` (the state dict) and ``<name>.json`` (what rebuilds the module) in ``folder``."""
    from iagbench.lm.checkpoints import save_weights

    save_weights(state_dict, Path(folder) / f"{name}.safetensors")
    (Path(folder) / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"format": "safetensors+json", "files": _files(folder)}
