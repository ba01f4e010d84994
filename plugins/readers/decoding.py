"""Greedy decoding that drops a row from the batch as soon as it has finished its answer.

`transformers`' `generate` keeps finished rows in the batch until the longest one ends; for short
answers most rows finish after a few tokens, so dropping them (key/value cache included) saves most
of the decoding work. Outputs equal `generate(do_sample=False)` up to the stop rule (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch


def stop_token_ids(tokenizer: Any, stop_strings: Sequence[str]) -> frozenset[int]:
    """Ids of vocabulary tokens whose text contains one of ``stop_strings`` (single tokens only)."""
    if not stop_strings:
        return frozenset()
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=False)
    return frozenset(i for i, text in enumerate(texts) if any(stop in text for stop in stop_strings))


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
            logits_to_keep=1,
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


def cache_keyword(model: Any) -> str:
    """The name transformers uses for the key/value cache argument ('cache' in 5.2x, before: 'past_key_values')."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
