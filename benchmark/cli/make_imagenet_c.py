"""`aabench make-imagenet-c`: write ImageNet-C in the released layout."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from aabench.checks import printable
from aabench.cli.app import (
    INTERRUPTED,
    JSON,
    TERMINATED,
    Terminated,
    command,
)
from aabench.errors import UserError


@command("make-imagenet-c")
def make_imagenet_c(
    data: str = typer.Option(None, "--data", help="ImageNet val folder (<root>/<wnid>/<image>)."),
    out: Path = typer.Option(None, "--out", help="Output directory (released layout)."),
    corruptions: str = typer.Option(
        "common",
        "--corruptions",
        help="Comma-separated names, or common, extra, all, noise, blur, weather, digital.",
    ),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Comma-separated, 1..5."),
    limit: int = typer.Option(None, "--limit", help="A deterministic subset of N images."),
    workers: int = typer.Option(
        None, "--workers", help="Processes (default: cores-1; 0: in-process)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every corruption's random draws."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JSON,
) -> None:
    """Generate ImageNet-C from ImageNet val in the released layout (resumable)."""
    from aabench.data.corruptions import parse_corruptions, parse_severities
    from aabench.data.make_imagenet_c import make_imagenet_c as generate

    if data is None:
        raise UserError("--data is required: pass the ImageNet val folder (<root>/<wnid>/<image>)")
    if out is None:
        raise UserError("--out is required: pass the directory to write ImageNet-C into")
    try:
        manifest = generate(
            data,
            out,
            corruptions=parse_corruptions(corruptions),
            severities=parse_severities(severities),
            limit=limit,
            workers=workers,
            seed=seed,
            quiet=quiet or as_json,
        )
    except KeyboardInterrupt as stop:
        raise _stopped(stop, out) from None
    if as_json:
        typer.echo(json.dumps(manifest, indent=1))
        return
    typer.echo(
        f"{out}: {manifest['written']} file(s) written, {manifest['skipped']} kept, "
        f"{manifest['images']} image(s) x {manifest['files'] // max(manifest['images'], 1)} "
        f"cell(s) in {manifest['seconds']:.1f} s ({manifest['images_per_second']:.2f} images/s, "
        f"{manifest['files_per_second']:.1f} files/s)"
    )


def _stopped(stop: KeyboardInterrupt, out: Path) -> SystemExit:
    """Ctrl-C or SIGTERM: one line of this command's own (it has no --resume: the same
    command continues), and the shell's exit code for the signal."""
    from aabench.data.make_imagenet_c import RERUN, WorkersTerminated

    if isinstance(stop, (Terminated, WorkersTerminated)):
        what, code = "terminated (SIGTERM)", TERMINATED
    else:
        what, code = "interrupted", INTERRUPTED
    line = (
        f"aabench: {what}: make-imagenet-c stopped; the files already written under "
        f"{printable(out)} are whole and kept: {RERUN}"
    )
    typer.echo(line, err=True)
    return SystemExit(code)
