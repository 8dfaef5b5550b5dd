"""Paired statistics between two runs on the same images.

- Exact McNemar test (two-sided) for metrics that are one 0/1 outcome per image
  (top-1, top-5, accuracy at one offset).
- Paired bootstrap over images for every metric: resample images with replacement, the
  same images for both runs, and recompute each metric as scale * sum(num) / sum(den).
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
    deltas = np.concatenate(deltas)
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():
        # A metric whose denominator is 0 in every replicate has no interval: NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        low = np.nanpercentile(deltas, tail, axis=0)
        high = np.nanpercentile(deltas, 100.0 - tail, axis=0)
    return low, high
