"""One comparison row in words: better, worse, or no significant difference -- and why.

    better (McNemar p=0.003, n=500)
    worse (bootstrap p=0.002, 95% CI [-1.20, -0.31], n=500)
    better (McNemar p=0.012, Holm over 33, n=500)
    no significant difference (bootstrap 95% CI [-0.40, +0.90], n=5)
    no paired statistics (published numbers have no per-image samples)
    not compared (needs every severity of its corruptions; missing 5 cells (...))

Direction comes from ``higher_is_better``. "Holm over 33": the row is one of 33 tests of
its family (the per-dimension rows of one metric) and the p shown is Holm-adjusted.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from aabench.results.stats import format_interval

TEST_NAMES = {"mcnemar": "McNemar", "bootstrap": "bootstrap"}


def verdict(row: Mapping) -> str:
    """``row``: a row of ``Comparison.rows`` (dict or pandas Series)."""
    if _missing(row.get("reference_value")) or _missing(row.get("candidate_value")):
        note = _text(row.get("note"))
        return f"not compared ({note})" if note else "not compared (no value)"
    test = _text(row.get("test"))
    if not test:
        reason = _text(row.get("no_statistics")) or "no samples files"
        return f"no paired statistics ({reason})"
    details = _details(row, test)
    significant = row.get("significant")
    if _missing(significant) or not bool(significant):
        return f"no significant difference ({details})"
    return f"{_direction(row)} ({details})"


def p_text(p: float) -> str:
    """A p-value with two significant digits (0.003, 0.041, 1)."""
    if _missing(p):
        return "n/a"
    return f"{float(p):.2g}"


def dimension_label(row: Mapping, dimensions) -> str:
    """ "perturbation=rotate", "corruption=fog, severity=3"; "" for an overall row."""
    parts = []
    for dim in dimensions:
        value = row.get(dim)
        if _missing(value):
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{dim}={value}")
    return ", ".join(parts)


def _details(row: Mapping, test: str) -> str:
    name = TEST_NAMES.get(test, test)
    family = row.get("family_size")
    family = 0 if _missing(family) else int(family)
    holm = family > 1
    p = row.get("p_adjusted") if holm else row.get("p_value")
    if _missing(p):
        p = row.get("p_value")
    parts = []
    significant = not _missing(row.get("significant")) and bool(row.get("significant"))
    if test == "mcnemar" or significant or holm:
        parts.append(f"{name} p={p_text(p)}")
    if test == "bootstrap":
        interval = f"95% CI {format_interval(row.get('ci_low'), row.get('ci_high'))}"
        parts.append(interval if parts else f"{name} {interval}")
    if holm:
        parts.append(f"Holm over {family}")
    n = row.get("n")
    if not _missing(n):
        parts.append(f"n={int(n)}")
    return ", ".join(parts)


def _direction(row: Mapping) -> str:
    delta = row.get("delta")
    if _missing(delta) or delta == 0:  # significant with no change in value: the interval
        low, high = row.get("ci_low"), row.get("ci_high")
        delta = 0.0 if _missing(low) or _missing(high) else (low + high) / 2
    higher_is_better = bool(row.get("higher_is_better", True))
    if delta == 0:
        return "different"
    return "better" if (delta > 0) == higher_is_better else "worse"


def _missing(value) -> bool:
    """None, NaN, pd.NA (a scalar; never an array)."""
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _text(value) -> str:
    return "" if _missing(value) else str(value)
