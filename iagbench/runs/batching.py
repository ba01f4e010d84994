"""How many examples go to the imaginer and reader at once: a fixed ``--batch-size N`` or ``auto``.

``auto`` on CUDA starts at `AUTO_START` examples and doubles after every full batch that fits, up
to `AUTO_MAX`; on CUDA out-of-memory it halves the batch that failed and retries the same examples,
and grows no more. Without CUDA there is nothing to probe: ``auto`` is `AUTO_CPU` examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iagbench.contract.errors import ConfigurationError

AUTO = "auto"
AUTO_START = 16
AUTO_MAX = 1024
AUTO_CPU = 16


@dataclass
class BatchSizer:
    """The size of the next batch; ``probe`` grows it while batches fit and backs off on out-of-memory."""

    size: int
    probe: bool = False
    maximum: int = AUTO_MAX
    used: int | None = None  # the size asked for by the last batch that fitted
    backoffs: int = 0

    @classmethod
    def for_setting(cls, batch_size: int | str, cuda: bool) -> BatchSizer:
        if batch_size == AUTO:
            return cls(AUTO_START, probe=True) if cuda else cls(AUTO_CPU)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch size {batch_size!r}: expected a positive integer or 'auto'")
        return cls(batch_size)

    def fitted(self, n: int) -> None:
        """A batch of ``n`` examples ran; a probing sizer doubles after a full one."""
        self.used = self.size
        if self.probe and n == self.size:
            self.size = min(2 * self.size, self.maximum)

    def out_of_memory(self, n: int, first_id: str) -> None:
        """A batch of ``n`` examples ran out of memory: halve it, or explain why that cannot help."""
        if not self.probe:
            raise ConfigurationError(
                f"CUDA out of memory with a batch of {n} examples; use a smaller --batch-size or --batch-size auto"
            )
        if n == 1:
            raise ConfigurationError(f"CUDA out of memory with a batch of one example (id '{first_id}'): the model does not fit")
        self.size = n // 2
        self.maximum = self.size  # the ceiling is known: grow no more
        self.backoffs += 1

    def describe(self) -> dict[str, Any]:
        return {"batch_size": self.used, "batch_size_auto": self.probe, "out_of_memory_backoffs": self.backoffs}


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
