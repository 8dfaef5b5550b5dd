"""A comparison row in words: better / worse / no significant difference, with test and n."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from aabench.results.verdict import dimension_label, verdict


def a_row(**overrides) -> dict:
    base = {
        "reference_value": 70.0,
        "candidate_value": 72.0,
        "delta": 2.0,
        "higher_is_better": True,
        "test": "mcnemar",
        "p_value": 0.003,
        "p_adjusted": 0.003,
        "family_size": 1,
        "ci_low": 0.5,
        "ci_high": 3.5,
        "significant": True,
        "n": 500,
        "note": "",
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({}, "better (McNemar p=0.003, n=500)"),
        ({"higher_is_better": False}, "worse (McNemar p=0.003, n=500)"),
        ({"delta": -2.0, "candidate_value": 68.0}, "worse (McNemar p=0.003, n=500)"),
        (
            {"p_value": 0.21, "p_adjusted": 0.21, "significant": False},
            "no significant difference (McNemar p=0.21, n=500)",
        ),
        (
            {"p_value": 0.002, "p_adjusted": 0.066, "family_size": 33, "significant": False},
            "no significant difference (McNemar p=0.066, Holm over 33, n=500)",
        ),
        (
            {
                "test": "bootstrap",
                "p_value": 0.4,
                "p_adjusted": 0.4,
                "ci_low": -0.4,
                "ci_high": 0.9,
                "significant": False,
                "n": 5,
            },
            "no significant difference (bootstrap 95% CI [-0.40, +0.90], n=5)",
        ),
        (
            {"test": "bootstrap", "p_value": 0.004, "p_adjusted": 0.004, "ci_low": 0.0031},
            "better (bootstrap p=0.004, 95% CI [+0.0031, +3.5000], n=500)",
        ),
        (
            {"test": None, "p_value": math.nan, "significant": None, "no_statistics": "x"},
            "no paired statistics (x)",
        ),
        (
            {"candidate_value": math.nan, "delta": math.nan, "note": "needs every severity"},
            "not compared (needs every severity)",
        ),
    ],
)
def test_verdict(overrides, text):
    assert verdict(a_row(**overrides)) == text


def test_verdict_takes_a_pandas_row_with_pandas_missing_values():
    frame = pd.DataFrame([a_row(significant=None, test=None, no_statistics="")])
    frame["n"] = pd.array([pd.NA], dtype="Int64")
    assert verdict(frame.iloc[0]) == "no paired statistics (no samples files)"


def test_dimension_label():
    row = {"corruption": "fog", "severity": 3.0, "category": None, "offset": math.nan}
    assert dimension_label(row, ["corruption", "severity", "category"]) == (
        "corruption=fog, severity=3"
    )
    assert dimension_label({"offset": pd.NA}, ["offset"]) == ""
