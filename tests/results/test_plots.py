"""Plots: one PNG per kind of data the runs have, none for data they lack.

The builders here (``run``, ``imagenet_c``, ``imagenet_p``, ``compare``) make fake runs and
comparisons with the fields of aabench.results.compare's RunTables / Comparison; the report
tests use them too.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from aabench.results.compare import Comparison, RunTables
from aabench.results.plots import (
    DIAGONAL_ACCURACY,
    DIAGONAL_P_TRUE,
    IMAGENET_C_CE,
    IMAGENET_C_ERROR,
    IMAGENET_P_FLIP,
    SHIFT_BARS,
    all_plots,
    diagonal_plots,
    imagenet_c_plots,
    imagenet_p_plots,
    shift_plots,
)
from aabench.results.published import published_table
from aabench.results.table import tidy_table
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(
    label: str,
    *,
    suites: tuple[str, ...] = ("accuracy", "shift", "diagonal"),
    top1: float = 76.0,
    consistency: float = 89.0,
    p_true_at_0: float = 70.0,
    n: int = 500,
) -> RunTables:
    """A run with real suites' tidy tables concatenated, as a multi-suite run writes them."""
    tables = []
    common = {"run_id": f"{label}-run", "model": label, "weights": f"{label}.pth"}
    if "accuracy" in suites:
        rows = [
            {"metric": "top1", "value": top1, "n": n},
            {"metric": "top5", "value": top1 + 17, "n": n},
        ]
        tables.append(tidy_table(rows, suite=AccuracySuite(), **common))
    if "shift" in suites:
        rows = [
            {"metric": "consistency", "value": consistency, "n": n},
            {"metric": "accuracy", "value": top1 - 1, "n": n},
            {"metric": "consistency_correct", "value": consistency + 2, "n": n},
        ]
        tables.append(tidy_table(rows, suite=ShiftSuite(), **common))
    if "diagonal" in suites:
        rows = []
        for offset in range(33):
            wave = 3 * np.cos(2 * np.pi * offset / 8)
            rows += [
                {"metric": "accuracy", "offset": offset, "value": top1 + wave, "n": n},
                {"metric": "p_true", "offset": offset, "value": p_true_at_0 + wave, "n": n},
            ]
        rows += [
            {"metric": "accuracy", "value": top1, "n": n},
            {"metric": "wobble", "value": 12.5, "n": n},
            {"metric": "flips", "value": 1.25, "n": n},
        ]
        tables.append(tidy_table(rows, suite=DiagonalSuite(), **common))
    return RunTables(label, pd.concat(tables, ignore_index=True))


CORRUPTIONS = ("gaussian_noise", "defocus_blur", "snow", "contrast")


def imagenet_c(label: str, scale: float = 1.0, ce: bool = True) -> RunTables:
    """A future imagenet-c suite's table: error per (corruption, severity), ce, mce."""
    rows = []
    for c, corruption in enumerate(CORRUPTIONS):
        for severity in range(1, 6):
            value = scale * (40 + 8 * severity + c)
            rows.append(("error", corruption, severity, value, "%"))
        if ce:
            rows.append(("ce", corruption, None, scale * (70 + c), "%"))
    rows.append(("mce", None, None, scale * 72, "%"))
    table = pd.DataFrame(rows, columns=["metric", "corruption", "severity", "value", "unit"])
    table.insert(0, "suite", "imagenet-c")
    table["severity"] = table["severity"].astype("Int64")
    table["higher_is_better"] = False
    return RunTables(label, table)


def imagenet_p(label: str, scale: float = 1.0) -> RunTables:
    perturbations = ("gaussian_noise", "translate", "rotate")
    table = pd.DataFrame(
        {
            "suite": "imagenet-p",
            "metric": "flip_prob",
            "perturbation": perturbations,
            "value": [scale * v for v in (5.0, 3.0, 4.0)],
            "unit": "%",
            "higher_is_better": False,
        }
    )
    return RunTables(label, table)


def compare(
    runs: list[RunTables],
    warnings: list[str] | None = None,
    statistics: bool = True,
) -> Comparison:
    """A fake of aabench.results.compare: align on (suite, metric, offset), a row per candidate."""
    keys = ["suite", "metric", "offset"]

    def keyed(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        if "offset" not in table.columns:
            table["offset"] = pd.array([pd.NA] * len(table), dtype="Int64")
        return table[[*keys, "unit", "higher_is_better", "value"]]

    reference = keyed(runs[0].table)
    frames = []
    for candidate in runs[1:]:
        merged = reference.merge(
            keyed(candidate.table)[[*keys, "value"]], on=keys, suffixes=("_r", "_c")
        )
        frame = merged.rename(columns={"value_r": "reference_value", "value_c": "candidate_value"})
        frame["reference"] = runs[0].label
        frame["candidate"] = candidate.label
        frame["delta"] = frame["candidate_value"] - frame["reference_value"]
        sign = np.where(frame["higher_is_better"].astype(bool), 1.0, -1.0)
        frame["improved"] = (frame["delta"] * sign) > 0
        if statistics:
            paired = frame["metric"].isin(["top1", "consistency", "accuracy"])
            frame["test"] = np.where(paired, "mcnemar", None)
            frame["p_value"] = np.where(paired, 0.0004, np.nan)
            frame["ci_low"] = np.where(paired, frame["delta"] - 0.5, np.nan)
            frame["ci_high"] = np.where(paired, frame["delta"] + 0.5, np.nan)
            frame["significant"] = [True if p else None for p in paired]
        else:
            frame["test"] = None
            frame["p_value"] = np.nan
            frame["ci_low"] = np.nan
            frame["ci_high"] = np.nan
            frame["significant"] = None
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    order = [
        "suite",
        "metric",
        "offset",
        "unit",
        "higher_is_better",
        "reference",
        "candidate",
        "reference_value",
        "candidate_value",
        "delta",
        "improved",
        "test",
        "p_value",
        "ci_low",
        "ci_high",
        "significant",
    ]
    return Comparison(runs=runs, rows=rows[order], warnings=list(warnings or []))


def pixel_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.size


def titles(plots) -> list[str]:
    return [title for title, _ in plots]


# --- tests -------------------------------------------------------------------------------


def test_diagonal_plots_give_p_true_and_accuracy_against_offset():
    plots = diagonal_plots([run("resnet50"), run("resnet50_aa", p_true_at_0=75.0)])
    assert titles(plots) == [DIAGONAL_P_TRUE, DIAGONAL_ACCURACY]
    for _, png in plots:
        assert pixel_size(png) == (600, 400)  # 6 x 4 in at 100 dpi


def test_shift_plot_is_one_bar_chart():
    plots = shift_plots([run("a"), run("b", consistency=91.3)])
    assert titles(plots) == [SHIFT_BARS]
    assert pixel_size(plots[0][1]) == (600, 400)


def test_all_plots_takes_a_comparison_or_its_runs():
    runs = [run("resnet50"), run("resnet50_aa", consistency=91.32)]
    from_runs = all_plots(runs)
    from_comparison = all_plots(compare(runs))
    assert titles(from_runs) == [DIAGONAL_P_TRUE, DIAGONAL_ACCURACY, SHIFT_BARS]
    # Rendering is deterministic: the same data gives the same bytes.
    assert from_runs == from_comparison


def test_plots_of_absent_data_are_left_out():
    accuracy_only = [run("a", suites=("accuracy",)), run("b", suites=("accuracy",))]
    assert all_plots(accuracy_only) == []
    assert imagenet_c_plots([run("a")]) == []
    assert imagenet_p_plots([run("a")]) == []
    shift_only = [run("a", suites=("shift",)), run("b", suites=("shift",))]
    assert titles(all_plots(shift_only)) == [SHIFT_BARS]


def test_a_run_without_the_data_is_skipped_but_others_are_drawn():
    plots = all_plots([run("a", suites=("accuracy",)), run("b", suites=("diagonal",))])
    assert titles(plots) == [DIAGONAL_P_TRUE, DIAGONAL_ACCURACY]


def test_imagenet_c_gives_error_curves_and_ce_bars():
    plots = imagenet_c_plots([imagenet_c("alexnet"), imagenet_c("resnet50", scale=0.8)])
    assert titles(plots) == [IMAGENET_C_ERROR, IMAGENET_C_CE]
    for _, png in plots:
        assert png.startswith(PNG_SIGNATURE)


def test_imagenet_c_without_ce_gives_only_the_error_curves():
    plots = imagenet_c_plots([imagenet_c("a", ce=False), imagenet_c("b", ce=False)])
    assert titles(plots) == [IMAGENET_C_ERROR]


def test_imagenet_c_from_the_published_alexnet_table():
    alexnet = RunTables("alexnet (published)", published_table("imagenet-c"))
    plots = all_plots([alexnet, imagenet_c("mine")])
    assert titles(plots) == [IMAGENET_C_ERROR, IMAGENET_C_CE]


def test_imagenet_p_gives_flip_probability_bars():
    plots = all_plots([imagenet_p("resnet50"), imagenet_p("resnet50_aa", scale=0.9)])
    assert titles(plots) == [IMAGENET_P_FLIP]
    assert pixel_size(plots[0][1])[1] == 400


def test_mixed_suites_in_one_comparison():
    runs = [
        RunTables("a", pd.concat([run("a").table, imagenet_c("a").table, imagenet_p("a").table])),
        RunTables("b", pd.concat([run("b").table, imagenet_c("b", 0.9).table])),
    ]
    assert titles(all_plots(runs)) == [
        DIAGONAL_P_TRUE,
        DIAGONAL_ACCURACY,
        SHIFT_BARS,
        IMAGENET_C_ERROR,
        IMAGENET_C_CE,
        IMAGENET_P_FLIP,
    ]
