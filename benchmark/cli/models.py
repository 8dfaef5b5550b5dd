"""`aabench models`: every built-in model with its filter size, weights and licence."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from aabench.cli.app import (
    JSON,
    WEIGHTS_DIR,
    command,
)


@command()
def models(
    as_json: bool = JSON,
    weights_dir: str = WEIGHTS_DIR,
) -> None:
    """List every built-in model name with its filter size, weights and licence."""
    from aabench.models.weights import weights_dir as resolve_weights_dir
    from aabench.models.zoo import available_models, is_cached

    mirror = resolve_weights_dir(weights_dir)
    rows = [
        {
            "name": spec.name,
            "arch": spec.arch,
            "family": spec.family,
            "filter_size": spec.filter_size,
            "weights": spec.weights.file_name if spec.weights else None,
            "cached": is_cached(spec, mirror),
            "licence": spec.weights.licence if spec.weights else None,
            "preprocessing": asdict(spec.preprocessing),
        }
        for spec in available_models()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="aabench models (also: torchvision:<name>, timm:<name>)")
    for column in ("name", "arch", "k", "weights", "cached", "licence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["arch"],
            str(row["filter_size"] or "-"),
            row["weights"] or "- (--weights PATH)",
            "yes" if row["cached"] else "no",
            row["licence"] or "-",
        )
    Console().print(table)
