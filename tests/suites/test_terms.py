"""Per-image additive terms and their summary: every metric is scale * sum(num) / sum(den)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aabench.suites.accuracy import AccuracySuite
from aabench.suites.base import Metric, summarise_terms, term_frame
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite

LABEL = 7


def per_image(terms: pd.DataFrame, metric: str, **dims) -> dict[str, tuple[float, float]]:
    """{sample: (sum num, sum den)} of one metric's terms (dims: None = blank)."""
    selected = terms["metric"] == metric
    for dim, value in dims.items():
        selected &= terms[dim].isna() if value is None else terms[dim] == value
    sums = terms[selected].groupby("sample")[["num", "den"]].sum()
    return {sample: (float(r["num"]), float(r["den"])) for sample, r in sums.iterrows()}


def by_metric(rows: list[dict], **dims) -> dict[str, dict]:
    found = {}
    for row in rows:
        if all(row.get(dim) == value for dim, value in dims.items()) and (
            dims or not any(k not in ("metric", "value", "n") for k in row)
        ):
            found[row["metric"]] = row
    return found


# --- Metric, term_frame ------------------------------------------------------------------


def test_scale_is_100_for_percent_units_and_1_otherwise():
    assert Metric("%", True, "a fraction").scale == 100.0
    assert Metric("count", False, "a count").scale == 1.0
    assert Metric("", True, "unitless").scale == 1.0
    assert DiagonalSuite.metrics["flips"].scale == 1.0
    assert DiagonalSuite.metrics["wobble"].scale == 100.0
    assert ShiftSuite.metrics["consistency"].scale == 100.0


def test_term_frame_broadcasts_den_and_adds_dimensions():
    frame = term_frame("accuracy", ["a", "b", "c"], [True, False, True], offset=3)
    assert list(frame.columns) == ["metric", "sample", "num", "den", "offset"]
    assert frame["metric"].tolist() == ["accuracy"] * 3
    assert frame["num"].tolist() == [1.0, 0.0, 1.0]
    assert frame["den"].tolist() == [1.0, 1.0, 1.0]
    assert frame["offset"].tolist() == [3, 3, 3]
    ratio = term_frame("consistency_correct", ["a", "b"], [1, 0], [2, 0])
    assert ratio["den"].tolist() == [2.0, 0.0]


# --- summarise_terms --------------------------------------------------------------------


def test_summarise_terms_skips_rows_whose_den_sums_to_zero():
    terms = pd.concat(
        [
            term_frame("consistency", ["a", "b"], [1, 0]),
            term_frame("accuracy", ["a", "b"], [0, 0], [0, 0]),
            term_frame("consistency_correct", ["a", "b"], [0, 0], [0, 0]),
        ],
        ignore_index=True,
    )
    rows = summarise_terms(ShiftSuite(), terms, n=2)
    assert rows == [{"metric": "consistency", "value": 50.0, "n": 2}]


def test_summarise_terms_is_sum_num_over_sum_den_times_the_scale():
    terms = pd.concat(
        [
            # ratios 1/1 and 1/9: sum/sum = 2/10, not the mean of ratios (5/9).
            term_frame("consistency_correct", ["a", "b"], [1, 1], [1, 9]),
            term_frame("consistency", ["a", "b", "a"], [1, 0, 1]),
        ],
        ignore_index=True,
    )
    rows = summarise_terms(ShiftSuite(), terms, n=5)
    assert rows == [
        {"metric": "consistency_correct", "value": pytest.approx(20.0), "n": 5},
        {"metric": "consistency", "value": pytest.approx(200.0 / 3), "n": 5},
    ]


def test_summarise_terms_unit_scale_for_counts_and_dimension_rows():
    terms = pd.concat(
        [
            term_frame("accuracy", ["a", "b"], [1, 0], offset=0),
            term_frame("accuracy", ["a", "b"], [1, 1], offset=1),
            term_frame("p_true", ["a", "b"], [0.0, 0.0], [0.0, 0.0], offset=2),  # skipped
            term_frame("accuracy", ["a", "b", "a", "b"], [1, 0, 1, 1]),
            term_frame("flips", ["a", "b"], [3, 0]),
        ],
        ignore_index=True,
    )
    rows = summarise_terms(DiagonalSuite(), terms, n=2)
    assert rows == [
        {"metric": "accuracy", "value": 50.0, "n": 2, "offset": 0},
        {"metric": "accuracy", "value": 100.0, "n": 2, "offset": 1},
        {"metric": "accuracy", "value": 75.0, "n": 2},  # blank offset: no offset key
        {"metric": "flips", "value": 1.5, "n": 2},  # count: scale 1
    ]


def test_summarise_terms_adds_missing_dimension_columns():
    terms = term_frame("wobble", ["a", "b"], [0.25, 0.75])  # no offset column at all
    assert summarise_terms(DiagonalSuite(), terms, n=2) == [
        {"metric": "wobble", "value": 50.0, "n": 2}
    ]


# --- accuracy ------------------------------------------------------------------------------


def test_accuracy_terms_are_one_outcome_per_image():
    records = pd.DataFrame(
        {
            "sample": ["a", "b", "c", "d"],
            "correct": [True, False, False, True],
            "top5_correct": [True, True, False, True],
        }
    )
    suite = AccuracySuite()
    terms = suite.terms(records)
    assert per_image(terms, "top1") == {
        "a": (1.0, 1.0),
        "b": (0.0, 1.0),
        "c": (0.0, 1.0),
        "d": (1.0, 1.0),
    }
    assert suite.summarise(records) == [
        {"metric": "top1", "value": 50.0, "n": 4},
        {"metric": "top5", "value": 75.0, "n": 4},
    ]


# --- shift -------------------------------------------------------------------------------------

# Predictions per image and pass: (member 0, member 1); the label is 7.
SHIFT_PREDS = {
    "a": [(7, 7), (7, 7)],  # agree twice, right in both pairs
    "b": [(3, 3), (2, 3)],  # agree once, never right
    "c": [(3, 7), (5, 5)],  # agree once (wrong), right in the first pair
    "d": [(7, 3), (3, 7)],  # never agree, right in both pairs
}


def shift_records(preds: dict[str, list[tuple[int, int]]]) -> pd.DataFrame:
    records = []
    for sample, passes in preds.items():
        for epoch, pair in enumerate(passes):
            for member, pred in enumerate(pair):
                records.append(
                    {
                        "sample": sample,
                        "view": 2 * epoch + member,
                        "label": LABEL,
                        "pred": pred,
                        "correct": pred == LABEL,
                        "top5_correct": pred == LABEL,
                        "p_true": 0.5,
                        "p_other": 0.1,
                        "epoch": epoch,
                        "member": member,
                        "dy": epoch,
                        "dx": member,
                    }
                )
    return pd.DataFrame(records)


def test_shift_terms_per_image_match_hand_counts():
    terms = ShiftSuite(epochs=2).terms(shift_records(SHIFT_PREDS))
    assert per_image(terms, "consistency") == {
        "a": (2.0, 2.0),
        "b": (1.0, 2.0),
        "c": (1.0, 2.0),
        "d": (0.0, 2.0),
    }
    assert per_image(terms, "accuracy") == {
        "a": (4.0, 4.0),
        "b": (0.0, 4.0),
        "c": (1.0, 4.0),
        "d": (2.0, 4.0),
    }
    assert per_image(terms, "consistency_correct") == {
        "a": (2.0, 2.0),
        "b": (0.0, 0.0),
        "c": (0.0, 1.0),
        "d": (0.0, 2.0),
    }


def test_shift_summary_matches_hand_counts():
    rows = ShiftSuite(epochs=2).summarise(shift_records(SHIFT_PREDS))
    # 8 pairs, 4 agree; 16 views, 7 right; 5 pairs with a right view, 2 of them agree.
    assert rows == [
        {"metric": "consistency", "value": 50.0, "n": 4},
        {"metric": "accuracy", "value": 100.0 * 7 / 16, "n": 4},
        {"metric": "consistency_correct", "value": 40.0, "n": 4},
    ]


def test_shift_terms_do_not_depend_on_record_order():
    records = shift_records(SHIFT_PREDS)
    shuffled = records.sample(frac=1.0, random_state=3).reset_index(drop=True)
    suite = ShiftSuite(epochs=2)
    assert suite.summarise(shuffled) == suite.summarise(records)
    for metric in suite.metrics:
        assert per_image(suite.terms(shuffled), metric) == per_image(suite.terms(records), metric)


def test_shift_pairs_are_the_two_members_of_one_pass():
    # Same predictions per image, but paired across passes they would agree.
    preds = {"a": [(7, 3), (7, 3)], "b": [(3, 7), (3, 7)]}
    rows = ShiftSuite(epochs=2).summarise(shift_records(preds))
    assert by_metric(rows)["consistency"]["value"] == 0.0


def test_shift_without_a_right_view_has_no_consistency_correct_row():
    preds = {"a": [(1, 1)], "b": [(2, 3)]}
    rows = ShiftSuite(epochs=1).summarise(shift_records(preds))
    assert [row["metric"] for row in rows] == ["consistency", "accuracy"]
    assert by_metric(rows)["consistency"]["value"] == 50.0
    assert by_metric(rows)["accuracy"]["value"] == 0.0


# --- diagonal -------------------------------------------------------------------------------

# p(true class) and top-1 along the diagonal (offsets 0..3); the label is 7.
DIAGONAL = {
    "x": ([0.9, 0.5, 0.7, 0.6], [7, 3, 7, 7]),  # wobble 0.4, flips 2
    "y": ([0.2, 0.2, 0.2, 0.2], [3, 3, 3, 3]),  # wobble 0, flips 0
    "z": ([0.1, 0.8, 0.3, 0.9], [1, 7, 2, 7]),  # wobble 0.8, flips 3
}


def diagonal_records(curves) -> pd.DataFrame:
    records = []
    for sample, (p_true, preds) in curves.items():
        for offset, (p, pred) in enumerate(zip(p_true, preds, strict=True)):
            records.append(
                {
                    "sample": sample,
                    "view": offset,
                    "label": LABEL,
                    "pred": pred,
                    "correct": pred == LABEL,
                    "top5_correct": True,
                    "p_true": p,
                    "p_other": 0.0,
                    "offset": offset,
                }
            )
    # Out of order, as records may come back from sharded workers.
    return pd.DataFrame(records).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_diagonal_wobble_and_flips_per_image_match_hand_counts():
    terms = DiagonalSuite(max_offset=3).terms(diagonal_records(DIAGONAL))
    wobble = per_image(terms, "wobble", offset=None)
    assert wobble.keys() == {"x", "y", "z"}
    assert wobble["x"] == (pytest.approx(0.4), 1.0)
    assert wobble["y"] == (0.0, 1.0)
    assert wobble["z"] == (pytest.approx(0.8), 1.0)
    assert per_image(terms, "flips", offset=None) == {
        "x": (2.0, 1.0),
        "y": (0.0, 1.0),
        "z": (3.0, 1.0),
    }
    assert per_image(terms, "accuracy", offset=None) == {
        "x": (3.0, 4.0),
        "y": (0.0, 4.0),
        "z": (2.0, 4.0),
    }
    assert per_image(terms, "accuracy", offset=1) == {
        "x": (0.0, 1.0),
        "y": (0.0, 1.0),
        "z": (1.0, 1.0),
    }
    p_true_3 = per_image(terms, "p_true", offset=3)
    assert p_true_3 == {"x": (0.6, 1.0), "y": (0.2, 1.0), "z": (0.9, 1.0)}


def test_diagonal_summary_matches_hand_counts():
    rows = DiagonalSuite(max_offset=3).summarise(diagonal_records(DIAGONAL))
    overall = by_metric(rows)
    assert overall["wobble"]["value"] == pytest.approx(100.0 * (0.4 + 0.0 + 0.8) / 3)
    assert overall["flips"]["value"] == pytest.approx(5 / 3)  # count: not in percent
    assert overall["accuracy"]["value"] == pytest.approx(100.0 * 5 / 12)
    expected_accuracy = [100 / 3, 100 / 3, 100 / 3, 200 / 3]  # right at offset: x; z; x; x, z
    for offset, value in enumerate(expected_accuracy):
        at = by_metric(rows, offset=offset)
        assert at["accuracy"]["value"] == pytest.approx(value)
        assert at["p_true"]["value"] == pytest.approx(
            100.0 * np.mean([DIAGONAL[s][0][offset] for s in DIAGONAL])
        )
    assert {row["n"] for row in rows} == {3}
    assert len(rows) == 2 * 4 + 3
