"""The `aabench` command line: parse, call the library, print. No metric is computed here."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

import typer
from rich.console import Console
from rich.table import Table

from benchmark import __version__
from benchmark.errors import UserError

app = typer.Typer(
    help="Measure how shift-invariant and corruption-robust image classifiers are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}  # set by --debug or AABENCH_DEBUG, read by main()
_LATER = {"allow_extra_args": True, "ignore_unknown_options": True}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aabench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = _state["debug"] or debug


@app.command()
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
    weights_dir: str = typer.Option(
        None,
        "--weights-dir",
        envvar="AABENCH_WEIGHTS_DIR",
        help="Local mirror directory, searched by file name before the cache.",
    ),
) -> None:
    """List every built-in model name with its filter size, weights and licence."""
    from benchmark.models.weights import weights_dir as resolve_weights_dir
    from benchmark.models.zoo import available_models, is_cached

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


def _not_yet(command: str) -> None:
    raise UserError(f"`aabench {command}` is not implemented yet in aabench {__version__}")


@app.command(context_settings=_LATER)
def run() -> None:
    """Run benchmark suites on a model and write tidy tables (not implemented yet)."""
    _not_yet("run")


@app.command(context_settings=_LATER)
def compare() -> None:
    """Compare result tables and say whether differences are real (not implemented yet)."""
    _not_yet("compare")


@app.command(context_settings=_LATER)
def gate() -> None:
    """Fail CI when a candidate regresses against a reference (not implemented yet)."""
    _not_yet("gate")


@app.command(context_settings=_LATER)
def suites() -> None:
    """List every suite with its parameters, defaults and metrics (not implemented yet)."""
    _not_yet("suites")


@app.command("make-imagenet-c", context_settings=_LATER)
def make_imagenet_c() -> None:
    """Generate ImageNet-C from ImageNet val in the released layout (not implemented yet)."""
    _not_yet("make-imagenet-c")


@app.command(context_settings=_LATER)
def bench() -> None:
    """Measure forward-only, pipeline and end-to-end images/s (not implemented yet)."""
    _not_yet("bench")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2.

    Typer runs in standalone mode, so usage errors, --help and --version exit through
    SystemExit with click's own codes; only our UserError is translated here.
    """
    _state["debug"] = bool(os.environ.get("AABENCH_DEBUG"))
    try:
        app(args=argv, prog_name="aabench")
    except UserError as error:
        if _state["debug"]:
            raise
        print(f"aabench: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
