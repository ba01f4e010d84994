"""Writing trained components in their own libraries' formats, for `iagbench export` (`Exportable.export`):
a peft adapter folder, a transformers ``save_pretrained`` folder, safetensors weights with a JSON config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*") if path.is_file())


def export_peft_adapter(reader: Any, folder: Path) -> dict[str, Any]:
    """The reader's peft LoRA baseline (`iagbench.lm.peft_lora.add_peft_lora`) as a peft adapter folder, which
    ``PeftModel.from_pretrained(base_model, folder)`` loads onto the reader's base model."""
    model = getattr(reader, "peft_model", None)
    if model is None:
        raise ConfigurationError(f"{type(reader).__name__}: no peft LoRA to export (trained with lora_rank=R?)")
    model.save_pretrained(str(folder))
    return {"format": "peft-adapter", "files": _files(folder)}


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
