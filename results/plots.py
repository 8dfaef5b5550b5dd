"""Plots of a comparison: PNG bytes for what its runs measured, nothing for what they lack.

Every function takes a ``Comparison`` (anything with ``.runs``) or its list of
``RunTables`` (``.label``, ``.table``) and returns ``[(title, png_bytes), ...]``; a plot
whose data no run has is left out, so the list may be empty.

Figures are drawn on matplotlib's Agg canvas through the object API (``Figure``), never
through pyplot: nothing needs a display, no global figure state leaks between calls,
and importing this module leaves the process's interactive backend alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from aabench.results.table import TIDY_COLUMNS

Plot = tuple[str, bytes]

DPI = 100
SIZE = (6.0, 4.0)

DIAGONAL_P_TRUE = "Diagonal shift: p(true class) against offset"
DIAGONAL_ACCURACY = "Diagonal shift: accuracy against offset"
SHIFT_BARS = "Random shift: consistency and accuracy"
IMAGENET_C_ERROR = "ImageNet-C: error against severity"
IMAGENET_C_CE = "ImageNet-C: corruption error (CE)"
IMAGENET_P_FLIP = "ImageNet-P: flip probability"
IMAGENET_P_TOP5 = "ImageNet-P: top-5 distance"
EQUIVARIANCE_PROFILE = "Equivariance: feature distance against depth"
EQUIVARIANCE_HEATMAP = "Equivariance: distance against shift (dh, dw)"
WORST_SHIFT_CURVE = "Worst-case shift: robust accuracy against radius"
_EQUIVARIANCE_METRICS = (
    ("l2_distance", "normalised L2 distance"),
    ("cosine_distance", "cosine distance"),
)

# Columns that are not dimensions in a tidy table (published tables add `source`).
_FIXED = frozenset((*TIDY_COLUMNS, "source"))


def all_plots(source) -> list[Plot]:
    """Every plot the runs have data for, in report order."""
    return [
        *diagonal_plots(source),
        *shift_plots(source),
        *imagenet_c_plots(source),
        *imagenet_p_plots(source),
        *equivariance_plots(source),
        *worst_shift_plots(source),
    ]


def diagonal_plots(source) -> list[Plot]:
    """p(true class) and accuracy against diagonal offset, one line per run."""
    runs = _runs(source)
    plots = []
    for metric, title, name in (
        ("p_true", DIAGONAL_P_TRUE, "p(true class)"),
        ("accuracy", DIAGONAL_ACCURACY, "top-1 accuracy"),
    ):
        curves = []
        for index, run in enumerate(runs):
            rows = _rows(run.table, "diagonal", metric, "offset")
            if rows.empty:
                continue
            curve = rows.groupby(_numeric(rows["offset"]))["value"].mean().sort_index()
            curves.append((index, run.label, curve, _unit(rows)))
        if not curves:
            continue
        figure, axes = _figure()
        for index, label, curve, _ in curves:
            axes.plot(
                curve.index.to_numpy(),
                curve.to_numpy(),
                marker="o",
                markersize=2.5,
                linewidth=2.0 if index == 0 else 1.4,
                color=_colour(index),
                label=_legend_label(label, index),
            )
        _floor_at_zero(axes, [v for _, _, curve, _ in curves for v in curve.to_numpy()])
        axes.set_xlabel("diagonal offset (pixels)")
        axes.set_ylabel(_axis_label(name, curves[0][3]))
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        plots.append((title, _png(figure)))
    return plots


def shift_plots(source) -> list[Plot]:
    """Shift consistency and accuracy side by side, one group of bars per run."""
    runs = _runs(source)
    metrics = ("consistency", "accuracy")
    labels, values, unit = [], {m: [] for m in metrics}, None
    for index, run in enumerate(runs):
        found = {m: _rows(run.table, "shift", m) for m in metrics}
        if all(rows.empty for rows in found.values()):
            continue
        labels.append(_legend_label(run.label, index))
        for metric, rows in found.items():
            values[metric].append(float(rows["value"].mean()) if not rows.empty else math.nan)
            unit = unit or (_unit(rows) if not rows.empty else None)
    if not labels:
        return []
    figure = _grouped_bars(
        categories=labels,
        series=[(metric, values[metric], f"C{i}") for i, metric in enumerate(metrics)],
        ylabel=_axis_label("value", unit),
        title=SHIFT_BARS,
        annotate=True,
    )
    return [(SHIFT_BARS, _png(figure))]


def imagenet_c_plots(source) -> list[Plot]:
    """Error against severity per corruption (small multiples) and CE per corruption."""
    runs = _runs(source)
    plots = []

    errors = []
    for index, run in enumerate(runs):
        rows = _rows(run.table, "imagenet-c", "error", "corruption", "severity")
        if not rows.empty:
            errors.append((index, run.label, rows))
    if errors:
        corruptions = _ordered(pd.concat([rows["corruption"] for _, _, rows in errors]))
        columns = min(5, len(corruptions))
        lines = math.ceil(len(corruptions) / columns)
        width, height = 1.9 * columns + 0.5, 1.6 * lines + 1.2
        figure = Figure(figsize=(width, height))
        FigureCanvasAgg(figure)
        grid = figure.subplots(lines, columns, sharex=True, sharey=True, squeeze=False)
        # A fixed layout: constrained layout costs seconds on a grid of 19 panels.
        figure.subplots_adjust(
            left=0.45 / width,
            right=1 - 0.1 / width,
            top=1 - 0.6 / height,
            bottom=0.75 / height,
            hspace=0.5,
            wspace=0.12,
        )
        for axes, corruption in zip(grid.flat, corruptions, strict=False):
            for index, label, rows in errors:
                cell = rows[rows["corruption"].astype(str) == corruption]
                if cell.empty:
                    continue
                curve = cell.groupby(_numeric(cell["severity"]))["value"].mean().sort_index()
                axes.plot(
                    curve.index.to_numpy(),
                    curve.to_numpy(),
                    marker="o",
                    markersize=2.5,
                    linewidth=1.2,
                    color=_colour(index),
                    label=_legend_label(label, index),
                )
            axes.set_title(_literal(corruption), fontsize=7)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.tick_params(labelsize=6)
            axes.grid(alpha=0.3)
        for number, axes in enumerate(grid.flat):
            if number >= len(corruptions):
                axes.set_visible(False)
            elif number + columns >= len(corruptions):  # lowest panel of its column
                axes.xaxis.set_tick_params(labelbottom=True)
                axes.set_xlabel("severity", fontsize=7)
        handles, names = _legend_entries(grid)
        figure.legend(
            handles, names, loc="lower center", ncols=min(4, len(names)), fontsize=8, frameon=False
        )
        unit = _unit(errors[0][2])
        figure.suptitle(
            f"ImageNet-C: {_axis_label('top-1 error', unit)} against severity",
            fontsize=10,
            y=1 - 0.1 / height,
            verticalalignment="top",
        )
        plots.append((IMAGENET_C_ERROR, _png(figure)))

    ce = [
        (index, run.label, rows)
        for index, run in enumerate(runs)
        if not (rows := _rows(run.table, "imagenet-c", "ce", "corruption")).empty
    ]
    if ce:
        plots.append((IMAGENET_C_CE, _bars_per_category(ce, "corruption", "CE", IMAGENET_C_CE)))
    return plots


def imagenet_p_plots(source) -> list[Plot]:
    """Flip probability and top-5 distance per perturbation, one bar per run."""
    runs = _runs(source)
    plots = []
    for metric, name, title in (
        ("flip_prob", "flip probability", IMAGENET_P_FLIP),
        ("top5_dist", "top-5 distance", IMAGENET_P_TOP5),
    ):
        found = [
            (index, run.label, rows)
            for index, run in enumerate(runs)
            if not (rows := _rows(run.table, "imagenet-p", metric, "perturbation")).empty
        ]
        if found:
            plots.append((title, _bars_per_category(found, "perturbation", name, title)))
    return plots


def equivariance_plots(source) -> list[Plot]:
    """The per-layer profile (L2 and cosine distance against depth, one line per run) and
    the (dh, dw) map of L2 distance at each run's first layer with per-offset rows."""
    runs = _runs(source)
    plots = []
    profiles = []
    for index, run in enumerate(runs):
        found = {}
        for metric in ("l2_distance", "cosine_distance"):
            rows = _rows(run.table, "equivariance", metric, "layer", "depth")
            if "dh" in rows.columns:
                rows = rows[rows["dh"].isna()]
            if not rows.empty:
                rows = rows.assign(depth=_numeric(rows["depth"])).sort_values("depth")
                found[metric] = rows
        if found:
            profiles.append((index, run.label, found))
    if profiles:
        figure = Figure(figsize=(10.0, 4.2), layout="constrained")
        FigureCanvasAgg(figure)
        panels = figure.subplots(1, 2)
        names: dict[float, list[str]] = {}
        for axes, (metric, name) in zip(panels, _EQUIVARIANCE_METRICS, strict=True):
            values, unit = [], None
            for index, label, found in profiles:
                if metric not in found:
                    continue
                rows = found[metric]
                for depth, layer in zip(rows["depth"], rows["layer"].astype(str), strict=True):
                    if layer not in names.setdefault(depth, []):
                        names[depth].append(layer)
                axes.plot(
                    rows["depth"].to_numpy(),
                    rows["value"].to_numpy(),
                    marker="o",
                    markersize=3,
                    linewidth=2.0 if index == 0 else 1.4,
                    color=_colour(index),
                    label=_legend_label(label, index),
                )
                values += list(rows["value"])
                unit = _unit(rows)
            _floor_at_zero(axes, values)
            axes.set_ylabel(_axis_label(name, unit))
            axes.set_title(name, fontsize=9)
            axes.grid(alpha=0.3)
            axes.legend(fontsize=8)
        depths = sorted(names)
        for axes in panels:
            # Each depth's layer names (models name their layers differently).
            axes.set_xticks(depths, [_literal("\n".join(names[d])) for d in depths])
            axes.tick_params(axis="x", labelrotation=90, labelsize=6)
            axes.set_xlabel("depth (downsampling layers in network order)", fontsize=8)
        figure.suptitle(EQUIVARIANCE_PROFILE, fontsize=10)
        plots.append((EQUIVARIANCE_PROFILE, _png(figure)))

    maps = []
    for index, run in enumerate(runs):
        rows = _rows(run.table, "equivariance", "l2_distance", "layer", "depth", "dh", "dw")
        if rows.empty:
            continue
        rows = rows.assign(depth=_numeric(rows["depth"]))
        first = rows[rows["depth"] == rows["depth"].min()]
        grid = first.pivot_table(
            index=_numeric(first["dh"]), columns=_numeric(first["dw"]), values="value"
        )
        maps.append(
            (index, run.label, str(first["layer"].iloc[0]), int(first["depth"].iloc[0]), grid)
        )
    if maps:
        highest = max(float(np.nanmax(grid.to_numpy())) for *_, grid in maps) or 1.0
        width = 3.6 * len(maps) + 1.0
        figure = Figure(figsize=(width, 4.1), layout="constrained")
        FigureCanvasAgg(figure)
        panels = figure.subplots(1, len(maps), squeeze=False)[0]
        for axes, (index, label, layer, depth, grid) in zip(panels, maps, strict=True):
            image = axes.imshow(
                grid.to_numpy(), vmin=0, vmax=highest, cmap="viridis", origin="upper"
            )
            axes.set_xticks(range(grid.shape[1]), [_literal(_plain(v)) for v in grid.columns])
            axes.set_yticks(range(grid.shape[0]), [_literal(_plain(v)) for v in grid.index])
            axes.tick_params(labelsize=6)
            axes.set_xlabel("dw (pixels)", fontsize=8)
            axes.set_ylabel("dh (pixels)", fontsize=8)
            title = f"{_legend_label(label, index)}\n{_literal(layer)} (depth {depth})"
            axes.set_title(title, fontsize=8)
        figure.colorbar(image, ax=list(panels), shrink=0.8, label="normalised L2 distance")
        figure.suptitle(EQUIVARIANCE_HEATMAP, fontsize=10)
        plots.append((EQUIVARIANCE_HEATMAP, _png(figure)))
    return plots


def worst_shift_plots(source) -> list[Plot]:
    """Robust accuracy against the grid's Chebyshev radius, one line per run, starting
    at radius 0 from the run's clean accuracy, which a dashed line of the run's colour
    repeats as its ceiling. Runs without radius rows (the spatial grid) are left out."""
    runs = _runs(source)
    curves = []
    for index, run in enumerate(runs):
        rows = _rows(run.table, "worst-shift", "robust_accuracy", "radius")
        if rows.empty:
            continue
        curve = rows.groupby(_numeric(rows["radius"]))["value"].mean().sort_index()
        clean = _rows(run.table, "worst-shift", "clean_accuracy")
        if "radius" in clean.columns:
            clean = clean[clean["radius"].isna()]
        level = float(clean["value"].mean()) if not clean.empty else math.nan
        if math.isfinite(level):
            curve = pd.concat([pd.Series([level], index=[0.0]), curve[curve.index > 0]])
        curves.append((index, run.label, curve, level, _unit(rows)))
    if not curves:
        return []
    figure, axes = _figure()
    values = []
    for index, label, curve, level, _ in curves:
        colour = _colour(index)
        axes.plot(
            curve.index.to_numpy(),
            curve.to_numpy(),
            marker="o",
            markersize=2.5,
            linewidth=2.0 if index == 0 else 1.4,
            color=colour,
            label=_legend_label(label, index),
        )
        if math.isfinite(level):
            axes.axhline(level, linestyle="--", linewidth=1.0, color=colour, alpha=0.8)
        values += [*curve.to_numpy(), level]
    _floor_at_zero(axes, values)
    axes.plot([], [], linestyle="--", linewidth=1.0, color="#555", label="clean accuracy")
    axes.set_xlabel("shift radius (pixels, Chebyshev)")
    axes.set_ylabel(_axis_label("robust accuracy", curves[0][4]))
    axes.set_title(WORST_SHIFT_CURVE, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return [(WORST_SHIFT_CURVE, _png(figure))]


# --- helpers -------------------------------------------------------------------------


def _runs(source) -> list:
    return list(getattr(source, "runs", source))


def _rows(table: pd.DataFrame | None, suite: str, metric: str, *dimensions: str) -> pd.DataFrame:
    """Rows of one suite's metric that have every given dimension (others' rows dropped)."""
    needed = {"suite", "metric", "value", *dimensions}
    if table is None or not needed <= set(table.columns):
        return pd.DataFrame(columns=sorted(needed))
    rows = table[(table["suite"] == suite) & (table["metric"] == metric)]
    for dimension in dimensions:
        rows = rows[rows[dimension].notna()]
    rows = rows[pd.to_numeric(rows["value"], errors="coerce").notna()].copy()
    rows["value"] = rows["value"].astype(float)
    return rows


def _numeric(column: pd.Series) -> pd.Series:
    return pd.to_numeric(column, errors="coerce").astype(float)


def _unit(rows: pd.DataFrame) -> str | None:
    if "unit" not in rows.columns:
        return None
    units = rows["unit"].dropna().astype(str).unique()
    return units[0] if len(units) == 1 else None


def _axis_label(name: str, unit: str | None) -> str:
    return _literal(f"{name} ({unit})" if unit else name)


def _ordered(values: pd.Series) -> list[str]:
    """Distinct values as text, in order of first appearance."""
    return list(dict.fromkeys(values.dropna().astype(str)))


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _literal(text: object) -> str:
    """``text`` as matplotlib draws it, character for character: a ``$`` pair would start
    mathtext (a model named ``$\\foo$`` fails to render; ``a$b$`` loses its dollars). Every
    ``$`` escaped leaves no pair, and matplotlib unescapes them in plain text."""
    return str(text).replace("$", r"\$")


def _legend_label(label: str, index: int) -> str:
    return _literal(f"{label} (reference)" if index == 0 else label)


def _figure(size: tuple[float, float] = SIZE):
    figure = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _category_label(row: pd.Series, first: str, dimensions: Sequence[str]) -> str:
    """The category of a row: its main dimension plus any other dimension it has set."""
    parts = [str(row[first])]
    for dimension in dimensions:
        value = row[dimension]
        if dimension != first and not _missing(value):
            parts.append(f"{dimension} {_plain(value)}")
    return _literal(" ".join(parts))


def _bars_per_category(found, dimension: str, name: str, title: str) -> bytes:
    """Grouped bars: one group per category (corruption, perturbation), one bar per run."""
    series_values = []
    categories: dict[str, None] = {}
    for index, label, rows in found:
        dimensions = [c for c in rows.columns if c not in _FIXED]
        keys = rows.apply(lambda row, d=dimensions: _category_label(row, dimension, d), axis=1)
        means = rows.groupby(keys, sort=False)["value"].mean()
        categories.update(dict.fromkeys(means.index))
        series_values.append((index, label, means))
    order = list(categories)
    figure = _grouped_bars(
        categories=order,
        series=[
            (_legend_label(label, index), [means.get(c, math.nan) for c in order], _colour(index))
            for index, label, means in series_values
        ],
        ylabel=_axis_label(name, _unit(found[0][2])),
        title=title,
        annotate=False,
    )
    return _png(figure)


def _grouped_bars(categories, series, ylabel: str, title: str, annotate: bool) -> Figure:
    width = min(12.0, max(SIZE[0], 0.22 * len(categories) * max(1, len(series)) + 1.5))
    figure, axes = _figure((width, SIZE[1]))
    positions = np.arange(len(categories))
    bar_width = 0.8 / max(1, len(series))
    for number, (name, values, colour) in enumerate(series):
        offset = (number - (len(series) - 1) / 2) * bar_width
        bars = axes.bar(positions + offset, values, bar_width, label=name, color=colour)
        if annotate:
            axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(positions, categories)
    if len(categories) > 4 or sum(len(str(c)) for c in categories) > 60:
        axes.tick_params(axis="x", labelrotation=45, labelsize=7)
        for tick in axes.get_xticklabels():
            tick.set_horizontalalignment("right")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    finite = [v for _, values, _ in series for v in values if math.isfinite(v)]
    highest = max(finite, default=0)
    if highest > 0:
        axes.set_ylim(0, highest * 1.18)  # headroom for the legend and the value labels
    else:
        _floor_at_zero(axes, finite)
    axes.legend(fontsize=8, loc="upper center", ncols=min(4, len(series)), frameon=False)
    return figure


def _floor_at_zero(axes, values) -> None:
    """No negative axis for values that cannot be negative; all of them 0 is said so,
    not drawn as an empty band around zero."""
    finite = [float(v) for v in values if math.isfinite(float(v))]
    if not finite or min(finite) < 0:
        return
    if max(finite) == 0:
        axes.set_ylim(0, 1)
        axes.text(0.5, 0.5, "all values are 0", transform=axes.transAxes, ha="center", color="#555")
    elif axes.get_ylim()[0] < 0:
        axes.set_ylim(bottom=0)


def _legend_entries(grid) -> tuple[list, list[str]]:
    handles, names = [], []
    for axes in grid.flat:
        for handle, name in zip(*axes.get_legend_handles_labels(), strict=True):
            if name not in names:
                handles.append(handle)
                names.append(name)
    return handles, names


def _missing(value) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _plain(value) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No "Software" stamp: the same data gives the same bytes.
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()
