"""What a reader needs to read per-example LoRA adapters (``Context(adapter=...)``, e.g. from `hyperlora`).

Both reader families mix this in: the batch's adapters are collected from the contexts, the
`BatchedLoRA` hooks are made once (at the first batch with adapters, on the targets the adapters
name) and are active only inside `lora_active`'s block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from iagbench.contract.errors import ConfigurationError
from iagbench.contract.types import Context


class AdapterHost:
    """Mixin for readers with ``model``, ``dtype`` and ``device`` that accept ``adapter`` contexts."""

    _lora: Any = None  # BatchedLoRA hooks, made at the first batch with adapters

    def adapters_of(self, contexts: Sequence[Context]) -> list[Any] | None:
        """The batch's adapters, one per example, or None when no context has one."""
        from iagbench.lm.lora import BatchedLoRA, batch_adapters

        adapters = batch_adapters(contexts)
        if adapters is not None and self._lora is None:
            self._lora = BatchedLoRA(self.model, sorted(adapters[0].a))
        elif adapters is not None:
            extra = sorted({target for adapter in adapters for target in adapter.a} - set(self._lora.shapes))
            if extra:
                raise ConfigurationError(f"adapter targets {extra} were not in this reader's first adapters "
                                         f"({sorted(self._lora.shapes)}): one reader applies one set of targets")  # fmt: skip
        return adapters

    def lora_active(self, adapters: list[Any] | None) -> Any:
        """A block in which every row of the model's batch runs with its own adapter (nothing when None)."""
        if adapters is None:
            return contextlib.nullcontext(None)
        return self._lora.active(adapters, dtype=self.dtype, device=self.device)
