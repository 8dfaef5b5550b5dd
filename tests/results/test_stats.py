"""Paired statistics: the exact McNemar test and the paired bootstrap over images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aabench.results.stats import CHUNK, mcnemar_exact, paired_bootstrap


def column(values) -> np.ndarray:
    """One metric's per-image terms as an (images x 1) matrix."""
    return np.asarray(values, dtype=float).reshape(-1, 1)


# --- McNemar -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only_a", "only_b", "expected"),
    [
        (0, 5, 2 * 0.5**5),  # 0.0625
        (5, 0, 2 * 0.5**5),  # symmetric
        (3, 3, 1.0),
        (0, 0, 1.0),
        (0, 1, 1.0),  # 2 * 0.5 = 1
        (1, 1, 1.0),
        (0, 10, 2 * 0.5**10),
        (1, 9, 2 * (1 + 10) / 2**10),  # 2 * (C(10,0) + C(10,1)) / 2^10
        (2, 8, 2 * (1 + 10 + 45) / 2**10),
    ],
)
def test_mcnemar_matches_hand_values(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_of_no_discordant_images_is_exactly_one():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0


@pytest.mark.parametrize(
    ("only_a", "only_b"),
    [(0, 5), (1, 9), (7, 20), (20, 7), (12, 13), (50, 80), (400, 460), (460, 400), (1000, 1100)],
)
def test_mcnemar_matches_scipy_binomtest(only_a, only_b):
    stats = pytest.importorskip("scipy.stats")
    expected = stats.binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_stays_finite_and_tiny_for_very_large_lopsided_counts():
    p = mcnemar_exact(0, 5000)
    # 2 * 0.5**5000 underflows to 0 in floats; the log-space sum must not return NaN.
    assert p >= 0.0 and not math.isnan(p)
    assert p < 1e-300
    assert 0.0 < mcnemar_exact(2000, 2300) < 1e-4


def test_mcnemar_p_values_are_at_most_one_and_grow_towards_balance():
    values = [mcnemar_exact(k, 20 - k) for k in range(11)]
    assert all(0.0 < v <= 1.0 for v in values)
    assert values == sorted(values)
    assert values[-1] == 1.0


# --- Paired bootstrap --------------------------------------------------------------


def test_identical_runs_give_the_interval_zero_zero():
    rng = np.random.default_rng(3)
    num = rng.integers(0, 2, size=(40, 3)).astype(float)
    den = np.ones_like(num)
    den[:, 2] = rng.integers(1, 4, size=40)
    num[:, 2] = rng.integers(0, 3, size=40)
    num[:, 2] = np.minimum(num[:, 2], den[:, 2])
    low, high = paired_bootstrap(num, den, num.copy(), den.copy(), np.array([100.0, 1.0, 100.0]))
    assert low.tolist() == [0.0, 0.0, 0.0]
    assert high.tolist() == [0.0, 0.0, 0.0]


def test_a_constant_shift_of_one_gives_exactly_one_one():
    a = np.zeros((25, 1))
    b = a + 1
    low, high = paired_bootstrap(a, np.ones_like(a), b, np.ones_like(b), np.array([1.0]))
    assert low.tolist() == [1.0]
    assert high.tolist() == [1.0]


def test_a_constant_shift_of_one_on_varying_values_gives_one_one():
    # B = A + 1 per image (den 1, scale 1): every replicate's delta is 1 up to rounding.
    a = column(np.random.default_rng(1).integers(0, 5, size=37))
    low, high = paired_bootstrap(a, np.ones_like(a), a + 1, np.ones_like(a), np.array([1.0]))
    assert low[0] == pytest.approx(1.0, abs=1e-12)
    assert high[0] == pytest.approx(1.0, abs=1e-12)


def test_scale_multiplies_the_interval():
    a = np.zeros((10, 1))
    b = np.ones((10, 1))
    low, high = paired_bootstrap(a, np.ones_like(a), b, np.ones_like(b), np.array([100.0]))
    assert (low[0], high[0]) == (100.0, 100.0)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 2, size=(60, 2)).astype(float)
    b = rng.integers(0, 2, size=(60, 2)).astype(float)
    ones = np.ones_like(a)
    scale = np.array([100.0, 100.0])
    first = paired_bootstrap(a, ones, b, ones, scale, replicates=300, seed=11)
    again = paired_bootstrap(a, ones, b, ones, scale, replicates=300, seed=11)
    other = paired_bootstrap(a, ones, b, ones, scale, replicates=300, seed=12)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not (np.array_equal(first[0], other[0]) and np.array_equal(first[1], other[1]))


def test_the_interval_contains_the_observed_delta_and_is_ordered():
    rng = np.random.default_rng(5)
    images = 200
    a = (rng.random((images, 2)) < 0.6).astype(float)
    b = (rng.random((images, 2)) < 0.7).astype(float)
    den = np.ones_like(a)
    scale = np.array([100.0, 100.0])
    low, high = paired_bootstrap(a, den, b, den, scale, replicates=1000, seed=0)
    observed = 100.0 * (b.sum(axis=0) - a.sum(axis=0)) / images
    assert np.all(low <= observed) and np.all(observed <= high)
    assert np.all(low < high)


def test_ratio_metrics_are_sum_num_over_sum_den_per_replicate():
    # Two images with very different denominators. With every replicate holding both
    # images in some mix, the metric is sum(num)/sum(den), not the mean of ratios.
    num_a = column([1.0, 0.0])
    den_a = column([1.0, 9.0])
    num_b = column([1.0, 9.0])
    den_b = column([1.0, 9.0])
    low, high = paired_bootstrap(num_a, den_a, num_b, den_b, np.array([1.0]), replicates=2000)
    # Replicates: weights (2,0) -> 1 - 1 = 0; (1,1) -> 10/10 - 1/10 = 0.9;
    # (0,2) -> 18/18 - 0/18 = 1. A mean of per-image ratios would give 0.5 for (1,1).
    possible = {0.0, 0.9, 1.0}
    assert low[0] in possible and high[0] in possible
    assert low[0] == 0.0 and high[0] == 1.0


def test_ratio_metric_interval_percentiles_match_a_hand_resampling():
    rng = np.random.default_rng(2)
    images = 30
    den_a = rng.integers(1, 6, size=(images, 1)).astype(float)
    den_b = rng.integers(1, 6, size=(images, 1)).astype(float)
    num_a = np.floor(den_a * rng.random((images, 1)))
    num_b = np.floor(den_b * rng.random((images, 1)))
    replicates, seed = 2 * CHUNK + 17, 4  # a last, partial chunk too
    low, high = paired_bootstrap(
        num_a, den_a, num_b, den_b, np.array([100.0]), replicates=replicates, seed=seed
    )
    # The same draws, by hand: one multinomial weight vector per replicate.
    rng_hand = np.random.default_rng(seed)
    deltas = []
    for start in range(0, replicates, CHUNK):
        count = min(CHUNK, replicates - start)
        weights = rng_hand.multinomial(images, np.full(images, 1.0 / images), size=count)
        for w in weights:
            a = (w @ num_a[:, 0]) / (w @ den_a[:, 0])
            b = (w @ num_b[:, 0]) / (w @ den_b[:, 0])
            deltas.append(100.0 * (b - a))
    assert low[0] == pytest.approx(np.percentile(deltas, 2.5), abs=1e-9)
    assert high[0] == pytest.approx(np.percentile(deltas, 97.5), abs=1e-9)


def test_a_metric_whose_denominator_is_always_zero_has_a_nan_interval():
    num = np.zeros((5, 2))
    den = np.column_stack([np.ones(5), np.zeros(5)])
    low, high = paired_bootstrap(num, den, num, den, np.array([1.0, 1.0]), replicates=100)
    assert low[0] == 0.0 and high[0] == 0.0
    assert np.isnan(low[1]) and np.isnan(high[1])


# --- bootstrap p-value, Holm, intervals ---------------------------------------------------


def test_bootstrap_p_value_counts_replicates_on_each_side_of_zero_plus_one():
    from aabench.results.stats import bootstrap_p_value

    deltas = np.array(
        [
            # all < 0   all 0  mixed   mostly > 0  no replicate
            [-1.0, 0.0, -1.0, 1.0, np.nan],
            [-2.0, 0.0, 0.0, 2.0, np.nan],
            [-3.0, 0.0, 1.0, 3.0, np.nan],
            [-4.0, 0.0, 2.0, 4.0, np.nan],
            [-5.0, 0.0, np.nan, -1.0, np.nan],
        ]
    )
    p = bootstrap_p_value(deltas)
    # B = 5: 2 * (0 + 1) / 6; all zero: 1; B = 4, L = 2, U = 3: 2 * 3 / 5 clipped to 1;
    # B = 5, L = 1: 2 * 2 / 6; no finite replicate: NaN.
    assert p[:4].tolist() == pytest.approx([1 / 3, 1.0, 1.0, 2 / 3])
    assert math.isnan(p[4])


def test_paired_bootstrap_test_gives_the_same_interval_and_its_p_value():
    from aabench.results.stats import paired_bootstrap_test

    a = column([0, 1, 0, 1, 0, 1, 1, 0])
    b = column([1, 1, 1, 1, 1, 1, 1, 1])
    ones = np.ones_like(a)
    low, high, p = paired_bootstrap_test(a, ones, b, ones, np.array([1.0]), replicates=300)
    again = paired_bootstrap(a, ones, b, ones, np.array([1.0]), replicates=300)
    assert (low[0], high[0]) == (again[0][0], again[1][0])
    # B only gains: every replicate's delta is >= 0, and = 0 only when no image with
    # a = 0 is drawn (probability (1/2)^8 per replicate): p = 2 * (L + 1) / 301, tiny.
    assert 2 / 301 <= p[0] <= 2 * 6 / 301


@pytest.mark.parametrize(("images", "floor"), [(2, 0.5), (5, 0.0625), (6, 0.03125)])
def test_a_bootstrap_over_few_images_is_no_surer_than_an_exact_paired_test(images, floor):
    from aabench.results.stats import paired_bootstrap_test

    # Every image improves by the same amount: every replicate's delta is +1, so the
    # bootstrap alone says p = 2 / (B + 1) = 2 / 1001 whatever the number of images.
    a, b = column([0] * images), column([1] * images)
    ones = np.ones_like(a)
    _, _, p = paired_bootstrap_test(a, ones, b, ones, np.array([1.0]), replicates=1000)
    assert p[0] == pytest.approx(floor)  # 2 / 2^n: a sign test's smallest p on n pairs
    assert bool(p[0] < 0.05) is (images >= 6)


def test_holm_by_hand():
    from aabench.results.stats import holm

    # sorted: 0.005 * 4 = 0.02; 0.01 * 3 = 0.03; 0.03 * 2 = 0.06; 0.04 * 1 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is outside the family (m = 3 here) and stays NaN: 0.02 * 3 = 0.06;
    # 0.5 * 2 = 1.0; 0.6 * 1 -> max(1.0, 0.6): clipped at 1 and never below a smaller p's
    adjusted = holm([0.6, np.nan, 0.02, 0.5])
    assert adjusted[[0, 2, 3]].tolist() == pytest.approx([1.0, 0.06, 1.0])
    assert math.isnan(adjusted[1])
    assert holm([0.03]).tolist() == [0.03]  # a family of one is not corrected
    assert holm([]).tolist() == []


@pytest.mark.parametrize(
    ("low", "high", "text"),
    [
        (0.0031, 0.012, "[+0.0031, +0.0120]"),  # tiny: enough decimals to leave zero
        (-0.4, 0.9, "[-0.40, +0.90]"),  # normal
        (-16.871, 16.88, "[-16.87, +16.88]"),
        (0.0, 0.5, "[0.00, +0.50]"),  # touching zero: an exact 0 is unsigned
        (-0.004, 0.0, "[-0.0040, 0.0000]"),  # never [-0.00, 0.00]
        (0.0, 0.0, "[0.00, 0.00]"),
        (0.501, 0.504, "[+0.501, +0.504]"),  # different bounds print differently
        (float("nan"), 1.0, "[n/a]"),
    ],
)
def test_format_interval(low, high, text):
    from aabench.results.stats import format_interval

    assert format_interval(low, high) == text
