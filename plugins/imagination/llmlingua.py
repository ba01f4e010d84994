"""LLMLingua 0.2.2's ``PromptCompressor.compress_prompt`` for exactly the reference's arguments
(data/compress.py:74-87: ``rank_method="longllmlingua"``, ``condition_in_question="after"``, ``condition_compare=True``,
``context_budget="+100"``, ``dynamic_context_compression_ratio=0.4``, ``reorder_context="sort"``,
``use_sentence_level_filter=False``, the other parameters at their defaults), ported on iagbench's scoring LM
(``iagbench compress --prune llmlingua``).

Line numbers ("l.N") are those of llmlingua/prompt_compressor.py in the llmlingua 0.2.2 wheel.
Design notes: docs/internals.md#pluginsimaginationllmlinguapy
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from iagbench import ConfigurationError, Passage

INSTRUCTION = (
    "Please write a high-quality answer for the given question using only the provided search results (some of which "
    "might be irrelevant). Only give me the answer and do not output any other words."
)  # data/compress.py:76
QUESTION_SUFFIX = " We can get the answer to this question in the given documents."  # l.2037
ITERATIVE_SIZE = 200  # compress_prompt's default iterative_size (l.431)
DYNAMIC_RATIO = 0.4  # data/compress.py:84
PREFIX_BOS_NUM = 100  # PromptCompressor.prefix_bos_num (l.86)

Losses = Callable[[list[list[int]]], list[list[float]]]
"""rows of token ids -> per row, -log p(row[i] | row[:i]) for i >= 1 (get_ppl, l.163-208, granularity "token")."""


def context_of(passage: Passage) -> str:
    """A passage as the reference gives it to LLMLingua (data/compress.py:30-33)."""
    return f"title: {passage.title} context: {passage.text}"


def rank(nlls: Sequence[float]) -> list[int]:
    """Context indices by ascending question NLL, ties in index order (l.2043-2044: sort_direct 1 for "after")."""
    return sorted(range(len(nlls)), key=lambda i: nlls[i])


def select_contexts(order: Sequence[int], lengths: Sequence[int], target_token: int, context_budget: int) -> list[int]:
    """control_context_budget (l.1198-1218): contexts in rank order until the budget target + context_budget goes
    below 0; the context that crosses it is included. The result stays in rank order (reorder_context="sort" is
    neither "original" nor "two_stage", l.1220-1226)."""
    budget, used = target_token + context_budget, []  # eval("target_token" + "+100"), l.1200
    for index in order:
        budget -= lengths[index]
        if index not in used:
            used.append(index)
        if budget < 0:
            break
    return used


def dynamic_ratios(n: int, ratio: float = DYNAMIC_RATIO) -> list[float]:
    """Per selected context (rank order), the ratio offset of dynamic_context_compression_ratio (l.1228-1237):
    from +ratio for the best to -ratio for the last, evenly spaced."""
    return [i * (abs(ratio) / (n - 1)) if n > 1 else 0 for i in range(-(n - 1), n, 2)][::-1]


def window_ratios(
    lengths: Sequence[int], target_token: float, offsets: Sequence[float], size: int = ITERATIVE_SIZE
) -> list[list[tuple[int, float]]]:
    """get_dynamic_compression_ratio (l.1022-1064): the contexts' estimated lengths (tokens + 2) cut into windows of
    ``size`` (the first one ``size - 1``), each a list of (tokens, keep ratio), ratio = clip(tau + offset, 0, 1)
    with tau = target_token / (sum(lengths) + 1)."""
    tau = target_token / (sum(lengths) + 1)
    windows: list[list[tuple[int, float]]] = []
    last, current = 1, []
    for length, offset in zip(lengths, offsets):
        ratio = max(min(1, tau + offset), 0)
        if last + length >= size:
            current.append((size - last, ratio))
            windows.append(current)
            last = last + length - size
            if last > size:
                k = last // size
                windows.extend([[(size, ratio)]] * k)
                last -= k * size
            current = [(last, ratio)] if last else []
        else:
            last += length
            current.append((length, ratio))
    if current:
        windows.append(current)
    return windows


def threshold(scores: torch.Tensor, ratio: float) -> float:
    """get_estimate_threshold_base_distribution (l.1508-1521): the int(n * ratio)-th highest score (at least the
    highest, at most the lowest), -inf when ratio is 1."""
    if ratio == 1.0:
        return float("-inf")
    scores = scores[scores != 10000]
    k = max(0, min(len(scores) - 1, int(len(scores) * ratio) - 1))
    return scores.sort(descending=True).values[k].item()


def _refresh(old: torch.Tensor | None, fresh: torch.Tensor, ready: int, stop: int) -> torch.Tensor:
    """The losses after an iteration's scoring (l.1647-1654, l.1674-1687, l.1699-1702): LLMLingua computes only the
    positions after its KV cache (``ready``) and writes them into the previous losses; the earlier ones keep theirs."""
    part = fresh[ready:]
    if old is None:
        return part
    if stop > len(old):
        old = torch.cat([old, torch.zeros_like(part)[: stop - len(old)]])
    old[ready:stop] = part
    return old


def _prune_window(state: dict[str, Any], end: int, size: int, limit: float, start: int) -> int:
    """get_compressed_input (l.1402-1506) with condition_compare and no keep_flag: in positions [end - size, end)
    keep token i when the contrastive score of token i + 1 (loss slot i) exceeds ``limit``; the rest is kept."""
    loss, own_loss = state["loss"], state["own_loss"]
    need = torch.cat([loss[:start] > 0, own_loss[: loss[start:].shape[0]] - loss[start:] > limit, loss[:1] > 0])
    need[end:] = True
    need[: end - size] = True
    state["loss"] = loss[need[:-1]]
    if need.shape[0] < own_loss.shape[0] + start + 1:
        need = torch.cat([need, torch.ones(own_loss.shape[0] - need.shape[0] + start + 1, dtype=torch.bool)])
    state["own_loss"] = own_loss[need[start:-1]]
    ids = state["ids"]
    if need.shape[0] < ids.shape[0]:
        need = torch.cat([need, torch.ones(ids.shape[0] - need.shape[0], dtype=torch.bool)])
    elif need.shape[0] > ids.shape[0]:
        need = need[: ids.shape[0]]
    state["ids"], state["own"] = ids[need], state["own"][need[start:]]
    return end - int((need[:end] == 0).sum())


def iterative_prune(
    ids: Sequence[int],
    start: int,
    windows: Sequence[Sequence[tuple[int, float]]],
    losses: Losses,
    size: int = ITERATIVE_SIZE,
) -> list[int]:
    """iterative_compress_prompt (l.1523-1749; condition_compare, keep_split False, no segments): the token ids kept
    after the ``start`` question tokens of ``ids`` ("question\\n\\ncontext 1\\n\\ncontext 2...").

    Each iteration scores the kept prefix up to ``end`` with the question (``ids``) and without it (``ids[start:]``,
    ``own``), then prunes its window's pieces, each with a threshold from all the scores at that piece's ratio.
    LLMLingua keeps a KV cache of the prefix before the window; we re-score that prefix plainly, which gives the same
    numbers, and keep LLMLingua's stale losses before the cache end (``_refresh``).
    """
    state: dict[str, Any] = {"ids": torch.tensor(list(ids), dtype=torch.long), "loss": None, "own_loss": None}
    state["own"] = state["ids"][start:]
    end, ready, own_ready, idx = min(size + start, len(ids)), 0, 0, 0
    while end <= state["ids"].shape[0] and idx < len(windows):  # LLMLingua: IndexError past the last window
        rows = [state["ids"][:end], state["own"][: end - start]] if idx else [state["ids"], state["own"]]
        fresh, own_fresh = (torch.tensor(row, dtype=torch.float32) for row in losses([r.tolist() for r in rows]))
        if fresh[ready:].shape[0] == 0:
            break
        state["loss"] = _refresh(state["loss"], fresh, ready, end - 1)
        state["own_loss"] = _refresh(state["own_loss"], own_fresh, own_ready, end - start - 1)
        first = bool(start) and idx == 0
        ready, own_ready = (0, 0) if first else (end - size, end - start - size)
        for delta, ratio in windows[idx]:
            loss, own_loss = state["loss"], state["own_loss"]
            limit = threshold(own_loss[: loss[start:].shape[0]] - loss[start:], ratio)
            end = _prune_window(state, end - size + delta, delta, limit, start) + size
        idx += 1
    return state["ids"][start:].tolist()


class LLMLingua:
    """compress_prompt (l.424-723) with the reference's arguments, on a `CausalLM`; ``question_nll`` and ``losses``
    are the scoring (tests may replace them)."""

    def __init__(self, lm: Any, *, target_tokens: int = 64, context_budget: int = 100, batch_size: int = 32):
        self.lm, self.target_tokens, self.context_budget, self.batch_size = (
            lm,
            target_tokens,
            context_budget,
            batch_size,
        )
        config = getattr(lm.base_model, "config", None)
        self.max_positions = int(getattr(config, "max_position_embeddings", 0) or 1 << 30)

    def losses(self, rows: list[list[int]]) -> list[list[float]]:
        """get_ppl's token losses (l.163-208) of each row, no special tokens added (l.1543-1546)."""
        return [[-x for x in row] for row in self.lm.token_logprobs([(r[:1], r[1:]) for r in rows])]

    def question_nll(self, contexts: Sequence[str], query: str) -> list[float]:
        """get_condition_ppl with condition_in_question="after" (l.998-1020): the mean loss of the tokens of
        ``context + query`` from slot len(tokens(context)) - 1 on (special tokens added, cut at the model's
        positions as get_ppl does, l.183-185)."""
        scores: list[float] = []
        for first in range(0, len(contexts), self.batch_size):
            batch = contexts[first : first + self.batch_size]
            rows = [self.lm.encode(c + query)[: self.max_positions] for c in batch]
            for context, row in zip(batch, self.losses(rows)):
                tail = row[len(self.lm.encode(context)) - 1 :]
                scores.append(sum(tail) / len(tail) if tail else float("nan"))
        return scores

    def prefix_length(self, prefix: str, text: str) -> int:
        """get_prefix_length (l.986-996): how many tokens ``prefix`` takes before ``text`` in their joint tokens."""
        tokenizer = self.lm.tokenizer
        full = self.lm.encode(prefix + text[:100], special=False)
        found = None
        for i in range(max(self.lm.count(prefix) - 3, 1), len(full)):
            found = i
            if tokenizer.decode(full[:i]) == prefix:
                break
        if found is None or tokenizer.decode(full[found:]) != text[:100]:
            raise ConfigurationError(
                f"llmlingua: the question's tokens do not end where the context starts: {prefix!r}"
            )
        return found

    def question_prefix(self, question: str) -> str:
        """The question as the token-level prefix (l.659-675): its middle cut when it leaves no room for 2 windows."""
        if len(self.lm.encode(question + "\n\n")) + ITERATIVE_SIZE * 2 <= self.max_positions:
            return question
        tokens = self.lm.encode(question, special=False)
        cut = len(tokens) - self.max_positions + 2 + PREFIX_BOS_NUM + 2 * ITERATIVE_SIZE
        return self.lm.tokenizer.decode(tokens[:PREFIX_BOS_NUM] + tokens[cut:])

    def coarse(self, question: str, contexts: list[str]) -> tuple[list[int], list[float], list[float]]:
        """The context-level filter (l.599-614, control_context_budget l.1172-1240): the selected contexts in rank
        order, their dynamic ratio offsets and question NLLs (none ranked with a single context, l.599, l.623-624)."""
        if len(contexts) < 2:
            return [0] * len(contexts), [0.0] * len(contexts), []
        lengths = [len(self.lm.encode(c)) for c in contexts]  # get_token_length, special tokens added (l.581)
        nlls = self.question_nll(contexts, question + QUESTION_SUFFIX)
        used = select_contexts(rank(nlls), lengths, self.target_tokens, self.context_budget)
        return used, dynamic_ratios(len(used)), [nlls[i] for i in used]

    def compress(self, question: str, passages: Sequence[Passage]) -> dict[str, Any]:
        """The pair's fields: ``compressed`` (the decoded kept context tokens), ``compressed_prompt`` (l.702-710:
        instruction, that context, question, joined by blank lines) and what they were made of."""
        contexts = [context_of(p) for p in passages]
        if not contexts:
            return {"compressed": "", "source_ids": [], "tokens": 0, "units": 0, "kept": [], "cut": False}
        used, offsets, nlls = self.coarse(question, contexts)
        prefix = self.question_prefix(question)
        start = self.prefix_length(prefix + "\n\n", contexts[used[0]])  # l.676
        ids = self.lm.encode("\n\n".join([prefix] + [contexts[i] for i in used]), special=False)
        if len(ids) > self.max_positions:  # LLMLingua's KV-cache compression (l.1588-1634) is not ported
            raise ConfigurationError(f"llmlingua: {len(ids)} tokens exceed the model's {self.max_positions} positions")
        lengths = [self.lm.count(contexts[i]) + 2 for i in used]  # l.1034-1036
        kept = iterative_prune(ids, start, window_ratios(lengths, self.target_tokens, offsets), self.losses)
        text = self.lm.tokenizer.batch_decode([kept])[0].replace("<s> ", "").replace("<s>", "")  # l.692-696
        prompt = "\n\n".join([INSTRUCTION] + ([text] if text.strip() else []) + [question])
        return {
            "compressed": text,
            "compressed_prompt": prompt,
            "source_ids": [passages[i].id for i in used],
            "tokens": self.lm.count(text),
            "units": len(passages),
            "kept": used,
            "scores": [round(-x, 4) for x in nlls],
            "dynamic_ratios": [round(x, 4) for x in offsets],
            "cut": False,
            "tokens_before_pruning": len(ids) - start,
        }
