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
    family: str = typer.Option(
        None,
        "--family",
        help="Only antialiased, torchvision, or timm-aa (timm's anti-aliased models: needs timm).",
    ),
) -> None:
    """List every built-in model name with its filter size, weights and licence."""
    from aabench.errors import UserError
    from aabench.models.catalogue import timm_antialiased_models
    from aabench.models.weights import weights_dir as resolve_weights_dir
    from aabench.models.zoo import available_models, is_cached

    families = ("antialiased", "torchvision", "timm-aa")
    if family is not None and family not in families:
        raise UserError(f"--family {family!r} is not one of {', '.join(families)}")
    mirror = resolve_weights_dir(weights_dir)
    if family == "timm-aa":
        specs = timm_antialiased_models()
    else:
        specs = [s for s in available_models() if family is None or s.family == family]
    rows = [
        {
            "name": spec.name,
            "arch": spec.arch,
            "family": spec.family,
            "filter_size": spec.filter_size,
            "weights": spec.weights.file_name if spec.weights else None,
            "cached": is_cached(spec, mirror),
            "licence": spec.weights.licence if spec.weights else None,
            "preprocessing": asdict(spec.preprocessing) if spec.family != "timm-aa" else None,
        }
        for spec in specs
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    title = "aabench models (also: torchvision:<name>, timm:<name>, python:FILE.py:FACTORY)"
    if family == "timm-aa":
        title = "timm's anti-aliased models (weights and preprocessing: timm's own)"
    table = Table(title=title)
    for column in ("name", "arch", "k", "weights", "cached", "licence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["arch"],
            str(row["filter_size"] or "-"),
            row["weights"] or ("timm's" if family == "timm-aa" else "- (--weights PATH)"),
            "yes" if row["cached"] else "no",
            row["licence"] or ("see timm's model card" if family == "timm-aa" else "-"),
        )
    Console().print(table)
