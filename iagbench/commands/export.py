"""`iagbench export`: a training checkpoint's trained components in their own libraries' formats.

The checkpoint's ``config.json`` names each trained component (role, registry name, options); the component is
built through the plugin registry with ``checkpoint=CHECKPOINT`` and, if it is `Exportable`, writes itself:
a peft LoRA adapter folder, a ``save_pretrained`` model folder, ``hypernetwork.safetensors`` + JSON, ..."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from iagbench.commands.arguments import CommandOptions, Invocation
from iagbench.contract.components import Exportable
from iagbench.contract.errors import ConfigurationError, RunFolderError
from iagbench.lm.checkpoints import ROLES, resolve_checkpoint
from iagbench.runs.folder import read_json, write_json_atomic

NAME = "export"
HELP = "export a training checkpoint's trained component (peft adapter, save_pretrained folder, safetensors + JSON)"
EXPORT_INFO = "iagbench_export.json"
logger = logging.getLogger(__name__)


def configure(options: CommandOptions) -> None:
    checkpoint_help = "a training output folder (its latest checkpoint), checkpoints/best, or a checkpoint folder"
    options.add("checkpoint", type=Path, metavar="CHECKPOINT", help=checkpoint_help)
    options.add("--output", type=Path, required=True, metavar="DIR", help="the new export folder")
    role_help = "which trained component (default: every one with weights; several go to DIR/<role>)"
    options.add("--role", choices=ROLES, help=role_help)


def run(invocation: Invocation) -> int:
    args = invocation.args
    output = invocation.given("output")
    if output is None:
        raise ConfigurationError("--output DIR: required (the new export folder)")
    summary = export(args.checkpoint, Path(output), invocation.plugins, invocation.given("role"))
    print(json.dumps(summary, indent=2))
    return 0


def export(checkpoint: Path, output: Path, plugins: Any, role: str | None = None) -> dict[str, Any]:
    """Export the trained components of ``checkpoint`` into ``output``; return what was written, by role."""
    folder = resolve_checkpoint(checkpoint)
    config = read_json(folder / "config.json")
    trained = [r for r in ROLES if isinstance(config.get(r), dict) and config[r].get("weights")]
    if role is not None and role not in trained:
        raise ConfigurationError(f"--role {role}: checkpoint {folder} holds no trained {role} ({', '.join(trained)})")
    roles = [role] if role else trained
    if not roles:
        raise ConfigurationError(f"checkpoint {folder}: its config.json names no trained component")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise RunFolderError(f"--output {output}: exists and is not empty; choose a new folder")
    tmp = output.with_name(output.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    written = {}
    for name in roles:
        target = tmp / name if len(roles) > 1 else tmp
        written[name] = _export_role(folder, config[name], name, target, plugins)
    if output.exists():
        output.rmdir()
    os.replace(tmp, output)
    logger.info("exported %s from %s to %s", ", ".join(roles), folder, output)
    return {"checkpoint": str(folder), "output": str(output), "step": config.get("step"), "exported": written}


def _export_role(folder: Path, described: dict[str, Any], role: str, target: Path, plugins: Any) -> dict[str, Any]:
    """Build ``role``'s component from its config with ``checkpoint=folder`` and let it export itself."""
    name, options = described["name"], dict(described.get("options") or {})
    component = plugins[f"{role}s"].get(name).build(**{**options, "checkpoint": str(folder)})
    if not isinstance(component, Exportable):
        raise ConfigurationError(
            f"checkpoint {folder}: {role} '{name}' ({type(component).__name__}) cannot be exported (not Exportable)"
        )
    target.mkdir(parents=True)
    result = dict(component.export(target))
    info = {"role": role, "component": name, "options": options, "checkpoint": str(folder), **result}
    write_json_atomic(target / EXPORT_INFO, info)
    return result
