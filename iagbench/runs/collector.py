"""Python's cyclic garbage collector around a run: rarer while libraries import and models load, then kept off what
start-up built while the run predicts. The objects torch, transformers and a model leave are many and long-lived;
every full collection goes over all of them again (seven or eight of them, ~0.8 s, in a SmolLM2 run's start-up).

Design notes: docs/internals.md#iagbenchrunscollectorpy"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

START_UP_THRESHOLD = 50_000  # new objects between collections of the youngest generation in start-up (Python: 700)


@contextlib.contextmanager
def sparse() -> Iterator[None]:
    """Collections ~70 times rarer in the block, those of the older generations and the full ones with them.

    Cycles are still collected, at most some 50,000 objects' worth at a time.
    """
    threshold = gc.get_threshold()
    if threshold[0] == 0 or threshold[0] >= START_UP_THRESHOLD:  # collections off, or already as rare
        yield
        return
    gc.set_threshold(START_UP_THRESHOLD, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)


@contextlib.contextmanager
def settled() -> Iterator[None]:
    """Every object alive when the block starts (modules, models) left out of collections until it ends.

    Nothing is frozen when something else froze objects already (``gc.freeze``): their owner unfreezes them.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
