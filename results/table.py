"""The tidy result table: one row per measured value, the same columns for every suite."""

from __future__ import annotations

import pandas as pd

# Columns that are not dimensions although a table may carry them.
EXTRA_COLUMNS = ("note", "source")
TIDY_COLUMNS = (
    "run_id",
    "model",
    "weights",
    "suite",
    "metric",
    "value",
    "unit",
    "higher_is_better",
    "n",
)


def tidy_table(
    rows: list[dict],
    *,
    run_id: str,
    model: str,
    weights: str,
    suite,
) -> pd.DataFrame:
    """Metric rows from a suite's summarise() -> the tidy table, columns in fixed order.

    The suite's dimension columns follow the fixed ones; they are empty (NA) on rows
    they do not qualify.
    """
    records = []
    for row in rows:
        metric = suite.metrics[row["metric"]]
        record = {
            "run_id": run_id,
            "model": model,
            "weights": weights,
            "suite": suite.name,
            "metric": row["metric"],
            "value": float(row["value"]),
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            "n": int(row["n"]),
        }
        for dimension in suite.dimensions:
            record[dimension] = row.get(dimension)
        record["note"] = row.get("note")
        records.append(record)
    # "note" says why a row has no value (a metric whose cells the run lacks); it is
    # there only when some row needs it.
    has_note = any(record["note"] for record in records)
    columns = [*TIDY_COLUMNS, *suite.dimensions, *(["note"] if has_note else [])]
    table = pd.DataFrame(records, columns=columns)
    for dimension in suite.dimensions:
        # Integer dimensions stay integers (16, not 16.0) on rows where they are blank too.
        # Fractional ones (worst-shift's half-pixel radii) stay floats.
        values = table[dimension]
        if pd.api.types.is_numeric_dtype(values) and (values.dropna() % 1 == 0).all():
            table[dimension] = values.astype("Int64")
    return table
