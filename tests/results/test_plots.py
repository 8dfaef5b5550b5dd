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
    IMAGENET_P_TOP5,
    SHIFT_BARS,
    WORST_SHIFT_CURVE,
    all_plots,
    diagonal_plots,
    imagenet_c_plots,
    imagenet_p_plots,
    shift_plots,
    worst_shift_plots,
)
from aabench.results.published import published_table
from aabench.results.table import TIDY_COLUMNS, tidy_table
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite
from aabench.suites.worst_shift import WorstShiftSuite

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


def imagenet_p(label: str, scale: float = 1.0, top5: bool = True) -> RunTables:
    """An imagenet-p table: flip_prob (and top5_dist) per perturbation, their means."""
    perturbations = ("gaussian_noise", "translate", "rotate")
    flips, distances = (5.0, 3.0, 4.0), (2.0, 1.0, 1.5)
    rows = [("flip_prob", p, scale * flips[i], "%") for i, p in enumerate(perturbations)]
    rows.append(("mean_flip_prob", None, scale * 4.0, "%"))
    if top5:
        rows += [
            ("top5_dist", p, scale * distances[i], "ranks") for i, p in enumerate(perturbations)
        ]
        rows.append(("mean_top5_dist", None, scale * 1.5, "ranks"))
    table = pd.DataFrame(rows, columns=["metric", "perturbation", "value", "unit"])
    table.insert(0, "suite", "imagenet-p")
    table["higher_is_better"] = False
    return RunTables(label, table)


def compare(
    runs: list[RunTables],
    warnings: list[str] | None = None,
    statistics: bool = True,
    unpaired: list[str] | None = None,
) -> Comparison:
    """A fake of aabench.results.compare: rows aligned on (suite, metric, dimensions), one
    per candidate, with its columns (McNemar on top1, consistency and accuracy; families
    of per-dimension tests Holm-corrected)."""
    dimensions = [c for c in runs[0].table.columns if c not in (*TIDY_COLUMNS, "note", "source")]

    def keyed(table: pd.DataFrame) -> pd.DataFrame:
        table = table.copy()
        for column in (*dimensions, "n", "note"):
            if column not in table.columns:
                table[column] = pd.NA
        parts = [table[d].map(lambda v: "" if pd.isna(v) else str(v)) for d in dimensions]
        table["_key"] = ["|".join(values) for values in zip(*parts, strict=True)] or ""
        return table

    reference = keyed(runs[0].table)
    frames = []
    for candidate in runs[1:]:
        merged = reference.merge(
            keyed(candidate.table)[["suite", "metric", "_key", "value", "note"]],
            on=["suite", "metric", "_key"],
            how="left",
            suffixes=("_r", "_c"),
        )
        frame = merged.rename(columns={"value_r": "reference_value", "value_c": "candidate_value"})
        frame["note"] = frame["note_c"].where(frame["note_c"].notna(), frame["note_r"])
        frame["reference"] = runs[0].label
        frame["candidate"] = candidate.label
        frame["delta"] = frame["candidate_value"] - frame["reference_value"]
        sign = np.where(frame["higher_is_better"].astype(bool), 1.0, -1.0)
        frame["improved"] = (frame["delta"] * sign) > 0
        dimensioned = frame["_key"].str.strip("|") != ""
        family = frame.groupby(["suite", "metric", dimensioned])["metric"].transform("size")
        frame["family_size"] = np.where(dimensioned, family, 1)
        frame["correction"] = np.where(frame["family_size"] > 1, "holm", None)
        paired = frame["metric"].isin(["top1", "consistency", "accuracy"])
        paired &= frame["candidate_value"].notna() & statistics
        frame["test"] = np.where(paired, "mcnemar", None)
        frame["p_value"] = np.where(paired, 0.0004, np.nan)
        frame["p_adjusted"] = np.minimum(1.0, frame["p_value"] * frame["family_size"])
        frame["ci_low"] = np.where(paired, frame["delta"] - 0.5, np.nan)
        frame["ci_high"] = np.where(paired, frame["delta"] + 0.5, np.nan)
        frame["significant"] = [
            bool(p < 0.05) if s else None for p, s in zip(frame["p_adjusted"], paired, strict=True)
        ]
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    order = [
        "suite",
        "metric",
        *dimensions,
        "unit",
        "higher_is_better",
        "reference",
        "candidate",
        "reference_value",
        "candidate_value",
        "delta",
        "improved",
        "n",
        "note",
        "test",
        "p_value",
        "family_size",
        "correction",
        "p_adjusted",
        "ci_low",
        "ci_high",
        "significant",
    ]
    comparison = Comparison(runs=runs, rows=rows[order], warnings=list(warnings or []))
    comparison.unpaired = list(unpaired or [])
    return comparison


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


def test_imagenet_p_gives_flip_probability_and_top5_distance_bars():
    plots = all_plots([imagenet_p("resnet50"), imagenet_p("resnet50_aa", scale=0.9)])
    assert titles(plots) == [IMAGENET_P_FLIP, IMAGENET_P_TOP5]
    assert all(pixel_size(png)[1] == 400 for _, png in plots)
    assert plots[0][1] != plots[1][1]


def test_imagenet_p_without_top5_distance_gives_only_the_flip_bars():
    plots = imagenet_p_plots([imagenet_p("a", top5=False), imagenet_p("b", top5=False)])
    assert titles(plots) == [IMAGENET_P_FLIP]


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
        IMAGENET_P_TOP5,
    ]


def worst_shift(label: str, grid: str = "integer", drop: float = 2.0) -> RunTables:
    """A worst-shift run's tidy table: the radius curve falls by ``drop`` per radius."""
    clean = 80.0
    rows = [{"metric": "clean_accuracy", "value": clean, "n": 50}]
    radii = range(1, 8) if grid != "spatial" else ()
    rows += [
        {"metric": "robust_accuracy", "radius": r, "value": clean - drop * r, "n": 50}
        for r in radii
    ]
    rows.append({"metric": "robust_accuracy", "value": clean - drop * 7, "n": 50})
    common = {"run_id": f"{label}-run", "model": label, "weights": f"{label}.pth"}
    table = tidy_table(rows, suite=WorstShiftSuite(grid=grid), **common)
    return RunTables(label, table)


def test_worst_shift_gives_the_radius_curve():
    runs = [worst_shift("convnext_tiny"), worst_shift("convnext_afc", drop=0.0)]
    plots = worst_shift_plots(runs)
    assert titles(plots) == [WORST_SHIFT_CURVE]
    assert pixel_size(plots[0][1]) == (600, 400)
    assert worst_shift_plots(compare(runs)) == plots  # deterministic bytes
    assert titles(all_plots([*runs])) == [WORST_SHIFT_CURVE]
    mixed = all_plots([run("a"), worst_shift("b")])
    assert titles(mixed) == [DIAGONAL_P_TRUE, DIAGONAL_ACCURACY, SHIFT_BARS, WORST_SHIFT_CURVE]


def test_worst_shift_without_radius_rows_draws_no_curve():
    # The spatial grid (and Engstrom's published numbers) has no radius rows.
    assert worst_shift_plots([worst_shift("a", grid="spatial")]) == []
    assert worst_shift_plots([run("a")]) == []
    spatial_and_integer = [worst_shift("a", grid="spatial"), worst_shift("b")]
    assert titles(worst_shift_plots(spatial_and_integer)) == [WORST_SHIFT_CURVE]
    published = published_table("spatial-pytorch")
    assert worst_shift_plots([RunTables("engstrom", published)]) == []


HOSTILE = ("$\\foo$", "a$b^", "x$^{2}$ y$", "cost \\$5 and $6")


def test_labels_and_data_values_are_drawn_literally_never_as_mathtext(monkeypatch):
    """Run labels, units and dimension values come from users' files: matplotlib must
    draw each character as written (a ``$`` pair would be parsed as mathtext, and an
    unknown command such as ``\\foo`` fails the whole report)."""
    from matplotlib.text import Text

    from aabench.results import plots

    drawn: list[tuple[str, bool]] = []
    render = plots._png

    def render_and_read(figure):
        png = render(figure)  # drawing makes the tick labels
        drawn.extend(t._preprocess_math(t.get_text()) for t in figure.findobj(Text))
        return png

    monkeypatch.setattr(plots, "_png", render_and_read)
    reference, candidate = run(HOSTILE[0]), run(HOSTILE[1])
    odd_c = imagenet_c(HOSTILE[2])
    odd_c.table["corruption"] = odd_c.table["corruption"].str.replace("snow", HOSTILE[3])
    odd_c.table["unit"] = "$%$"
    found = all_plots([reference, candidate, odd_c, imagenet_p(HOSTILE[3])])
    assert len(found) == 7
    assert [math for _, math in drawn if math] == []
    texts = {text for text, _ in drawn}
    assert f"{HOSTILE[0]} (reference)" in texts and HOSTILE[1] in texts
    assert HOSTILE[3] in texts  # the corruption's panel title
    assert "ImageNet-C: top-1 error ($%$) against severity" in texts
