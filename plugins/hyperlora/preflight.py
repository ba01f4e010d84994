"""HyperLoRA's checks before anything loads (its ``preflight`` hook): trained weights for a run, a checkpoint trained
with the same settings, and adapter shapes that fit the reader's model. Cheap: configurations only, no weights."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from iagbench import ConfigurationError

NAME = "hyperlora"
SIZES = ("rank", "hidden", "feature_dims")
SETTINGS = ("rank", "hidden", "feature_dims", "encoder")  # with the model's shapes, what the weights' shapes follow
NETWORK_OPTIONS = {  # option -> its choices, the first the default (hypernetwork.py)
    "activation": ("gelu", "relu"),
    "norm": ("layernorm", "none"),
    "layer_input": ("embedding", "index"),
    "share": ("target", "stack"),
    "body": ("shared", "separate"),
    "init": ("default", "reference"),
}
SETTINGS += ("activation", "norm", "layer_input", "share", "body")  # a checkpoint needs the same network


def check_network_options(**options: str) -> dict[str, str]:
    """Refuse an unknown choice; return the options not at their default."""
    for name, value in options.items():
        if value not in NETWORK_OPTIONS[name]:
            raise ConfigurationError(
                f"hyperlora option {name}={value!r}: expected one of {', '.join(NETWORK_OPTIONS[name])}"
            )
    return {name: value for name, value in options.items() if value != NETWORK_OPTIONS[name][0]}


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigurationError(f"hyperlora option base_dropout={value!r}: expected a number from 0 to below 1")
    return float(value)


def parse_targets(targets: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(t.strip() for t in targets.split(",")) if isinstance(targets, str) else tuple(targets)
    if not names or not all(names):
        raise ConfigurationError(f"hyperlora option targets={targets!r}: expected comma-separated module names")
    return names


def check_sizes(options: Mapping[str, Any]) -> None:
    for name in SIZES:
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"hyperlora option {name}={value!r}: expected a positive integer")


def check_pairing(pairing: Any, defaults: Mapping[str, Any]) -> None:
    """The checks of `iagbench.contract.preflight` for a hyperlora imaginer paired with ``pairing.reader``."""
    options = {**defaults, **pairing.imaginer_options}
    check_sizes(options)
    targets = parse_targets(options["targets"]) if options.get("targets") else None
    if options.get("checkpoint"):
        check_checkpoint(options["checkpoint"], options, targets, defaults)
    elif pairing.purpose == "run":
        raise ConfigurationError(
            "hyperlora: iagbench run needs trained weights: give checkpoint=DIR (the output of iagbench train "
            "--imaginer hyperlora ...); untrained, its whitening is not fitted"
        )
    reader_model = pairing.reader_options.get("model")
    if isinstance(reader_model, str) and reader_model != options["model"]:
        check_fits_reader(options["model"], targets, pairing.reader, reader_model)


def check_fits_reader(model: str, targets: tuple[str, ...] | None, reader: str, reader_model: str) -> None:
    """The adapters made for ``model`` fit the reader's model: the same (layers, d_in, d_out) per target."""
    from iagbench.lm.lora import target_shapes
    from iagbench.lm.skeletons import model_shapes, reader_skeleton

    mine = model_shapes(model, targets)
    try:
        skeleton = reader_skeleton(reader_model)
    except ConfigurationError:
        return  # not a configuration this check can read: the reader reports its model when it loads
    try:
        theirs = target_shapes(skeleton, list(mine))
    except ConfigurationError:
        why = f"its model has no modules for the targets {', '.join(mine)}"
    else:
        differ = [t for t in mine if mine[t] != theirs[t]]
        if not differ:
            return
        why = f"{differ[0]} is {theirs[differ[0]]} there, {mine[differ[0]]} here (layers, d_in, d_out)"
    raise ConfigurationError(
        f"hyperlora model={model!r} does not fit reader '{reader}' (model={reader_model!r}): {why}; "
        f"give hyperlora the reader's model (model={reader_model})"
    )


def check_checkpoint(
    path: Any, options: Mapping[str, Any], targets: tuple[str, ...] | None, defaults: Mapping[str, Any]
) -> None:
    """The checkpoint exists and, where its ``config.json`` says, was trained with settings that give these shapes."""
    from iagbench.lm.checkpoints import resolve_checkpoint

    folder = resolve_checkpoint(path)
    trained = trained_options(folder / "config.json", defaults)
    if trained is None:
        return
    for name in SETTINGS:
        if trained[name] != options[name]:
            raise ConfigurationError(
                f"hyperlora checkpoint {folder} was trained with {name}={trained[name]!r}, this run gives "
                f"{name}={options[name]!r}: give the settings it was trained with"
            )
    trained_targets = parse_targets(trained["targets"]) if trained.get("targets") else None
    if (trained["model"], trained_targets) == (options["model"], targets):
        return
    from iagbench.lm.skeletons import model_shapes

    if model_shapes(trained["model"], trained_targets) != model_shapes(options["model"], targets):
        raise ConfigurationError(
            f"hyperlora checkpoint {folder} was trained for model={trained['model']!r} (targets "
            f"{trained_targets or 'default'}), whose adapter shapes differ from model={options['model']!r}'s "
            f"(targets {targets or 'default'}): give the model it was trained for"
        )


def trained_options(config: Path, defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    """The hyperlora options a checkpoint's ``config.json`` records (a composite's hyperlora part's), else None."""
    try:
        described = json.loads(config.read_text(encoding="utf-8"))["imaginer"]
        name, options = described["name"], dict(described.get("options") or {})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no config.json, or not one iagbench train wrote: the weights' shapes are checked on loading
    if name == NAME:
        own = options
    elif isinstance(name, str) and NAME in name.split("+"):
        own = {key: value for key, value in options.items() if key in defaults}  # shared options it takes
        own.update({key[len(NAME) + 1 :]: value for key, value in options.items() if key.startswith(f"{NAME}.")})
    else:
        return None
    return {**defaults, **own}
