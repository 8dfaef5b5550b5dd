"""`aabench compare`: aligned tables, deltas and paired statistics of runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

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
    from aabench.results.compare import compare_groups, dimension_columns, load_runs

    groups = load_runs(paths)
    if published:
        from aabench.results.published import published_reference

        groups = [[published_reference(published, group[0]), *group] for group in groups]
    elif len(paths) < 2:
        raise UserError("compare needs two or more tables or run directories (or --published)")
    comparison = compare_groups(
        groups,
        allow_mismatch=allow_mismatch,
        metrics=metric or None,
        replicates=bootstrap,
        seed=seed,
    )
    dims = dimension_columns(groups)
    if out is not None:
        from aabench.results.report import write_report

        write_report(comparison, out)
    if as_json:
        typer.echo(comparison.rows.to_json(orient="records", indent=1))
        return
    _print_comparison(comparison, dims, all_rows)
    if out is not None:
        Console().print(f"report: {out}")


def _print_comparison(comparison, dims: list[str], all_rows: bool) -> None:
    console = Console()
    for warning in comparison.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    rows = comparison.rows
    present = [d for d in dims if d in rows]
    if present and not all_rows:
        rows = rows[rows[present].isna().all(axis=1)]
    several = rows["candidate"].nunique() > 1
    table = Table(title=f"reference: {escape(comparison.runs[0].label)}")
    columns = ["suite", "metric", *present, "unit", "reference"]
    columns += ["candidate", "value"] if several else [escape(comparison.runs[1].label)]
    for column in [*columns, "delta", "paired test"]:
        table.add_column(column)
    for _, row in rows.iterrows():
        colour = "green" if row["improved"] else ("red" if row["delta"] != 0 else "white")
        candidate = [escape(row["candidate"])] if several else []
        table.add_row(
            row["suite"],
            row["metric"],
            *[_cell(row.get(d)) for d in present],
            row["unit"],
            f"{row['reference_value']:.2f}",
            *candidate,
            f"{row['candidate_value']:.2f}",
            f"[{colour}]{row['delta']:+.2f}[/]",
            _significance(row),
        )
    console.print(table)


def _cell(value) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else str(value)


def _significance(row) -> str:
    if not _cell(row["test"]):
        return "no paired statistics"
    mark = " *" if row["significant"] else ""
    if row["test"] == "mcnemar":
        return f"McNemar p={row['p_value']:.3g}{mark}"
    return f"95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{mark}"
