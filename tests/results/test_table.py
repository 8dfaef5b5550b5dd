"""The tidy table: fixed columns in a fixed order, then the suite's dimensions."""

from __future__ import annotations

import pandas as pd
import pytest

from aabench.results.files import write_table
from aabench.results.table import TIDY_COLUMNS, tidy_table
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite
from aabench.suites.worst_shift import WorstShiftSuite


def test_columns_and_values_for_a_suite_without_dimensions():
    rows = [{"metric": "top1", "value": 76, "n": 50000}, {"metric": "top5", "value": 93.5, "n": 7}]
    table = tidy_table(rows, run_id="abc", model="m", weights="w.pth", suite=AccuracySuite())
    assert tuple(table.columns) == TIDY_COLUMNS == (
        "run_id", "model", "weights", "suite", "metric", "value", "unit", "higher_is_better", "n",
    )  # fmt: skip
    assert table.to_dict(orient="records") == [
        {
            "run_id": "abc",
            "model": "m",
            "weights": "w.pth",
            "suite": "accuracy",
            "metric": "top1",
            "value": 76.0,
            "unit": "%",
            "higher_is_better": True,
            "n": 50000,
        },
        {
            "run_id": "abc",
            "model": "m",
            "weights": "w.pth",
            "suite": "accuracy",
            "metric": "top5",
            "value": 93.5,
            "unit": "%",
            "higher_is_better": True,
            "n": 7,
        },
    ]
    assert table["value"].dtype == "float64"


def test_units_and_directions_come_from_the_suite_metrics():
    rows = [
        {"metric": "wobble", "value": 1.5, "n": 2},
        {"metric": "flips", "value": 0.5, "n": 2},
        {"metric": "accuracy", "value": 50.0, "n": 2, "offset": 3},
    ]
    table = tidy_table(rows, run_id="r", model="m", weights="none", suite=DiagonalSuite())
    assert table["unit"].tolist() == ["%", "count", "%"]
    assert table["higher_is_better"].tolist() == [False, False, True]


def test_dimension_columns_follow_as_int64_with_blanks(tmp_path):
    rows = [
        {"metric": "accuracy", "offset": 0, "value": 70.0, "n": 3},
        {"metric": "p_true", "offset": 16, "value": 60.0, "n": 3},
        {"metric": "accuracy", "value": 69.0, "n": 3},
        {"metric": "flips", "value": 0.25, "n": 3},
    ]
    table = tidy_table(rows, run_id="r", model="m", weights="none", suite=DiagonalSuite())
    assert list(table.columns) == [*TIDY_COLUMNS, "offset"]
    assert str(table["offset"].dtype) == "Int64"
    assert table["offset"].tolist()[:2] == [0, 16]
    assert table["offset"].isna().tolist() == [False, False, True, True]

    path = tmp_path / "diagonal.csv"
    write_table(table, path)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join([*TIDY_COLUMNS, "offset"])
    assert lines[1] == "r,m,none,diagonal,accuracy,70.0,%,True,3,0"
    assert lines[2].endswith(",16")
    assert lines[3] == "r,m,none,diagonal,accuracy,69.0,%,True,3,"
    back = pd.read_csv(path)
    assert back["offset"].isna().tolist() == [False, False, True, True]


def test_fractional_dimensions_stay_floats():
    rows = [
        {"metric": "robust_accuracy", "value": 50.0, "n": 2},
        {"metric": "robust_accuracy", "radius": 0.5, "value": 100.0, "n": 2},
        {"metric": "robust_accuracy", "radius": 1, "value": 50.0, "n": 2},
    ]
    table = tidy_table(rows, run_id="r", model="m", weights="none", suite=WorstShiftSuite())
    assert table["radius"].dtype == float
    assert table["radius"].tolist()[1:] == [0.5, 1.0] and pd.isna(table["radius"].iloc[0])


def test_unknown_metric_is_refused():
    with pytest.raises(KeyError):
        tidy_table([{"metric": "nope", "value": 1, "n": 1}], run_id="r", model="m",
                   weights="none", suite=ShiftSuite())  # fmt: skip


def test_no_rows_still_gives_the_columns():
    table = tidy_table([], run_id="r", model="m", weights="none", suite=DiagonalSuite())
    assert list(table.columns) == [*TIDY_COLUMNS, "offset"]
    assert table.empty
