"""Greedy decoding that drops a row from the batch as soon as it has finished its answer, and `StaticDecoder`,
its fixed-shape, compilable counterpart.

Design notes: docs/internals.md#iagbenchlmdecodingpy"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from iagbench.contract.errors import ConfigurationError


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> frozenset[int]:
    """Ids of vocabulary tokens whose text contains one of ``stop_strings`` (single tokens only)."""
    if not stop_strings:
        return frozenset()
    texts = vocabulary_texts(tokenizer)
    return frozenset(i for i, text in enumerate(texts) if any(stop in text for stop in stop_strings))


def vocabulary_texts(tokenizer: Any) -> list[str]:
    """Each id of the vocabulary decoded alone, as ``tokenizer.batch_decode`` gives it.

    Where a transformers tokenizer's decoding is its Rust backend's alone (no decode method of its own, no clean-up
    of spaces), the backend decodes them all in one call: the same texts, several times faster (a start-up cost:
    49,152 ids of SmolLM2 in 0.09 s instead of 0.67 s).
    """
    ids = [[i] for i in range(len(tokenizer))]
    if _backend_decodes(tokenizer):
        return tokenizer.backend_tokenizer.decode_batch(ids, skip_special_tokens=False)
    return tokenizer.batch_decode(ids, skip_special_tokens=False)


def _backend_decodes(tokenizer: Any) -> bool:
    cleans_up = getattr(tokenizer, "clean_up_tokenization_spaces", True)
    if getattr(tokenizer, "backend_tokenizer", None) is None or cleans_up:
        return False
    from transformers import PreTrainedTokenizerFast

    kind = type(tokenizer)
    return isinstance(tokenizer, PreTrainedTokenizerFast) and all(
        getattr(kind, name) is getattr(PreTrainedTokenizerFast, name) for name in ("batch_decode", "decode", "_decode")
    )


def greedy_decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    end_ids: Collection[int],
    cache: Any = None,
    on_select: Callable[[torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """New token ids per row; a row ends after a token in ``end_ids`` (kept) or at ``max_new_tokens``.

    ``cache`` may already hold the first columns of ``input_ids`` (a shared prefix). ``on_select``
    is told which rows stay whenever finished rows leave the batch (to drop per-row state such as
    adapters).
    """
    cache_key = cache_keyword(model)
    rows = input_ids.shape[0]
    cached = cache.get_seq_length() if cache is not None else 0
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    end = torch.tensor(sorted(end_ids), dtype=torch.long, device=input_ids.device)
    alive = torch.arange(rows, device=input_ids.device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    step_ids, step_positions, mask = input_ids[:, cached:], positions[:, cached:], attention_mask
    for _ in range(max_new_tokens):
        output = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_positions,
            use_cache=True,
            logits_to_keep=last_logit(step_ids),
            **{cache_key: cache},
        )
        cache = getattr(output, cache_key)
        next_ids = output.logits[:, -1, :].argmax(dim=-1)
        for row, token in zip(alive.tolist(), next_ids.tolist()):
            generated[row].append(token)
        finished = torch.isin(next_ids, end) if len(end) else torch.zeros_like(next_ids, dtype=torch.bool)
        keep = (~finished).nonzero(as_tuple=True)[0]
        if len(keep) == 0:
            break
        last_positions = step_positions[:, -1]
        if len(keep) < len(alive):
            alive, next_ids, last_positions, mask = alive[keep], next_ids[keep], last_positions[keep], mask[keep]
            cache.batch_select_indices(keep)
            if on_select is not None:
                on_select(keep)
        step_ids = next_ids[:, None]
        step_positions = (last_positions + 1)[:, None]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=-1)
    return generated


def last_logit(step_ids: torch.Tensor) -> int | torch.Tensor:
    """``logits_to_keep`` for the next-token logits of a step: the last position only.

    For a step of several tokens (the prompt) it is the position as a tensor: transformers then gathers the last
    hidden states into a contiguous tensor, where the integer 1 slices a strided view that torch's CPU matmul
    multiplies row by row against a broadcast output embedding (0.68 s of the 4.7 s prompt step of SmolLM2-135M at
    134 rows x 17 tokens; measured, benchmarks/NOTES.md). The logits agree up to float rounding (a matrix product
    instead of one per row).
    """
    width = step_ids.shape[1]
    return 1 if width == 1 else torch.tensor([width - 1], device=step_ids.device)


def cache_keyword(model: Any) -> str:
    """The name transformers uses for the key/value cache argument ('cache' in 5.2x, before: 'past_key_values').

    A peft-wrapped model's forward takes ``**kwargs`` and hands them on: the base model's signature decides.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


# ---- static cache (cache=static, compile=true) ----

CACHE_MODES = ("dynamic", "static")
STATIC_CACHE_BUCKET = 64  # static caches are sized in steps of this many tokens, so few shapes get compiled


def check_decoding_options(cache: str, compile: Any, lora_rank: int = 0) -> None:
    """A reader's ``cache=dynamic|static``, ``compile=false|true`` (compile needs the static cache, and no peft LoRA)."""
    if cache not in CACHE_MODES:
        raise ConfigurationError(f"reader option cache={cache!r}: expected one of {', '.join(CACHE_MODES)}")
    if not isinstance(compile, bool):
        raise ConfigurationError(f"reader option compile={compile!r}: expected true or false")
    if compile and cache != "static":
        raise ConfigurationError(
            "reader option compile=true needs cache=static (a dynamic cache changes shape every step)"
        )
    if compile and lora_rank:
        raise ConfigurationError("reader option compile=true with lora_rank: not supported (use compile=false)")


def static_cache_length(tokens: int) -> int:
    """``tokens`` rounded up to a multiple of ``STATIC_CACHE_BUCKET``."""
    return -(-tokens // STATIC_CACHE_BUCKET) * STATIC_CACHE_BUCKET


class StaticDecoder:
    """Greedy decoding with a transformers ``StaticCache`` and, optionally, a ``torch.compile``'d decode step.

    The cache is preallocated for batch x (prompt + max_new_tokens), rounded up to
    ``STATIC_CACHE_BUCKET``, and kept for the next batch of the same size that fits (reset, not
    reallocated: its tensors keep their addresses, which CUDA graphs need). Every step has the same
    shapes: one token per row, positions, and the attention mask over the whole cache (prompt mask,
    then ones: the causal mask hides the slots not yet written). Finished rows stay in the batch,
    their further tokens discarded, so outputs equal ``greedy_decode``'s with the same stop rule.
    The prompt (prefill) runs uncompiled, as in transformers' ``generate``. ``compile=True``
    compiles the model's call with mode ``reduce-overhead`` (CUDA graphs) on CUDA, ``default``
    elsewhere, as transformers' ``get_compiled_call`` does for a static cache.
    """

    def __init__(self, model: Any, *, compile: bool = False):
        self.model = model
        self.compile = compile
        self.cache_key = cache_keyword(model)
        self.cache: Any = None
        self._step: Callable[..., Any] | None = None

    def describe(self) -> dict[str, Any]:
        """What a static-cache decoder adds to its reader's ``describe()``."""
        compiled = f", torch.compile mode={self.mode()}" if self.compile else ""
        return {"decoding": f"greedy (static cache{compiled})", "cache": "static", "compile": self.compile}

    def check_adapters(self, adapters: Sequence[Any] | None) -> None:
        """Refuse per-example adapters with ``compile=true`` (their hooks are not compiled through)."""
        if adapters is not None and self.compile:
            raise ConfigurationError(
                "reader option compile=true cannot decode with adapters (per-example LoRA, e.g. from hyperlora): "
                "use compile=false (cache=static works with adapters)"
            )

    def mode(self) -> str:
        """The compile mode (``reduce-overhead`` on CUDA) or ``none``."""
        if not self.compile:
            return "none"
        return "reduce-overhead" if self.model.device.type == "cuda" else "default"

    def step_function(self) -> Callable[..., Any]:
        if self._step is None:
            if self.compile:
                from transformers import CompileConfig

                self._step = self.model.get_compiled_call(CompileConfig(mode=self.mode()))
            else:
                self._step = self.model.__call__
        return self._step

    def static_cache(self, batch: int, length: int) -> Any:
        """A reset cache for ``batch`` rows and at least ``length`` tokens (the last one again if it fits)."""
        from transformers import StaticCache

        cache = self.cache
        if (
            cache is None
            or cache.layers[0].max_cache_len < length
            or not cache.is_initialized
            or cache.batch_size != batch
        ):
            self.cache = None  # free the old one first
            cache = StaticCache(config=self.model.config, max_cache_len=static_cache_length(length))
            dtype = self.model.dtype
            cache.early_initialization(batch, *self._heads(), dtype=dtype, device=self.model.device)
            self.cache = cache
        else:
            cache.reset()
        return cache

    def _heads(self) -> tuple[int, int]:
        config = self.model.config.get_text_config(decoder=True)
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return heads, head_dim

    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        end_ids: Collection[int],
        prefix: Any = None,
    ) -> list[list[int]]:
        """New token ids per row, as ``greedy_decode``. ``prefix``: a one-row cache of the first columns of ``input_ids``."""
        rows, width = input_ids.shape
        shared = prefix.get_seq_length() if prefix is not None else 0
        cache = self.static_cache(rows, width + max_new_tokens)
        if shared:
            for layer, source in zip(cache.layers, prefix.layers):
                layer.keys[:, :, :shared].copy_(source.keys.expand(rows, -1, -1, -1))
                layer.values[:, :, :shared].copy_(source.values.expand(rows, -1, -1, -1))
                layer.cumulative_length.fill_(shared)
        length = cache.layers[0].max_cache_len
        mask = attention_mask.new_ones((rows, length))
        mask[:, :width] = attention_mask
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        end = torch.tensor(sorted(end_ids), dtype=torch.long, device=input_ids.device)
        tokens = input_ids.new_zeros((rows, max_new_tokens))
        done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        output = self.model(  # the prompt: uncompiled, its shape changes from batch to batch
            input_ids=input_ids[:, shared:], attention_mask=mask, position_ids=positions[:, shared:],
            use_cache=True, logits_to_keep=last_logit(input_ids[:, shared:]), **{self.cache_key: cache},
        )  # fmt: skip
        step = self.step_function()
        position = positions[:, -1:]
        steps = 0
        for index in range(max_new_tokens):
            next_ids = output.logits[:, -1, :].argmax(dim=-1)
            tokens[:, index] = next_ids
            steps = index + 1
            if len(end):
                done |= torch.isin(next_ids, end)
            if index + 1 == max_new_tokens or bool(done.all()):
                break
            position = position + 1
            output = step(
                input_ids=next_ids[:, None], attention_mask=mask, position_ids=position,
                use_cache=True, logits_to_keep=1, **{self.cache_key: cache},
            )  # fmt: skip
        return cut_after_end(tokens[:, :steps].tolist(), set(end.tolist()))


def cut_after_end(rows: list[list[int]], end_ids: Collection[int]) -> list[list[int]]:
    """Each row up to and including its first end token (rows that stayed in a static batch after finishing)."""
    cut = []
    for row in rows:
        stop = next((i for i, token in enumerate(row) if token in end_ids), None)
        cut.append(row if stop is None else row[: stop + 1])
    return cut


MIN_SHARED_PREFIX = 8


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens all rows start with, leaving each row at least one token of its own (0 if too short to pay)."""
    limit = min(len(row) for row in rows) - 1
    length = 0
    first = rows[0]
    while length < limit and all(row[length] == first[length] for row in rows):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0
