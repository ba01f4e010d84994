"""Training-progress checks that hold on any CPU.

Random-initialised tiny models trained for a few steps give losses whose last digits depend on the
CPU's float kernels (AVX2 vs AVX-512 vs AMX reduce in different orders), and a single step's loss can
jump by more than the drop a test asks for. So these checks compare the mean of the first few steps with
the mean of the last few, and the tests that use them train on a fixed batch (or long enough) that the
drop they ask for is several times what any CPU's rounding can move. See tests/README.md.
"""

from __future__ import annotations

import os
from statistics import fmean


def head_and_tail(values: list[float], window: int) -> tuple[float, float]:
    """Mean of the first `window` values and mean of the last `window` values."""
    if len(values) < 2 * window:
        raise AssertionError(f"need at least {2 * window} values to compare, got {len(values)}: {values}")
    return fmean(values[:window]), fmean(values[-window:])


def assert_falls(values: list[float], *, by: float | None = None, to: float | None = None, window: int = 2) -> None:
    """The last `window` values' mean is below the first `window` values' mean minus `by`, or times `to`."""
    if (by is None) == (to is None):
        raise TypeError("give exactly one of by= (an absolute drop) or to= (a ratio)")
    first, last = head_and_tail(values, window)
    if os.environ.get("IAGBENCH_SHOW_TRENDS"):
        print(f"trend: first {first:.4f} last {last:.4f} drop {first - last:.4f} ratio {last / first:.3f}: {values}")
    limit = first - by if by is not None else first * to
    assert last < limit, (
        f"mean of last {window} ({last:.4f}) not below {limit:.4f} (first {window}: {first:.4f}): {values}"
    )
