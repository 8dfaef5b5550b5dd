"""What `aabench run` prints of a finished suite: its summary rows, and why one is missing.

The summary rows of a suite's table are its overall rows (every dimension blank) and its
aggregates over a named group (ImageNet-C's mCE per category): the rows whose only set
dimensions are in ``AGGREGATE_DIMENSIONS``. Per-cell rows (one offset, one corruption
at one severity) stay in the CSV. A row without a value prints its ``note``.
"""

from __future__ import annotations

import json

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aabench.checks import printable
from aabench.results.table import EXTRA_COLUMNS, TIDY_COLUMNS

# Dimensions that name a group a row aggregates over, not one cell of the protocol.
AGGREGATE_DIMENSIONS = ("category",)


def summary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The overall rows and the per-group aggregates of a tidy table (see the module)."""
    dimensions = [c for c in table.columns if c not in (*TIDY_COLUMNS, *EXTRA_COLUMNS)]
    cells = [d for d in dimensions if d not in AGGREGATE_DIMENSIONS]
    if not cells:
        return table
    return table[table[cells].isna().all(axis=1)]


def headline(table: pd.DataFrame) -> list[dict]:
    """The summary rows as JSON-ready dicts: the tidy columns, the aggregate dimensions the
    table has, and ``note`` (why a value is missing; null where there is one)."""
    rows = summary_rows(table)
    groups = [d for d in AGGREGATE_DIMENSIONS if d in rows.columns]
    columns = [*TIDY_COLUMNS, *groups]
    out = rows[columns].copy()
    out["note"] = rows.get("note")
    return json.loads(out.to_json(orient="records"))


def print_summary(result, console: Console | None = None) -> None:
    """The suite's summary table, its file and its throughput."""
    console = console or Console()
    provenance = result.provenance
    rows = headline(result.table)
    groups = [d for d in AGGREGATE_DIMENSIONS if any(row.get(d) is not None for row in rows)]
    notes = any(row["value"] is None and row.get("note") for row in rows)
    # Names the user chose (the model's --name, a weights file, a path) reach the
    # terminal escaped: a newline or an escape sequence in one must not rewrite it.
    table = Table(
        title=_shown(
            f"{provenance['model']} / {provenance['suite']} "
            f"(n={provenance['n']}, weights {result.table['weights'].iloc[0]})"
        )
    )
    for column in ("metric", *groups, "value", "unit"):
        table.add_column(column, no_wrap=True, justify="right" if column == "value" else "left")
    if notes:
        table.add_column("note", ratio=1, overflow="fold")
    for row in rows:
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        cells = [row["metric"], *["" if row.get(g) is None else str(row[g]) for g in groups]]
        cells += [value, row["unit"]]
        if notes:
            cells.append((row.get("note") or "") if row["value"] is None else "")
        table.add_row(*[_shown(cell) for cell in cells])
    console.print(table)
    for warning in provenance.get("warnings") or []:
        console.print(f"[bold yellow]warning:[/] {_shown(warning)}")
    console.print(
        _shown(f"table: {result.paths['table']}  ({provenance['images_per_second']:.1f} img/s)")
    )


def _shown(text: object) -> str:
    """Text for the rich console: control characters escaped, markup taken literally."""
    return escape(printable(text))
