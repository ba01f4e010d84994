"""Questions cut to a reader's input length, tokenizing only a bounded head of a long question."""

from __future__ import annotations

from typing import Any

COUNT_CHUNK = 1 << 16  # characters tokenized at a time when a long question's tokens are counted
SEAM = 8  # tokens past the limit that make the cut independent of where the tokenized head ends


def cut_question(tokenizer: Any, question: str, limit: int) -> tuple[str, dict[str, int] | None]:
    """The question's first ``limit`` tokens (no special tokens) as text, and the cut's record; ``(question, None)`` when it fits.

    Only a head a few times ``limit`` tokens long is tokenized to find the cut; the whole
    question's length (the record's ``tokens``) is counted in chunks, so memory stays bounded.
    """
    if limit < 1:
        raise ValueError(f"limit={limit}: expected a positive number of tokens")
    chars = 4 * (limit + SEAM)
    while True:
        head = question[:chars]
        ids, ends = _encode(tokenizer, head)
        whole = len(head) == len(question)
        if whole or len(ids) > limit + SEAM:
            break
        chars *= 2
    if len(ids) <= limit:
        return question, None
    kept = question[: max(ends[:limit])] if ends else tokenizer.decode(ids[:limit])
    total = len(ids) if whole else count_tokens(tokenizer, question)
    return kept, {"tokens": total, "kept": limit}


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` (no special tokens), tokenized ``COUNT_CHUNK`` characters at a time, split at spaces."""
    total, start = 0, 0
    while start < len(text):
        end = min(start + COUNT_CHUNK, len(text))
        if end < len(text):
            space = text.rfind(" ", start + COUNT_CHUNK // 2, end)
            end = space if space > start else end
        total += len(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
    return total


def _encode(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` and where each token ends in it (no ends from a tokenizer without offsets)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return encoded["input_ids"], [end for _, end in encoded["offset_mapping"]]
    return tokenizer(text, add_special_tokens=False)["input_ids"], []
