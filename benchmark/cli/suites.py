"""`aabench suites`: every suite with its parameters, defaults and metrics."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.console import Console
from rich.markup import escape

from aabench.cli.app import (
    JSON,
    command,
)


@command("suites")
def list_suites(
    as_json: bool = JSON,
) -> None:
    """List every suite with its parameters, defaults and metrics."""
    from aabench.suites.params import parameter_types
    from aabench.suites.registry import available_suites

    described = []
    for name, cls in available_suites().items():
        defaults = cls().parameters()
        described.append(
            {
                "name": name,
                "description": cls.description,
                "parameters": {
                    key: {"type": _type_name(kind), "default": defaults[key]}
                    for key, kind in parameter_types(cls).items()
                },
                "metrics": {key: asdict(metric) for key, metric in cls.metrics.items()},
                "dimensions": list(cls.dimensions),
            }
        )
    if as_json:
        typer.echo(json.dumps(described, indent=1))
        return
    console = Console()
    for suite in described:
        console.print(f"[bold]{suite['name']}[/bold]: {suite['description']}")
        for key, parameter in suite["parameters"].items():
            console.print(
                escape(f"  --set {key}=  ({parameter['type']}, default {parameter['default']!r})")
            )
        for key, metric in suite["metrics"].items():
            direction = "higher is better" if metric["higher_is_better"] else "lower is better"
            console.print(
                escape(f"  metric {key} [{metric['unit']}, {direction}]: {metric['description']}")
            )


def _type_name(kind: object) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
