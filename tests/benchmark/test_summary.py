"""`aabench run`'s terminal summary: overall rows, per-category aggregates, notes."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from aabench.cli.summary import headline, print_summary, summary_rows
from aabench.results.table import TIDY_COLUMNS, tidy_table
from aabench.suites.imagenet_c import ImageNetCSuite

MISSING = "needs every severity of its corruptions; missing 5 cells (fog/1, ...)"


def imagenet_c_table():
    rows = [
        {"metric": "error", "value": 40.0, "n": 4, "corruption": "fog", "severity": 1},
        {"metric": "ce", "value": 90.0, "n": 4, "corruption": "fog"},
        {"metric": "clean_error", "value": 25.0, "n": 4},
        {"metric": "mce", "value": float("nan"), "n": 0, "note": MISSING},
        {"metric": "mce", "value": 80.5, "n": 4, "category": "noise"},
        {"metric": "mce", "value": float("nan"), "n": 0, "category": "weather", "note": MISSING},
    ]
    return tidy_table(rows, run_id="r", model="m", weights="none", suite=ImageNetCSuite())


def test_summary_rows_are_overall_rows_and_category_aggregates_not_cells():
    rows = summary_rows(imagenet_c_table())
    assert list(zip(rows["metric"], rows["category"].fillna(""), strict=True)) == [
        ("clean_error", ""),
        ("mce", ""),
        ("mce", "noise"),
        ("mce", "weather"),
    ]


def test_headline_rows_carry_the_category_and_the_note():
    rows = headline(imagenet_c_table())
    assert list(rows[0]) == [*TIDY_COLUMNS, "category", "note"]
    assert [(r["metric"], r["category"], r["value"], r["note"]) for r in rows] == [
        ("clean_error", None, 25.0, None),
        ("mce", None, None, MISSING),
        ("mce", "noise", 80.5, None),
        ("mce", "weather", None, MISSING),
    ]


def test_print_summary_shows_categories_and_why_a_value_is_missing():
    table = imagenet_c_table()
    result = SimpleNamespace(
        table=table,
        provenance={
            "model": "m",
            "suite": "imagenet-c",
            "n": 4,
            "images_per_second": 12.5,
            "warnings": ["random weights"],
        },
        paths={"table": "runs/m/imagenet-c.csv"},
    )
    console = Console(width=200, record=True)
    print_summary(result, console=console)
    lines = [
        " ".join(line.replace("│", " ").replace("┃", " ").split())
        for line in console.export_text().splitlines()
    ]
    assert "metric category value unit note" in lines
    assert "clean_error 25.00 %" in lines
    assert f"mce - % {MISSING}" in lines
    assert "mce noise 80.50 %" in lines
    assert f"mce weather - % {MISSING}" in lines
    assert not any(line.startswith("error") or line.startswith("ce ") for line in lines)
    assert "warning: random weights" in lines
    assert "table: runs/m/imagenet-c.csv (12.5 img/s)" in lines


def test_a_table_without_dimensions_or_notes_prints_no_note_column():
    from aabench.suites.accuracy import AccuracySuite

    table = tidy_table(
        [{"metric": "top1", "value": 50.0, "n": 2}, {"metric": "top5", "value": 100.0, "n": 2}],
        run_id="r",
        model="m",
        weights="none",
        suite=AccuracySuite(),
    )
    assert [r["note"] for r in headline(table)] == [None, None]
    result = SimpleNamespace(
        table=table,
        provenance={"model": "m", "suite": "accuracy", "n": 2, "images_per_second": 1.0},
        paths={"table": "t.csv"},
    )
    console = Console(width=120, record=True)
    print_summary(result, console=console)
    text = console.export_text()
    assert "note" not in text and "category" not in text
    assert "top1" in text and "50.00" in text
