"""Which process of a multi-process run this is, read from the launcher's environment.

``torchrun``, ``accelerate launch`` and ``deepspeed`` start one process per rank with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set. `iagbench run` needs no process group: each rank takes the
examples whose id hashes to it (`shard_of`, a function of the id alone, so the split does not
depend on batch order or on which examples an earlier session already predicted).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from iagbench.contract.errors import ConfigurationError

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def shard_of(example_id: str, world_size: int) -> int:
    """The rank that predicts ``example_id`` when ``world_size`` processes share a run."""
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % world_size


@dataclass(frozen=True)
class Processes:
    """This process's rank among ``world_size`` processes, and its rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ConfigurationError(
                f"launcher environment: RANK={self.rank}, WORLD_SIZE={self.world_size}, LOCAL_RANK={self.local_rank} "
                "do not fit together (expected 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)"
            )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Processes:
        """One process unless a launcher set ``WORLD_SIZE``; then ``RANK`` and ``LOCAL_RANK`` must be set too."""
        if "WORLD_SIZE" not in environ:
            return cls()
        values = {}
        for name in LAUNCH_ENV:
            text = environ.get(name)
            if text is None:
                raise ConfigurationError(f"launcher environment: WORLD_SIZE is set but {name} is not")
            try:
                values[name] = int(text)
            except ValueError:
                raise ConfigurationError(f"launcher environment: {name}={text!r} is not an integer") from None
        return cls(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def owns(self, example_id: str) -> bool:
        return shard_of(example_id, self.world_size) == self.rank

    def use_device(self) -> str:
        """Make ``cuda:LOCAL_RANK`` this process's current CUDA device (a sharded run); return the device name.

        Components that place themselves on "cuda" (``device=auto``) then land on this rank's GPU.
        """
        import torch

        if not torch.cuda.is_available():
            return "cpu"
        if self.sharded:
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise ConfigurationError(
                    f"LOCAL_RANK={self.local_rank} but this process sees {count} CUDA device(s); start at most {count} "
                    "processes per machine (or check CUDA_VISIBLE_DEVICES)"
                )
            torch.cuda.set_device(self.local_rank)
        return f"cuda:{torch.cuda.current_device()}"
