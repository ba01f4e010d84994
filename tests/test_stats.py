"""iagbench.analysis.stats: bootstrap intervals and McNemar's exact test, against closed forms and scipy."""

from __future__ import annotations

import math
import random

import pytest

from iagbench.analysis.stats import (
    Interval,
    binomial_two_sided,
    bootstrap_interval,
    bootstrap_means,
    mcnemar,
    paired_bootstrap,
)


def coin_flips(n: int, p: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def test_bootstrap_interval_is_reproducible_and_contains_the_mean():
    values = coin_flips(200, 0.3, seed=1)
    first, again = bootstrap_interval(values), bootstrap_interval(values)
    assert first == again
    assert first.estimate == pytest.approx(sum(values) / len(values))
    assert first.low < first.estimate < first.high
    assert (first.samples, first.seed, first.level, first.n) == (1000, 0, 0.95, 200)
    assert bootstrap_interval(values, seed=1) != first  # the seed is used


def test_bootstrap_width_matches_the_normal_approximation_of_a_proportion():
    values = coin_flips(2000, 0.5, seed=2)
    interval = bootstrap_interval(values, samples=2000)
    p = interval.estimate
    expected = 1.959964 * math.sqrt(p * (1 - p) / len(values))
    assert interval.half_width == pytest.approx(expected, rel=0.1)


def test_bootstrap_chunks_give_the_same_means_as_one_draw(monkeypatch):
    import iagbench.analysis.stats as stats

    values = coin_flips(50, 0.4, seed=3)
    whole = bootstrap_means(values, samples=300, seed=5)
    monkeypatch.setattr(stats, "_CHUNK", 50 * 7)  # 7 resamples at a time
    assert list(bootstrap_means(values, samples=300, seed=5)) == pytest.approx(list(whole))


def test_constant_scores_have_a_zero_width_interval():
    interval = bootstrap_interval([1.0] * 30)
    assert (interval.estimate, interval.low, interval.high, interval.half_width) == (1.0, 1.0, 1.0, 0.0)


def test_level_changes_the_width_and_bad_arguments_are_refused():
    values = coin_flips(100, 0.5, seed=4)
    assert bootstrap_interval(values, level=0.5).half_width < bootstrap_interval(values, level=0.99).half_width
    with pytest.raises(ValueError, match="between 0 and 1"):
        bootstrap_interval(values, level=95)
    with pytest.raises(ValueError, match="positive"):
        bootstrap_interval(values, samples=0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_interval_scaled_to_percent():
    interval = Interval(0.25, 0.125, 0.5, n=8).scaled(100)
    assert (interval.estimate, interval.low, interval.high, interval.n) == (25.0, 12.5, 50.0, 8)
    assert interval.contains(25.0) and not interval.contains(60.0)


def test_paired_bootstrap_of_identical_scores_is_exactly_zero():
    a = coin_flips(80, 0.5, seed=6)
    diff = paired_bootstrap(a, a)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_paired_bootstrap_interval_contains_the_difference_and_is_narrower_than_unpaired():
    a = coin_flips(300, 0.4, seed=7)
    b = [1.0 if (x == 1.0 or i % 10 == 0) else 0.0 for i, x in enumerate(a)]  # b = a plus some gains
    diff = paired_bootstrap(a, b)
    assert diff.estimate == pytest.approx(sum(b) / 300 - sum(a) / 300)
    assert diff.low <= diff.estimate <= diff.high and diff.low > 0
    unpaired = math.hypot(bootstrap_interval(a).half_width, bootstrap_interval(b).half_width)
    assert diff.half_width < unpaired
    with pytest.raises(ValueError, match="different lengths"):
        paired_bootstrap(a, b[:-1])


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),
        (5, 5, 2 / 32),
        (1, 5, 2 * 6 / 32),
        (2, 5, 1.0),
        (0, 1, 1.0),
        (3, 10, 2 * 176 / 1024),
    ],
)
def test_binomial_two_sided_closed_forms(k, n, expected):
    assert binomial_two_sided(k, n) == pytest.approx(expected, abs=1e-15)


def test_binomial_two_sided_equals_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(3, 17), (40, 100), (0, 12), (11, 12), (700, 1500), (1480, 3000)]:
        assert binomial_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue, rel=1e-9)


def test_binomial_two_sided_does_not_underflow_on_thousands_of_pairs():
    assert 1e-9 < binomial_two_sided(2300, 5000) < 1e-7  # 2**-5000 alone would underflow a float
    assert binomial_two_sided(2500, 5000) == 1.0


def test_mcnemar_counts_discordant_pairs_only():
    a = [1, 1, 1, 0, 0, 0, 1, 0]
    b = [1, 0, 0, 1, 0, 0, 1, 0]
    test = mcnemar(a, b)
    assert (test.only_a, test.only_b) == (2, 1)
    assert test.p_value == pytest.approx(binomial_two_sided(1, 3))
    assert mcnemar(a, a).p_value == 1.0 and mcnemar(a, a).only_a == mcnemar(a, a).only_b == 0
    with pytest.raises(ValueError, match="0/1"):
        mcnemar([0.5], [1.0])
