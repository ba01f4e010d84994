"""Greedy seq2seq decoding over given encoder states: a dynamic-cache loop that drops finished rows
(`greedy_decode_seq2seq`) and a static-cache, optionally compiled, decoder (`StaticSeq2SeqDecoder`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iagbench.lm.decoding import StaticDecoder, cache_keyword, cut_after_end, static_cache_length


def greedy_decode_seq2seq(
    model: Any,
    hidden: Any,
    mask: Any,
    *,
    start_id: int,
    end_id: int,
    max_new_tokens: int,
    on_select: Callable[[Any], None] | None = None,
) -> list[list[int]]:
    """Greedy answers over given encoder states; a row ends after ``end_id`` (kept) or ``max_new_tokens``.

    Finished rows leave the batch (their cache, states and mask too); ``on_select`` is told which
    rows stay (for per-row state such as adapters).
    """
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    cache_key = cache_keyword(model)
    rows = hidden.shape[0]
    alive = torch.arange(rows, device=hidden.device)
    generated: list[list[int]] = [[] for _ in range(rows)]
    step_ids = torch.full((rows, 1), start_id, dtype=torch.long, device=hidden.device)
    cache = None
    for _ in range(max_new_tokens):
        output = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
            attention_mask=mask,
            decoder_input_ids=step_ids,
            use_cache=True,
            **{cache_key: cache},
        )
        cache = getattr(output, cache_key)
        next_ids = output.logits[:, -1, :].argmax(dim=-1)
        for row, token in zip(alive.tolist(), next_ids.tolist()):
            generated[row].append(token)
        keep = (next_ids != end_id).nonzero(as_tuple=True)[0]
        if len(keep) == 0:
            break
        if len(keep) < len(alive):
            alive, next_ids, hidden, mask = alive[keep], next_ids[keep], hidden[keep], mask[keep]
            cache.batch_select_indices(keep)
            if on_select is not None:
                on_select(keep)
        step_ids = next_ids[:, None]
    return generated


class StaticSeq2SeqDecoder(StaticDecoder):
    """Greedy answers over given encoder states with a static decoder cache (``cache=static``), optionally compiled.

    The decoder's self-attention cache is a ``StaticCache`` of ``max_new_tokens`` slots, its
    cross-attention cache a ``StaticCache`` as wide as the encoder states, both rounded up to
    ``STATIC_CACHE_BUCKET``: the encoder states and their mask are padded with masked zeros to that
    width (T5's cross-attention has no position bias, so masked columns change nothing). Both are
    kept for the next batch of the same size that fits. The first step (the decoder start token,
    which also fills the cross-attention cache) runs uncompiled; every later step has the same
    shapes. Finished rows stay in the batch; outputs equal ``greedy_decode_seq2seq``'s.
    """

    def static_cache(self, batch: int, length: int, width: int = 0) -> Any:
        from transformers import EncoderDecoderCache, StaticCache

        cache = self.cache
        if (
            cache is None
            or cache.self_attention_cache.batch_size != batch
            or cache.self_attention_cache.layers[0].max_cache_len < length
            or cache.cross_attention_cache.layers[0].max_cache_len < width
        ):
            self.cache = None
            config, dtype, device = self.model.config, self.model.dtype, self.model.device
            heads = (config.num_heads, config.d_kv)
            own = StaticCache(config=config, max_cache_len=static_cache_length(length))
            cross = StaticCache(config=config, max_cache_len=static_cache_length(width))
            for part in (own, cross):
                part.early_initialization(batch, *heads, dtype=dtype, device=device)
            cache = self.cache = EncoderDecoderCache(own, cross)
        else:
            cache.reset()
        return cache

    def decode_seq2seq(
        self, hidden: Any, mask: Any, *, start_id: int, end_id: int, max_new_tokens: int
    ) -> list[list[int]]:
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        rows, width = mask.shape
        cache = self.static_cache(rows, max_new_tokens, width)
        padded_width = cache.cross_attention_cache.layers[0].max_cache_len
        if padded_width > width:
            hidden = torch.cat([hidden, hidden.new_zeros((rows, padded_width - width, hidden.shape[-1]))], dim=1)
            mask = torch.cat([mask, mask.new_zeros((rows, padded_width - width))], dim=1)
        encoder_outputs = BaseModelOutput(last_hidden_state=hidden)
        tokens = torch.zeros((rows, max_new_tokens), dtype=torch.long, device=hidden.device)
        done = torch.zeros(rows, dtype=torch.bool, device=hidden.device)
        step_ids = torch.full((rows, 1), start_id, dtype=torch.long, device=hidden.device)
        call = self.model.__call__  # the first step fills the cross-attention cache: uncompiled
        steps = 0
        for index in range(max_new_tokens):
            output = call(
                encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=step_ids, use_cache=True,
                **{self.cache_key: cache},
            )  # fmt: skip
            call = self.step_function()
            next_ids = output.logits[:, -1, :].argmax(dim=-1)
            tokens[:, index] = next_ids
            steps = index + 1
            done |= next_ids == end_id
            if bool(done.all()):
                break
            step_ids = next_ids[:, None]
        return cut_after_end(tokens[:, :steps].tolist(), {end_id})
