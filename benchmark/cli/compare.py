"""`aabench compare`: aligned tables, deltas and paired statistics of runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aabench import checks
from aabench.cli.app import (
    JSON,
    command,
)
from aabench.errors import UserError


@command("compare")
def compare_command(
    paths: list[str] = typer.Argument(
        ..., help="Tables (<suite>.csv) or run directories; the first is the reference."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write a report: report.html or .md."),
    metric: list[str] = typer.Option([], "--metric", help="Only these metrics (repeatable)."),
    published: str = typer.Option(
        None, "--published", help="Compare against published numbers (e.g. antialiased-cnns)."
    ),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Compare runs of different protocols or data anyway."
    ),
    all_rows: bool = typer.Option(
        False, "--all-rows", help="Also print rows broken down by a dimension (per offset...)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap replicates."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = JSON,
) -> None:
    """Compare runs: aligned values, deltas, and whether each difference is real."""
    from aabench.results.compare import compare_groups, dimension_columns, pair_runs

    # numpy's generator refuses a negative seed with a traceback: the shared check says so.
    seed = checks.seed(seed)

    pairing = pair_runs(paths)
    groups, unpaired = pairing.groups, list(pairing.unpaired)
    if published:
        from aabench.results.published import with_published

        groups, skipped = with_published(published, groups)
        unpaired += skipped
    elif len(paths) < 2:
        raise UserError("compare needs two or more tables or run directories (or --published)")
    comparison = compare_groups(
        groups,
        allow_mismatch=allow_mismatch,
        metrics=metric or None,
        replicates=bootstrap,
        seed=seed,
        unpaired=unpaired,
    )
    dims = dimension_columns(groups)
    if out is not None:
        from aabench.results.report import write_report

        write_report(comparison, out)
    if as_json:
        typer.echo(comparison_json(comparison))
        return
    _print_comparison(comparison, dims, all_rows)
    if out is not None:
        Console().print(f"report: {out}")


def comparison_json(comparison) -> str:
    """The rows (with ``note``, ``n``, Holm columns and the verdict) as a JSON list."""
    from aabench.results.verdict import verdict

    rows = comparison.rows.assign(verdict=[verdict(row) for _, row in comparison.rows.iterrows()])
    return rows.to_json(orient="records", indent=1)


def _print_comparison(comparison, dims: list[str], all_rows: bool, console=None) -> None:
    console = console or Console()
    for warning in [*comparison.warnings, *comparison.unpaired]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    console.print(comparison_table(comparison, dims, all_rows))


def comparison_table(comparison, dims: list[str], all_rows: bool) -> Table:
    """The terminal table. Short columns never wrap or cut their headers; the verdict
    column takes the room that is left and wraps."""
    import pandas as pd

    from aabench.results.verdict import verdict

    rows = comparison.rows
    present = [d for d in dims if d in rows]
    if present and not all_rows:
        rows = rows[rows[present].isna().all(axis=1)]
        present = []
    several = rows["candidate"].nunique() > 1
    title = f"reference: {escape(comparison.runs[0].label)}"
    if not several and len(comparison.runs) > 1:
        title += f"; candidate: {escape(comparison.runs[1].label)}"
    one_suite = rows["suite"].nunique() == 1
    if one_suite and len(rows):
        title = f"{escape(str(rows['suite'].iloc[0]))}: {title}"
    table = Table(title=title)
    columns = [
        *([] if one_suite else ["suite"]),
        "metric",
        *present,
        "unit",
        "reference",
        "candidate",
    ]
    columns += ["value"] if several else []
    numeric = {"reference", "value", "delta"} | (set() if several else {"candidate"})
    for column in [*columns, "delta"]:
        # Short columns never wrap or cut their headers; candidate labels (several) wrap.
        table.add_column(
            column,
            no_wrap=not (several and column == "candidate"),
            min_width=len(column),
            justify="right" if column in numeric else "left",
        )
    table.add_column("verdict", ratio=1, min_width=12, overflow="fold")
    for _, row in rows.iterrows():
        delta = row["delta"]
        if pd.isna(delta):
            delta_text = "-"
        else:
            colour = "green" if row["improved"] else ("red" if delta != 0 else "white")
            delta_text = f"[{colour}]{delta:+.2f}[/]"
        candidate = [escape(row["candidate"])] if several else []
        table.add_row(
            *([] if one_suite else [escape(row["suite"])]),
            escape(row["metric"]),
            *[escape(_cell(row.get(d))) for d in present],
            escape(row["unit"]),
            _value(row["reference_value"]),
            *candidate,
            _value(row["candidate_value"]),
            delta_text,
            escape(_significance(row) if _cell(row["test"]) else verdict(row)),
        )
    return table


def _value(value) -> str:
    import pandas as pd

    return "-" if value is None or pd.isna(value) else f"{value:.2f}"


def _cell(value) -> str:
    """A dimension value as written: 16, not 16.0 (a CSV reader's float)."""
    import pandas as pd

    if value is None or pd.isna(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _significance(row) -> str:
    """The verdict with its test: better / worse / no significant difference (...), and
    a * on a difference the (Holm-adjusted, within its family) test finds real."""
    from aabench.results.verdict import verdict

    text = verdict(row)
    flag = row["significant"]
    return f"{text} *" if _cell(flag) and bool(flag) else text
