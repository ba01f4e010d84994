"""Where a FiD reader's T5 comes from: presets, hub ids, local folders, FiD checkpoints, a random tiny T5.

A folder written by the FiD code (facebookresearch/FiD, ``FiDT5.save_pretrained``: ``config.json``
naming the ``FiDT5`` architecture, weights under ``encoder.encoder.block.N.module.*``) is read
with its keys mapped back to plain T5's, so released FiD readers load as they are. Such folders
hold no tokenizer: FiD used ``t5-base``'s (every T5 size shares it), so that is the fallback.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.lm.models import ModelSource, byte_tokenizer, check_no_custom_code, loading

TINY_T5_CONFIG = {
    "d_model": 32,
    "d_ff": 64,
    "d_kv": 8,
    "num_heads": 4,
    "num_layers": 2,
    "num_decoder_layers": 2,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    # At T5's usual scale a random tiny T5 answers every question with the same token; a wider
    # initialisation makes its answers depend on the input, which the tests need (random_t5 then
    # brings its logits back to T5's usual scale).
    "initializer_factor": 3.0,
}

T5_PRESETS: dict[str, str | None] = {
    "fid-t5-base": "google-t5/t5-base",
    "fid-t5-large": "google-t5/t5-large",
    "fid-t5-3b": "google-t5/t5-3b",
    "fid-tiny": None,  # random weights, for tests
}

FID_TOKENIZER = "google-t5/t5-base"  # what FiD's code loads (T5Tokenizer 't5-base')
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def resolve_t5(model: str) -> ModelSource:
    """A ``model=`` option as a source: a preset, a folder (plain or FiD checkpoint), or a hub id."""
    if model in T5_PRESETS:
        hub_id = T5_PRESETS[model]
        if hub_id is None:
            return ModelSource("random", model, preset=model, config=dict(TINY_T5_CONFIG))
        return ModelSource("hub", hub_id, preset=model)
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource("local", str(path.resolve()))
    if model.startswith((".", "/", "~")):
        raise ConfigurationError(f"model folder {path} does not exist")
    return ModelSource("hub", model)


def load_t5(
    source: ModelSource, *, dtype: Any, device: str, seed: int = 0, tokenizer: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) for a source; the model is in eval mode on ``device`` in ``dtype``."""
    info = source.describe()
    if source.kind == "random":
        model, tok = random_t5(source.config, seed)
    else:
        if source.kind == "local":
            check_no_custom_code(Path(source.ref))  # before its tokenizer, which may come from elsewhere
        tokenizer_ref = tokenizer or _tokenizer_source(source)
        info["tokenizer"] = tokenizer_ref
        tokenizer_kind = "local" if Path(tokenizer_ref).expanduser().is_dir() else "hub"
        with loading(tokenizer_kind, tokenizer_ref, "model" if tokenizer_ref == source.ref else "tokenizer") as local:
            tok = _auto_tokenizer(tokenizer_ref, local_only=local)
        with loading(source.kind, source.ref) as local:
            if source.kind == "local" and is_fid_checkpoint(Path(source.ref)):
                model = load_fid_checkpoint(Path(source.ref))
                info["fid_checkpoint"] = True
            else:
                model = _from_pretrained(source.ref, dtype, local_only=local)
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ConfigurationError(f"model '{source.ref}' is not an encoder-decoder model (FiD needs T5 or alike)")
    model = model.to(device=device, dtype=dtype).eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return model, tok, info


def random_t5(config_overrides: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """A random-initialised T5 over the in-memory byte tokenizer, the same weights for the same seed."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = byte_tokenizer()
    config = T5Config(
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
        **config_overrides,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        with torch.no_grad():  # logits at the usual scale (the answers are unchanged): a loss near log(vocabulary)
            model.decoder.final_layer_norm.weight.div_(config.initializer_factor**2)
    return model, tok


def _auto_tokenizer(ref: str, *, local_only: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        ref, trust_remote_code=False, **({"local_files_only": True} if local_only else {})
    )


def _from_pretrained(ref: str, dtype: Any, *, local_only: bool = False) -> Any:
    """A seq2seq model; missing weights (other than tied copies) are an error, not a silent random init."""
    from transformers import AutoModelForSeq2SeqLM

    hub = {"local_files_only": True} if local_only else {}
    model, report = AutoModelForSeq2SeqLM.from_pretrained(
        ref, dtype=dtype, output_loading_info=True, trust_remote_code=False, **hub
    )
    missing = sorted(set(report.get("missing_keys") or ()) - _tied_keys(model))
    if missing:
        raise ConfigurationError(
            f"model '{ref}': {len(missing)} weights are missing from its files (first: {missing[0]})"
        )
    return model


def _tied_keys(model: Any) -> set[str]:
    """Weights that are copies of another (T5's embeddings; its output layer where the config ties it)."""
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    if not getattr(model.config, "tie_word_embeddings", True):
        tied = {key for key in tied if not key.startswith("lm_head.")}
    return tied


def _tokenizer_source(source: ModelSource) -> str:
    if source.kind == "local" and not any((Path(source.ref) / name).is_file() for name in TOKENIZER_FILES):
        return FID_TOKENIZER
    return source.ref


def is_fid_checkpoint(folder: Path) -> bool:
    """A folder saved by FiD's ``FiDT5`` (its config names the architecture)."""
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except json.JSONDecodeError as error:
        raise ConfigurationError(f"{config}: not valid JSON ({error})") from None
    return "FiDT5" in architectures


_FID_ENCODER = re.compile(r"^encoder\.encoder\.")
_FID_BLOCK = re.compile(r"^(encoder\.block\.\d+)\.module\.")


def fid_to_t5_key(key: str) -> str:
    """``encoder.encoder.block.3.module.layer.0...`` (FiD's wrapped encoder) -> ``encoder.block.3.layer.0...``."""
    return _FID_BLOCK.sub(r"\1.", _FID_ENCODER.sub("encoder.", key))


def load_fid_checkpoint(folder: Path) -> Any:
    """A T5 with the weights of a FiD checkpoint folder, keys mapped back to plain T5's (checked strictly)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    config.architectures = ["T5ForConditionalGeneration"]
    model = AutoModelForSeq2SeqLM.from_config(config)
    state = {fid_to_t5_key(key): value for key, value in read_state_dict(folder).items()}
    ignored = {
        key
        for key in state
        if any(re.search(p, key) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    }
    state = {key: value for key, value in state.items() if key not in ignored}
    expected = set(model.state_dict())
    missing = sorted(expected - set(state) - _tied_keys(model))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"missing {len(missing)} (first: {missing[0]})"] if missing else []
        parts += [f"unexpected {len(unexpected)} (first: {unexpected[0]})"] if unexpected else []
        raise ConfigurationError(
            f"FiD checkpoint {folder}: weights do not fit {type(model).__name__}: {'; '.join(parts)}"
        )
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


def read_state_dict(folder: Path) -> dict[str, Any]:
    """The weights of a folder: one ``model.safetensors`` / ``pytorch_model.bin`` file, or the shards of an index."""
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            state: dict[str, Any] = {}
            for shard in shards:
                state.update(_read_weights(folder / shard))
            return state
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return _read_weights(folder / name)
    raise ConfigurationError(f"model folder {folder} holds no weights ({' or '.join(WEIGHT_FILES + INDEX_FILES)})")


def _read_weights(file: Path) -> dict[str, Any]:
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(file))
    import torch

    return torch.load(file, map_location="cpu", weights_only=True)
