"""How many examples go to the imaginer and reader at once: a token budget, a fixed ``--batch-size N`` or ``auto``.

By default (and with ``--batch-tokens N``) a batch holds examples, in length order, while (examples x
longest prompt in tokens) stays within the budget; the reader counts the tokens (`Reader.prompt_tokens`,
the prompt without the imaginer's context). A reader that does not count gets batches of `AUTO_CPU`.
An explicit ``--batch-size N`` alone sets the size as before; with ``--batch-tokens`` it caps the size.

``auto`` on CUDA starts at `AUTO_START` examples and doubles after every full batch that fits, up
to `AUTO_MAX`; on CUDA out-of-memory it halves the batch that failed and retries the same examples,
and grows no more. Without CUDA there is nothing to probe: ``auto`` is `AUTO_CPU` examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from iagbench.contract.errors import ConfigurationError

AUTO = "auto"
AUTO_START = 16
AUTO_MAX = 1024
AUTO_CPU = 16
DEFAULT_BATCH_TOKENS = 16384  # measured on the 2-core dev CPU with SmolLM2-135M: benchmarks/NOTES.md
TOKEN_BATCH_MAX = 256  # the most examples a token-budget batch holds without --batch-size


@dataclass
class BatchSizer:
    """The size of the next batch; ``probe`` grows it while batches fit and backs off on out-of-memory."""

    size: int
    probe: bool = False
    maximum: int = AUTO_MAX
    used: int | None = None  # the size asked for by the last batch that fitted (token budget: the largest)
    backoffs: int = 0
    tokens: int | None = None  # the token budget of a batch; ``size`` is then its most examples
    fallback: int = AUTO_CPU  # the size when the reader cannot count tokens

    @classmethod
    def for_setting(cls, batch_size: int | str | None, cuda: bool, batch_tokens: int | None = None) -> BatchSizer:
        """The sizer of ``--batch-size`` (None: not given) and ``--batch-tokens`` (None: not given)."""
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
            raise ConfigurationError(f"--batch-tokens {batch_tokens!r}: expected a positive integer")
        if batch_size == AUTO:
            if batch_tokens is not None:
                raise ConfigurationError("--batch-tokens: not with --batch-size auto (give one of them)")
            return cls(AUTO_START, probe=True) if cuda else cls(AUTO_CPU)
        if batch_size is None:
            return cls(TOKEN_BATCH_MAX, tokens=batch_tokens or DEFAULT_BATCH_TOKENS)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch size {batch_size!r}: expected a positive integer or 'auto'")
        return cls(batch_size) if batch_tokens is None else cls(batch_size, tokens=batch_tokens, fallback=batch_size)

    def without_tokens(self) -> None:
        """The reader cannot count tokens: fixed batches of `fallback` examples."""
        self.tokens, self.size = None, self.fallback

    def take(self, lengths: Sequence[int] | None, start: int) -> int:
        """How many examples from ``start`` the next batch holds (``lengths``: prompt tokens in batch order)."""
        if self.tokens is None or lengths is None:
            return self.size
        count = longest = 0
        for length in lengths[start : start + self.size]:
            longest = max(longest, length)
            if count and (count + 1) * longest > self.tokens:
                break
            count += 1
        return max(count, 1)

    def fitted(self, n: int) -> None:
        """A batch of ``n`` examples ran; a probing sizer doubles after a full one."""
        self.used = max(self.used or 0, n) if self.tokens is not None else self.size
        if self.probe and n == self.size:
            self.size = min(2 * self.size, self.maximum)

    def out_of_memory(self, n: int, first_id: str) -> None:
        """A batch of ``n`` examples ran out of memory: halve it, or explain why that cannot help."""
        if self.tokens is not None:
            raise ConfigurationError(
                f"CUDA out of memory with a batch of {n} examples; use a smaller --batch-tokens (now {self.tokens})"
            )
        if not self.probe:
            raise ConfigurationError(
                f"CUDA out of memory with a batch of {n} examples; use a smaller --batch-size or --batch-size auto"
            )
        if n == 1:
            raise ConfigurationError(
                f"CUDA out of memory with a batch of one example (id '{first_id}'): the model does not fit"
            )
        self.size = n // 2
        self.maximum = self.size  # the ceiling is known: grow no more
        self.backoffs += 1

    def describe(self) -> dict[str, Any]:
        described = {"batch_size": self.used, "batch_size_auto": self.probe, "out_of_memory_backoffs": self.backoffs}
        return described if self.tokens is None else {**described, "batch_tokens": self.tokens}


def out_of_memory_error() -> type[BaseException]:
    """The exception CUDA out-of-memory raises."""
    import torch

    return torch.cuda.OutOfMemoryError


def release_memory() -> None:
    """Give cached CUDA blocks back after an out-of-memory error (nothing to do without CUDA)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
