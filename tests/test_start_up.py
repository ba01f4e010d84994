"""A run's start-up: the garbage collector around a run (`iagbench.runs.collector`) and the libraries' own progress bars
(`iagbench.lm.models.library_progress_bars`)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import pytest

from iagbench.lm.models import library_progress_bars
from iagbench.runs import collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector frees it


def test_sparse_collects_rarely_in_the_block_but_still_collects_cycles() -> None:
    before = gc.get_threshold()
    with collector.sparse():
        assert gc.get_threshold() == (collector.START_UP_THRESHOLD, *before[1:])
        gc.collect()
        counted = gc.get_stats()[0]["collections"]
        cycles = [weakref.ref(Node()) for _ in range(1000)]
        many = [[] for _ in range(20 * before[0])]  # would set off 20 collections of the youngest generation
        assert gc.get_stats()[0]["collections"] == counted and all(cycle() for cycle in cycles) and many
        more = [[] for _ in range(2 * collector.START_UP_THRESHOLD)]
        assert not any(cycle() for cycle in cycles) and more  # collected, later
    assert gc.get_threshold() == before


def test_sparse_leaves_collections_that_are_off_off() -> None:
    before = gc.get_threshold()
    gc.set_threshold(0)
    try:
        with collector.sparse():
            assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)


def test_settled_keeps_what_exists_out_of_collections_and_gives_it_back() -> None:
    gc.collect()
    node = weakref.ref(Node())
    with collector.settled():
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert node() is not None  # frozen: not collected in the block
        young = weakref.ref(Node())
        gc.collect()
        assert young() is None  # what the block makes is collected as usual
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert node() is None


def test_settled_does_not_unfreeze_what_others_froze() -> None:
    kept = [[] for _ in range(100)]  # tracked objects that stay alive, so frozen until unfrozen
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector.settled():
            pass
        # frozen objects may die meanwhile (the count falls); unfrozen, it would be 0; frozen again, higher
        assert len(kept) <= gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("enabled", [True, False])
def test_library_progress_bars_off_in_the_block_unless_enabled_and_as_they_were_after(enabled: bool) -> None:
    from huggingface_hub import utils as hub
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()
    with library_progress_bars(enabled):
        assert hf_logging.is_progress_bar_enabled() == enabled
        assert hub.are_progress_bars_disabled() == (not enabled)
    assert hf_logging.is_progress_bar_enabled() and not hub.are_progress_bars_disabled()


def test_library_progress_bars_reach_transformers_imported_in_the_block() -> None:
    code = textwrap.dedent("""
        import sys
        from iagbench.lm.models import library_progress_bars
        assert "transformers" not in sys.modules
        with library_progress_bars(False):
            from transformers.utils import logging
            assert not logging.is_progress_bar_enabled()
        assert logging.is_progress_bar_enabled()
        from huggingface_hub import utils
        assert not utils.are_progress_bars_disabled()
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
