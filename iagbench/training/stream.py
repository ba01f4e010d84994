"""The training data of `iagbench train`: one seeded stream of examples, epoch after epoch (`_Stream`),
and how a session splits each optimizer step's share of it into processes and micro-batches (`_Layout`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from iagbench.contract.types import Example


class _Stream:
    """The deterministic stream of training examples, in global positions (all processes together).

    Epoch ``e`` is every example once, in an order shuffled with ``seed`` and ``e``; epochs follow
    one another without a gap, so position ``p`` is example ``order(p // n)[p % n]``.
    """

    def __init__(self, examples: Sequence[Example], seed: int):
        self.examples, self.seed = list(examples), seed
        self._orders: dict[int, list[int]] = {}

    def position(self, position: int) -> tuple[int, int]:
        """(epoch, index in that epoch) of a stream position."""
        return divmod(position, len(self.examples))

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if len(self._orders) > 1:  # keep the latest two: a batch spans at most an epoch boundary
                del self._orders[min(self._orders)]
            order = list(range(len(self.examples)))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def take(self, start: int, count: int) -> list[Example]:
        """The examples at positions ``start ... start+count-1``."""
        out = []
        for position in range(start, start + count):
            epoch, index = self.position(position)
            out.append(self.examples[self._order(epoch)[index]])
        return out


@dataclass(frozen=True)
class _Layout:
    """How one session splits each optimizer step's global batch: processes x micro-batch x accumulation.

    With a global batch of ``G = batch_size x processes x grad_accum`` examples per optimizer step,
    step ``s`` trains on stream positions ``(s-1)*G ... s*G-1``; its micro-batch ``m`` on the
    ``batch_size x processes`` positions after ``(s-1)*G + m*batch_size*processes``, and each process
    on its ``batch_size`` slice of those. So the examples of a step depend on ``G`` alone: not on how
    it is split into processes and micro-batches, nor on when training was interrupted, and a run may
    resume with another number of processes (``--batch-size``/``--grad-accum`` chosen to keep ``G``).
    """

    processes: int
    rank: int
    batch_size: int
    grad_accum: int

    @property
    def micro(self) -> int:  # examples per micro-batch, all processes
        return self.batch_size * self.processes

    @property
    def global_batch(self) -> int:  # examples per optimizer step
        return self.micro * self.grad_accum

    def batch(self, stream: _Stream, step: int, micro: int) -> list[Example]:
        """This process's examples of micro-batch ``micro`` of optimizer step ``step`` (from 1)."""
        start = (step - 1) * self.global_batch + micro * self.micro + self.rank * self.batch_size
        return stream.take(start, self.batch_size)

    def describe(self) -> dict[str, int]:
        return {
            "processes": self.processes,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "global_batch": self.global_batch,
        }
