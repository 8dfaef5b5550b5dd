"""`aabench prepare-val`: the official flat ImageNet val archive into wnid folders."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from aabench.cli.app import JSON, command
from aabench.errors import UserError


@command("prepare-val")
def prepare_val_command(
    archive_dir: Path = typer.Option(
        None,
        "--archive-dir",
        help="Folder with the val images (ILSVRC2012_val_*.JPEG, or ILSVRC2012_img_val.tar) "
        "and the devkit (ILSVRC2012_devkit_t12/ or ILSVRC2012_devkit_t12.tar.gz).",
    ),
    out: Path = typer.Option(None, "--out", help="Output folder: <out>/<wnid>/<image>."),
    copy: bool = typer.Option(
        False, "--copy", help="Copy the images instead of hard-linking them."
    ),
    partial: bool = typer.Option(
        False,
        "--partial",
        help="Accept an archive with only some of the 50 000 images (classes without "
        "images get no folder).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JSON,
) -> None:
    """Sort the official flat ImageNet val images into <out>/<wnid>/ folders.

    Images: ILSVRC2012_val_00000001.JPEG ... in --archive-dir, else ILSVRC2012_img_val.tar.

    Devkit: ILSVRC2012_devkit_t12/, else ILSVRC2012_devkit_t12.tar.gz, from which it reads

    data/meta.mat and data/ILSVRC2012_validation_ground_truth.txt.

    Hard links when --out is on the same file system, else copies (or --copy).

    All is checked before anything is written; images in place are kept, so a rerun changes nothing.
    """
    from aabench.data.prepare_val import prepare_val

    if archive_dir is None or out is None:
        missing = "--archive-dir" if archive_dir is None else "--out"
        raise UserError(
            f"{missing} is required: aabench prepare-val --archive-dir DIR --out VAL "
            "(DIR holds the val images and the ILSVRC2012 devkit)"
        )
    with _Bar(quiet or as_json) as advance:
        result = prepare_val(archive_dir, out, copy=copy, partial=partial, progress=advance)
    report = {
        "out": str(result.out),
        "images": result.images,
        "linked": result.linked,
        "copied": result.copied,
        "kept": result.kept,
        "classes": result.classes,
        "changed": result.changed,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    if not result.changed:
        typer.echo(f"nothing to do: all {result.images} images are already in {result.out}")
    typer.echo(
        f"{result.images} images in {result.classes} class folders: {result.linked} linked, "
        f"{result.copied} copied, {result.kept} kept"
    )
    typer.echo(f"ImageNet val folder: {result.out} (aabench run --data {result.out})")


class _Bar:
    """A transient progress bar on stderr while images are placed (none if quiet)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        from rich.console import Console

        console = Console(stderr=True)
        self.quiet = self.quiet or not console.is_terminal  # no bar in a log
        if self.quiet:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("[bold]prepare-val"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            transient=True,
        )
        self.bar.__enter__()
        task = self.bar.add_task("prepare-val", total=None)
        return lambda done, total: self.bar.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)
        return False
