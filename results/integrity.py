"""What `compare` and `gate` trust in a run's files, and how each is checked on load.

`aabench run` writes three files per suite: the tidy table (``<suite>.csv``), its
provenance (``<suite>.json``) and the per-view samples (``<suite>.samples.csv.gz``).
Every value in the table is the suite's summary of the samples (``Suite.summarise``,
rebuilt with the run's parameters from the provenance), so a table is only believed
when that summary, recomputed here, gives the same rows, values and ``n``:

- its cells parse: numbers in ``value`` and ``n``, true / false in ``higher_is_better``,
  a metric on every row, no ±inf;
- its ``run_id``, ``model`` and ``suite`` are those of its provenance (the files of one
  run, not of two);
- each metric is one of its suite's, with that metric's direction (the gate reads
  ``higher_is_better`` to decide what a regression is);
- one row per (metric, dimensions);
- with a provenance and samples beside it: every value and ``n`` as the samples give
  them (to 6 significant digits: the samples keep float32 probabilities), no value the
  samples do not give, and none missing. A table with NaN (a blank) where its samples
  give a number is refused; a blank row the samples do not give claims nothing and stays
  (its note says why it has no value).

A file that fails a check is refused with one line naming the file, the row and what
differs; no option accepts it (``--allow-mismatch`` is about runs that measured different
things, not about files that contradict themselves): rerun the suite. A table without
samples or provenance beside it cannot be recomputed; it is compared with a warning
saying so (:attr:`RunData.unchecked`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from aabench.checks import printable
from aabench.errors import UserError

# The samples keep float32 outputs, written to the shortest text that reads back as the
# same float32 (each within 6e-8 of it, relatively): a value recomputed from them agrees
# with the run's to about 1e-7 relatively, and, where it is a difference of such outputs
# (diagonal's wobble), to about 1e-7 of the metric's scale (100 for a %).
RELATIVE_TOLERANCE = 1e-6
ABSOLUTE_TOLERANCE = 1e-6  # times the metric's scale
RERUN = "rerun the suite to write its files again"
BOOLEANS = {"true": True, "false": False}
# Provenance entries comparing reads, and the JSON types each may have.
PROVENANCE_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str,),
    "model": (str,),
    "suite": (str,),
    "dimensions": (list,),
    "parameters": (dict, type(None)),
    "protocol": (dict, type(None)),
    "preprocessing": (dict, type(None)),
    "data": (dict,),
    "warnings": (list, type(None)),
    "normalization": (dict, type(None)),
}
JSON_NAMES = {dict: "an object", list: "a list", str: "a string", type(None): "null"}


def row_name(index: int) -> str:
    """Rows as a reader counts them in the file: the first below the header is row 1."""
    return f"row {index + 1}"


# --- cells -------------------------------------------------------------------------------


def check_cells(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The table with ``value`` and ``n`` as numbers and ``higher_is_better`` as
    booleans; a cell that is none of these is refused, naming its row."""
    table = table.reset_index(drop=True)
    for column in ("suite", "metric"):
        blank = table.index[table[column].isna()]
        if len(blank):
            raise UserError(
                f"{printable(path)}, {row_name(blank[0])}: no {column}; every row of a table "
                f"written by `aabench run` names its {column}: {RERUN}"
            )
    table["value"] = _numbers(table["value"], "value", path)
    infinite = table.index[np.isinf(table["value"].to_numpy())]
    if len(infinite):
        raise UserError(
            f"{printable(path)}, {row_name(infinite[0])}: value "
            f"{table['value'].iloc[infinite[0]]} is not finite; aabench writes finite values "
            f"or none: {RERUN}"
        )
    table["n"] = _counts(table["n"], path)
    table["higher_is_better"] = _booleans(table["higher_is_better"], path)
    return table


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    parsed = pd.to_numeric(column, errors="coerce")
    bad = column.index[parsed.isna() & column.notna()]
    if len(bad):
        raise UserError(
            f"{printable(path)}, {row_name(bad[0])}: {name} {printable(column.iloc[bad[0]])!r} "
            f"is not a number: {RERUN}"
        )
    return parsed.astype(float)


def _counts(column: pd.Series, path: Path) -> pd.Series:
    numbers = _numbers(column, "n", path)
    bad = numbers.index[numbers.notna() & ((numbers < 0) | (numbers % 1 != 0))]
    if len(bad):
        raise UserError(
            f"{printable(path)}, {row_name(bad[0])}: n {numbers.iloc[bad[0]]:g} is not a "
            f"count of images: {RERUN}"
        )
    return numbers if numbers.isna().any() else numbers.astype(np.int64)


def _booleans(column: pd.Series, path: Path) -> pd.Series:
    """Only true and false (any case) are booleans: "maybe", 1 or a blank are not."""

    def boolean(value):
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str):
            return BOOLEANS.get(value.strip().lower())
        return None

    parsed = [boolean(value) for value in column]
    bad = [index for index, value in enumerate(parsed) if value is None]
    if bad:
        cell = column.iloc[bad[0]]
        shown = "blank" if pd.isna(cell) else repr(printable(cell))
        raise UserError(
            f"{printable(path)}, {row_name(bad[0])}: higher_is_better is {shown}, not True "
            f"or False: {RERUN}"
        )
    return pd.Series(parsed, index=column.index, dtype=bool)


# --- provenance ----------------------------------------------------------------------------


def check_provenance(document, path: Path) -> dict:
    """A provenance that is a JSON object whose entries have the types comparing reads."""
    if not isinstance(document, dict):
        raise UserError(
            f"provenance {printable(path)} is not a JSON object (it holds "
            f"{_json_name(document)}): it is not what `aabench run` wrote; {RERUN}"
        )
    for key, types in PROVENANCE_TYPES.items():
        if key in document and not isinstance(document[key], types):
            expected = " or ".join(JSON_NAMES[t] for t in types)
            raise UserError(
                f"provenance {printable(path)}: {key} is {_json_name(document[key])}, not "
                f"{expected}; {RERUN}"
            )
    dimensions = document.get("dimensions", [])
    if not all(isinstance(name, str) for name in dimensions):
        raise UserError(
            f"provenance {printable(path)}: dimensions must be column names (strings); {RERUN}"
        )
    return document


def _json_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return JSON_NAMES.get(type(value), type(value).__name__)


# --- one run's files against each other ----------------------------------------------------


def check_run(run) -> None:
    """Refuse a run (``RunData``) whose table disagrees with its provenance, its suite's
    metrics or its samples; set ``run.unchecked`` to why its values could not be
    recomputed (None: they were)."""
    from aabench.suites.registry import available_suites

    _check_identity(run)
    suite_class = available_suites().get(run.suite)
    if suite_class is not None:
        _check_metrics(run, suite_class)
    dimensions = list(suite_class.dimensions) if suite_class else run.dimensions
    _check_unique(run, dimensions)
    run.unchecked = _why_unchecked(run, suite_class)
    if run.unchecked is None:
        _check_against_samples(run, suite_class)


def _why_unchecked(run, suite_class) -> str | None:
    shown = printable(run.path)
    if suite_class is None:
        return f"suite {printable(run.suite)} is not installed, so {shown} is not recomputed"
    if run.provenance is None:
        return f"{shown} has no provenance beside it, so its values are not recomputed"
    if run.samples_path is None:
        return f"{shown} has no samples file beside it, so its values are not recomputed"
    return None


def _check_identity(run) -> None:
    """The table and the provenance beside it describe the same run."""
    if run.provenance is None:
        return
    for key in ("run_id", "model", "suite"):
        recorded = run.provenance.get(key)
        if recorded is None:
            continue
        found = [str(value) for value in run.table[key].dropna().unique()]
        if found and found != [recorded]:
            provenance = printable(run.path.with_suffix(".json"))
            raise UserError(
                f"{printable(run.path)} and its provenance {provenance} "
                f"are of different runs: the table's {key} is {printable(', '.join(found))}, the "
                f"provenance's {printable(recorded)}; keep the files of one run together, or "
                f"{RERUN}"
            )


def _check_metrics(run, suite_class) -> None:
    """Each metric is its suite's, in its suite's direction (the gate reads it)."""
    for index, metric, higher in zip(
        run.table.index, run.table["metric"], run.table["higher_is_better"], strict=True
    ):
        known = suite_class.metrics.get(str(metric))
        if known is None:
            raise UserError(
                f"{printable(run.path)}, {row_name(index)}: {printable(metric)!r} is not a "
                f"metric of suite {run.suite} (its metrics are "
                f"{', '.join(suite_class.metrics)}): {RERUN}"
            )
        if bool(higher) != known.higher_is_better:
            raise UserError(
                f"{printable(run.path)}, {row_name(index)}: higher_is_better is {bool(higher)} "
                f"but {metric} is {'higher' if known.higher_is_better else 'lower'}-is-better "
                f"in suite {run.suite}: the table was edited; {RERUN}"
            )


def _check_unique(run, dimensions: list[str]) -> None:
    keys = row_keys(run.table, dimensions)
    first: dict[str, int] = {}
    for index, key in zip(run.table.index, keys, strict=True):
        if key in first:
            raise UserError(
                f"{printable(run.path)}: {row_name(first[key])} and {row_name(index)} are both "
                f"{printable(key)}; a table holds one row per metric and dimension: {RERUN}"
            )
        first[key] = index


def _check_against_samples(run, suite_class) -> None:
    """Every row as the suite summarises the samples, with the run's parameters."""
    samples_path = printable(run.samples_path)
    try:
        suite = suite_class.from_provenance(run.provenance)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise UserError(
            f"provenance {printable(run.path.with_suffix('.json'))}: its parameters do not make "
            f"a {run.suite} suite ({_reason(error)}); {RERUN}"
        ) from error
    samples = run.samples()
    try:
        rows = suite.summarise(samples)
    except KeyError as error:
        raise UserError(
            f"samples file {samples_path} lacks the column {printable(error.args[0])!r} that "
            f"suite {run.suite} records: {RERUN}"
        ) from error
    except (TypeError, ValueError, AttributeError, IndexError) as error:
        raise UserError(
            f"samples file {samples_path} does not hold what suite {run.suite} records "
            f"({_reason(error)}): {RERUN}"
        ) from error
    dimensions = list(suite_class.dimensions)
    # Only rows with a value are compared: a row without one claims nothing, and which
    # of them a run writes depends on what its data lacked (released ImageNet-C cells),
    # which the samples do not say. A blank where the samples give a number is refused.
    expected = {
        key: (row["value"], row["n"])
        for key, row in zip(row_keys(pd.DataFrame(rows), dimensions), rows, strict=True)
        if not pd.isna(row["value"])
    }
    table = run.table
    for index, key, metric, value, n in zip(
        table.index,
        row_keys(table, dimensions),
        table["metric"],
        table["value"],
        table["n"],
        strict=True,
    ):
        where = f"{printable(run.path)}, {row_name(index)} ({printable(key)})"
        if key not in expected:
            if pd.isna(value):
                continue
            raise UserError(
                f"{where}: the table says {_shown(value)}, its samples {samples_path} give no "
                f"such value: the table was edited, or its files come from different runs; "
                f"{RERUN}"
            )
        want_value, want_n = expected.pop(key)
        scale = suite_class.metrics[str(metric)].scale
        if not _same_value(value, want_value, scale) or not _same_count(n, want_n):
            raise UserError(
                f"{where}: the table says {_shown(value)} (n={_shown(n)}), its samples "
                f"{samples_path} give {_shown(want_value)} (n={want_n}): the table was edited, "
                f"or its files come from different runs; {RERUN}"
            )
    if expected:
        key, (value, _) = next(iter(expected.items()))
        raise UserError(
            f"{printable(run.path)} lacks the row {printable(key)} that its samples "
            f"{samples_path} give ({_shown(value)}): the table was edited, or its files come "
            f"from different runs; {RERUN}"
        )


def _same_value(recorded: float, recomputed: float, scale: float) -> bool:
    if pd.isna(recorded) or pd.isna(recomputed):
        return bool(pd.isna(recorded) and pd.isna(recomputed))
    return math.isclose(
        float(recorded),
        float(recomputed),
        rel_tol=RELATIVE_TOLERANCE,
        abs_tol=ABSOLUTE_TOLERANCE * scale,
    )


def _same_count(recorded, recomputed: int) -> bool:
    return not pd.isna(recorded) and int(recorded) == int(recomputed)


def _shown(value) -> str:
    return "no value" if pd.isna(value) else f"{float(value):.10g}"


def _reason(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return printable(lines[0]) if lines else type(error).__name__


# --- keys ----------------------------------------------------------------------------------


def dimension_text(value) -> str:
    """A dimension value as written: 16, not 16.0 (a CSV reader's float); "" if blank."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def dimension_key(frame: pd.DataFrame, dims: list[str]) -> pd.Series:
    """One string per row naming its dimension values ("" where blank): a join key that
    does not depend on how a CSV reader typed a half-empty column (16, 16.0, <NA>)."""
    if not dims:
        return pd.Series([""] * len(frame), index=frame.index, dtype=object)
    parts = [
        frame[dim].map(dimension_text) if dim in frame else pd.Series("", index=frame.index)
        for dim in dims
    ]
    return pd.Series(["|".join(values) for values in zip(*parts, strict=True)], index=frame.index)


def row_keys(frame: pd.DataFrame, dims: list[str]) -> list[str]:
    """ "top1", "accuracy [offset=3]": a row's metric and its set dimensions, as a reader
    would name it."""
    if frame.empty:
        return []
    keys = []
    for index, metric in zip(frame.index, frame["metric"], strict=True):
        set_dims = [
            f"{dim}={text}"
            for dim in dims
            if dim in frame and (text := dimension_text(frame.at[index, dim]))
        ]
        keys.append(f"{metric} [{', '.join(set_dims)}]" if set_dims else str(metric))
    return keys
