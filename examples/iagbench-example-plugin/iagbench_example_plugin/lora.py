"""Per-example LoRA with iagbench's public toolkit only: an imaginer that makes adapters, a reader that applies them.

A toy pair, not a method: the imaginer's weights are random (seeded by the question's text), and the
default model, ``tiny-llama``, is a randomly initialised Llama (so it runs offline, in seconds). What
it shows is the plumbing a real pair needs, all of it public:

- ``iagbench.lm.models``: ``resolve_model`` / ``load_model`` (presets, folders, hub ids, GGUF files),
  ``pick_dtype``, ``end_token_ids``; ``iagbench.lm.devices.pick_device``;
- ``iagbench.lm.skeletons.model_shapes``: which layers an adapter covers and their sizes, read from the
  model's configuration on the meta device; ``iagbench.LoRAAdapter`` (one question's weights, carried by ``Context.adapter``);
- ``iagbench.lm.adapter_host.AdapterHost``: collects a batch's adapters and applies them, row by row,
  through ``iagbench.lm.lora.BatchedLoRA`` hooks;
- ``iagbench.lm.decoding.greedy_decode``: greedy decoding that drops finished rows (and, through
  ``on_select``, their adapters).

This module imports torch: the hooks in ``__init__.py`` register it lazily ("module:attribute").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from iagbench import Answer, ConfigurationError, Context, Example, Imaginer, LoRAAdapter, Reader
from iagbench.lm.adapter_host import AdapterHost
from iagbench.lm.decoding import greedy_decode
from iagbench.lm.devices import pick_device
from iagbench.lm.models import end_token_ids, load_model, pick_dtype, resolve_model
from iagbench.lm.skeletons import model_shapes


class SeededLoRA(Imaginer):
    """Gives each question its own random LoRA adapter, seeded by the question's text (same text, same adapter).

    ``model`` must be the reader's model (the adapter's shapes are that model's); ``targets`` are
    comma-separated module types (default: every target of its architecture, e.g. Llama's seven
    projections). ``A`` and ``B`` are drawn so that ``x @ A @ B`` keeps ``x``'s size; ``scale``
    multiplies the update (at the default 2.0 the tiny model's answers change completely).
    """

    provides: ClassVar[frozenset[str]] = frozenset({"adapter"})

    def __init__(self, model: str = "tiny-llama", *, rank: int = 4, scale: float = 2.0, targets: str | None = None):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ConfigurationError(f"imaginer 'seeded-lora': rank={rank!r}, expected a positive integer")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ConfigurationError(f"imaginer 'seeded-lora': scale={scale!r}, expected a number")
        # The shapes come from the reader model's configuration, built on the meta device (no weights load).
        names = [t.strip() for t in targets.split(",")] if targets else None
        self.shapes = model_shapes(model, names)  # {target: (layers, d_in, d_out)}
        self.model, self.rank, self.scale = model, rank, float(scale)

    def imagine(self, examples: Sequence[Example]) -> list[Context]:
        return [Context(adapter=self.adapter(example.question)) for example in examples]

    def adapter(self, question: str) -> LoRAAdapter:
        seed = int.from_bytes(hashlib.sha256(question.encode("utf-8")).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        a, b = {}, {}
        for target, (layers, d_in, d_out) in self.shapes.items():
            a[target] = torch.randn(layers, d_in, self.rank, generator=generator) / d_in**0.5
            b[target] = torch.randn(layers, self.rank, d_out, generator=generator) / self.rank**0.5
        return LoRAAdapter(a, b, scale=self.scale)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "targets": sorted(self.shapes), "rank": self.rank, "scale": self.scale}


class LoRALM(AdapterHost, Reader):
    """A causal LM that reads the passages in its prompt and applies each question's own adapter.

    ``AdapterHost`` needs three attributes, ``model``, ``dtype`` and ``device``; it gives
    ``adapters_of(contexts)`` (the batch's adapters, or None when no context has one) and
    ``lora_active(adapters)`` (a block inside which row b of every batch runs with adapter b).
    """

    accepts: ClassVar[frozenset[str]] = frozenset({"passages", "adapter"})

    def __init__(
        self,
        model: str = "tiny-llama",
        *,
        max_new_tokens: int = 8,
        device: str = "auto",
        dtype: str = "auto",
        seed: int = 0,
    ):
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ConfigurationError(
                f"reader 'lora-lm': max_new_tokens={max_new_tokens!r}, expected a positive integer"
            )
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model, self.tokenizer, self.model_info = load_model(
            resolve_model(model), dtype=self.dtype, device=self.device, seed=seed
        )
        self.model.requires_grad_(False)
        self.tokenizer.padding_side = "left"  # greedy_decode continues every row from its last column
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.end_ids = end_token_ids(self.model, self.tokenizer)
        self.max_new_tokens = max_new_tokens

    @staticmethod
    def prompt(example: Example, context: Context) -> str:
        passages = "".join(f"{p.title}: {p.text}\n" for p in context.passages)
        return f"{passages}Question: {example.question}\nAnswer:"

    def answer(self, examples: Sequence[Example], contexts: Sequence[Context]) -> list[str]:
        prompts = [self.prompt(example, context) for example, context in zip(examples, contexts)]
        batch = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
        adapters = self.adapters_of(contexts)
        with torch.inference_mode(), self.lora_active(adapters) as lora:
            new_tokens = greedy_decode(
                self.model,
                batch["input_ids"],
                batch["attention_mask"],
                max_new_tokens=self.max_new_tokens,
                end_ids=self.end_ids,
                on_select=lora.select if lora is not None else None,  # finished rows leave with their adapters
            )
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [Answer(text.strip().split("\n")[0], raw=text) for text in texts]

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.model_info,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.device,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
        }
