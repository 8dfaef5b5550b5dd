"""`aabench gate`: exit 1 when a candidate regresses beyond the rules."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from aabench import checks
from aabench.cli.app import (
    command,
)


@command("gate")
def gate_command(
    reference: str = typer.Option(..., "--reference", help="Reference table or run directory."),
    candidate: str = typer.Option(..., "--candidate", help="Candidate table or run directory."),
    rules: Path = typer.Option(None, "--rules", help="Rules file (TOML); default: README's."),
    summary: Path = typer.Option(None, "--summary", help="Write a Markdown summary here."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Gate runs of different protocols or data anyway."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap replicates."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Exit 1 when the candidate regresses beyond the rules, 0 when it does not."""
    from aabench.results.compare import compare_groups, dimension_columns, load_runs

    # numpy's generator refuses a negative seed with a traceback: the shared check says so.
    seed = checks.seed(seed)
    from aabench.results.files import write_atomic
    from aabench.results.gate import (
        DEFAULT_RULES,
        apply_rules,
        load_rules,
        row_line,
        summary_markdown,
    )

    rule_list = load_rules(rules) if rules else list(DEFAULT_RULES)
    groups = load_runs([reference, candidate], every_reference_suite=True)
    comparison = compare_groups(
        groups, allow_mismatch=allow_mismatch, replicates=bootstrap, seed=seed
    )
    dims = dimension_columns(groups)
    result = apply_rules(comparison, rule_list, dims)
    if summary is not None:
        text = summary_markdown(result, dims)
        write_atomic(summary, lambda temporary: Path(temporary).write_text(text))
    console = Console()
    for warning in [*comparison.warnings, *comparison.unpaired]:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    excused = result.not_significant
    if result.passed:
        console.print(f"gate passed: {len(result.checked)} metric(s) within the rules")
    else:
        console.print(f"[bold red]gate failed[/]: {len(result.failures)} regression(s)")
        for _, row in result.failures.iterrows():
            console.print(escape(f"  {row_line(row)}; rule {row['rule']}"))
    if len(excused):
        console.print(f"passed because not significant: {len(excused)} row(s) beyond the limit")
        for _, row in excused.iterrows():
            console.print(escape(f"  {row_line(row)}; rule {row['rule']}"))
    if not result.passed:
        raise typer.Exit(1)
