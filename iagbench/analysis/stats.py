"""Statistics over per-example scores (pure functions): bootstrap confidence intervals and McNemar's exact test.

Design notes: docs/internals.md#iagbenchanalysisstatspy
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

SAMPLES = 1000
SEED = 0
LEVEL = 0.95
_CHUNK = 4_000_000  # resampled indices held at once (rows x examples), to bound memory


@dataclass(frozen=True)
class Interval:
    """A mean (``estimate``) with its bootstrap percentile interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL
    samples: int = SAMPLES
    seed: int = SEED
    n: int = 0

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def scaled(self, factor: float) -> Interval:
        """The same interval in another unit (``factor=100`` for percent)."""
        return Interval(
            self.estimate * factor, self.low * factor, self.high * factor, self.level, self.samples, self.seed, self.n
        )

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _check(level: float, samples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"confidence level {level}: expected a number between 0 and 1")
    if samples < 1:
        raise ValueError(f"bootstrap samples {samples}: expected a positive integer")


def bootstrap_means(values: Sequence[float], samples: int = SAMPLES, seed: int = SEED):
    """``samples`` means of resamples (with replacement) of ``values``: a numpy array."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("expected a non-empty sequence of numbers")
    rng = np.random.default_rng(seed)
    n = data.size
    rows = max(1, _CHUNK // n)
    means = np.empty(samples)
    for start in range(0, samples, rows):
        stop = min(samples, start + rows)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def bootstrap_interval(
    values: Sequence[float], *, samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval at ``level``."""
    import numpy as np

    _check(level, samples)
    means = bootstrap_means(values, samples, seed)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(np.mean(values)), float(low), float(high), level, samples, seed, len(values))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, samples: int = SAMPLES, seed: int = SEED, level: float = LEVEL
) -> Interval:
    """``mean(b) - mean(a)`` over paired examples, with the percentile interval of resampled pairs."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    return bootstrap_interval([y - x for x, y in zip(a, b)], samples=samples, seed=seed, level=level)


@dataclass(frozen=True)
class McNemar:
    """Discordant pairs of two 0/1 score lists and the exact two-sided p-value."""

    only_a: int  # a right, b wrong
    only_b: int  # a wrong, b right
    p_value: float


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: ``min(1, 2 P(X <= min(k, n-k)))``."""
    if n == 0:
        return 1.0
    tail, term = 0, 1  # term = comb(n, i), updated exactly in integers
    for i in range(min(k, n - k) + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def mcnemar(a: Sequence[float], b: Sequence[float]) -> McNemar:
    """McNemar's exact test on paired 0/1 scores (a score counts as right when it is 1)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    for value in (*a, *b):
        if value not in (0, 1):
            raise ValueError(f"McNemar's test needs 0/1 scores, got {value}")
    only_a = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    only_b = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    return McNemar(only_a, only_b, binomial_two_sided(only_a, only_a + only_b))
