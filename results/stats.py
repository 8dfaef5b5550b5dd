"""Paired statistics between two runs on the same images.

- Exact McNemar test (two-sided) for metrics that are one 0/1 outcome per image
  (top-1, top-5, accuracy at one offset).
- Paired bootstrap over images for every metric: resample images with replacement, the
  same images for both runs, and recompute each metric as scale * sum(num) / sum(den).
- Holm's step-down correction for a family of tests (the per-offset rows of one metric).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

CHUNK = 50  # bootstrap replicates per matrix product


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    ``only_a``: images right under A only; ``only_b``: right under B only. Under the null
    each discordant image is a fair coin: p = min(1, 2 * P(X <= min), X ~ Bin(b + c, 1/2)).
    """
    total = only_a + only_b
    if total == 0:
        return 1.0
    low = min(only_a, only_b)
    # log-space sum of binomial terms: exact enough for any n, no overflow.
    log_terms = [
        math.lgamma(total + 1)
        - math.lgamma(k + 1)
        - math.lgamma(total - k + 1)
        - total * math.log(2)
        for k in range(low + 1)
    ]
    peak = max(log_terms)
    tail = math.exp(peak) * sum(math.exp(t - peak) for t in log_terms)
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    scale: np.ndarray,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidence intervals of (B - A) for K metrics at once.

    Inputs are (images x K) matrices of per-image terms, rows aligned on the same images,
    and ``scale`` (K,). Returns the (K,) lower and upper percentile bounds.
    """
    low, high, _ = paired_bootstrap_test(
        num_a, den_a, num_b, den_b, scale, replicates=replicates, seed=seed, level=level
    )
    return low, high


def paired_bootstrap_test(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    scale: np.ndarray,
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`paired_bootstrap`'s (low, high) and the two-sided bootstrap p-value of each
    metric (see :func:`bootstrap_p_value`), from the very same replicates."""
    deltas = bootstrap_deltas(num_a, den_a, num_b, den_b, scale, replicates, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        # A metric whose denominator is 0 in every replicate has no interval: NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(deltas, tail, axis=0)
        high = np.nanpercentile(deltas, 100.0 - tail, axis=0)
    p_value = np.maximum(bootstrap_p_value(deltas), smallest_exact_p(num_a.shape[0]))
    return low, high, p_value


def smallest_exact_p(images: int) -> float:
    """The smallest two-sided p-value an exact paired test can give on ``images`` pairs:
    2 / 2^n, when every image moves the same way (a sign test, or a sign-flip
    permutation test of the paired differences).

    The bootstrap p-value is floored at it: resampling 2 images that both improved
    gives p = 2 / (B + 1) however large B is, a certainty 2 images cannot carry. With the
    floor, fewer than 6 images (2 / 2^5 = 0.0625; 2 / 2^6 = 0.031 is the first below
    5 %) never make a bootstrap difference significant; from 6 on the floor is below
    5 % and soon far below what the bootstrap itself gives.
    """
    return min(1.0, 2.0 * 0.5 ** max(images, 0))


def bootstrap_deltas(
    num_a: np.ndarray,
    den_a: np.ndarray,
    num_b: np.ndarray,
    den_b: np.ndarray,
    scale: np.ndarray,
    replicates: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """(replicates x K) bootstrap replicates of scale * (B - A); NaN where a replicate's
    denominator is 0."""
    images = num_a.shape[0]
    rng = np.random.default_rng(seed)
    stacked = np.concatenate([num_a, den_a, num_b, den_b], axis=1)
    k = num_a.shape[1]
    deltas = []
    for start in range(0, replicates, CHUNK):
        count = min(CHUNK, replicates - start)
        weights = rng.multinomial(images, np.full(images, 1.0 / images), size=count)
        sums = weights.astype(np.float64) @ stacked
        with np.errstate(invalid="ignore", divide="ignore"):
            a = sums[:, :k] / sums[:, k : 2 * k]
            b = sums[:, 2 * k : 3 * k] / sums[:, 3 * k :]
        deltas.append(scale * (b - a))
    return np.concatenate(deltas)


def bootstrap_p_value(deltas: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "no difference", per column of ``deltas``.

    With B finite replicates of the difference, L = #(delta <= 0) and U = #(delta >= 0):
    p = min(1, 2 * min(L + 1, U + 1) / (B + 1)). The +1 counts the observed data as one
    more replicate (Davison & Hinkley 1997, eq. 4.11), so p is never 0: its smallest value
    is 2 / (B + 1), and a family of m tests needs B > 2 m / alpha replicates before Holm
    can reject any of them. All replicates exactly 0 (no difference at all): p = 1. No
    finite replicate: NaN. The percentile interval and this p-value come from the same
    replicates; they can disagree only at the 5 % boundary (the +1 and interpolation).
    """
    deltas = np.atleast_2d(np.asarray(deltas, dtype=float))
    finite = np.isfinite(deltas)
    total = finite.sum(axis=0)
    below = ((deltas <= 0) & finite).sum(axis=0)
    above = ((deltas >= 0) & finite).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.minimum(1.0, 2.0 * (np.minimum(below, above) + 1) / (total + 1))
    return np.where(total > 0, p, np.nan)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given; NaN stays NaN, outside
    the family).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) * p_(j)). Rejecting where adjusted p < alpha controls the
    family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    m = len(present)
    if m == 0:
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def format_interval(low: float, high: float, decimals: int = 2) -> str:
    """``[low, high]`` with signed bounds, printed with at least ``decimals`` decimals and
    as many more as make every non-zero bound print non-zero (two significant digits) and
    two different bounds print differently: [+0.0031, +0.0120], never [+0.00, +0.01].
    An exact 0 prints unsigned (0.00); a missing bound prints n/a."""
    bounds = [float(low), float(high)]
    if any(math.isnan(b) for b in bounds):
        return "[n/a]"
    needed = decimals
    for bound in bounds:
        if bound != 0 and math.isfinite(bound):
            needed = max(needed, 1 - math.floor(math.log10(abs(bound))))
    if needed > MAX_DECIMALS:
        return "[" + ", ".join(_bound(b, None) for b in bounds) + "]"
    while bounds[0] != bounds[1] and needed < MAX_DECIMALS:
        if _bound(bounds[0], needed) != _bound(bounds[1], needed):
            break
        needed += 1
    return f"[{_bound(bounds[0], needed)}, {_bound(bounds[1], needed)}]"


MAX_DECIMALS = 8  # beyond: scientific notation


def _bound(value: float, decimals: int | None) -> str:
    if value == 0:
        return f"{0:.{decimals}f}" if decimals is not None else "0"
    if decimals is None:
        return f"{value:+.2e}"
    return f"{value:+.{decimals}f}"
