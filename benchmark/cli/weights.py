"""`aabench weights fetch|list`: get the released weights now (for clusters whose compute
nodes are offline) and see which are here and verified. Never imports torch."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer

from aabench.cli.app import JSON, Interrupted, app
from aabench.errors import UserError

weights_app = typer.Typer(
    help="Fetch the released weights now, or list which are here and verified.",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")

TARGET_DIR = typer.Option(
    None,
    "--weights-dir",
    envvar="AABENCH_WEIGHTS_DIR",
    help="Fetch into (list: also look in) this directory instead of the torch.hub cache.",
)
WEIGHTS_URL = typer.Option(
    None,
    "--weights-url",
    help="Base URL of a mirror of the release bucket (or $AABENCH_WEIGHTS_URL).",
)


def _command(name: str):
    """weights_app.command, with Ctrl-C becoming aabench's clean exit 130."""

    def register(function):
        @functools.wraps(function)
        def interruptible(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                raise Interrupted from None

        return weights_app.command(name)(interruptible)

    return register


@_command("fetch")
def fetch(
    names: list[str] = typer.Argument(
        ..., help="Model names (`aabench models`), a family (antialiased, torchvision) or all."
    ),
    weights_dir: str = TARGET_DIR,
    weights_url: str = WEIGHTS_URL,
) -> None:
    """Download and verify (SHA-256 prefix) released weights now: one line per file."""
    from aabench.models.catalogue import select_released, weights_base_url
    from aabench.models.weights import cache_dir

    entries = select_released(names)
    base_url = weights_base_url(weights_url)
    target = Path(weights_dir).expanduser() if weights_dir else cache_dir()
    if target.exists() and not target.is_dir():
        raise UserError(f"--weights-dir {target} is a file: name a directory to fetch into")
    failed = 0
    for entry in entries:
        ok, line = _fetch_one(entry, target, base_url, from_cache=weights_dir is not None)
        failed += not ok
        if ok:
            typer.echo(line)
        else:
            print(f"aabench: error: {line}", file=sys.stderr, flush=True)
    if failed:
        raise typer.Exit(2)


def _fetch_one(entry, target: Path, base_url: str | None, from_cache: bool) -> tuple[bool, str]:
    from aabench.models.catalogue import from_mirror
    from aabench.models.weights import (
        DownloadError,
        cache_dir,
        copy_atomically,
        download,
        expected_hash_prefix,
        verified_sha256,
    )

    file_name = entry.source.file_name
    destination = target / file_name
    prefix = expected_hash_prefix(file_name)
    replaced = ""
    if destination.exists():
        try:
            verified_sha256(destination, prefix)
            return True, f"{file_name}: already present, verified: {destination}"
        except UserError:
            replaced = ", replacing a corrupt copy"
    cached = cache_dir() / file_name
    if from_cache and cached.exists() and cached.resolve() != destination.resolve():
        try:
            verified_sha256(cached, prefix)
        except UserError:
            pass  # a bad cached copy: download instead
        else:
            try:
                copy_atomically(cached, destination)
            except UserError as error:
                return False, f"{file_name}: failed: {error}"
            return True, f"{file_name}: copied from the cache, verified{replaced}: {destination}"
    source = from_mirror(entry.source, base_url)
    try:
        download(source.url, destination, prefix, announce=False)
    except DownloadError as error:
        return False, (
            f"{file_name}: failed: could not download {error.url} ({error.reason}); "
            "fetch it where there is network, or use a mirror of the bucket (--weights-url)"
        )
    except UserError as error:
        return False, f"{file_name}: failed: {error}"
    size = destination.stat().st_size / 1e6
    return True, f"{file_name}: fetched, verified ({size:.1f} MB){replaced}: {destination}"


@_command("list")
def list_weights(
    weights_dir: str = TARGET_DIR,
    as_json: bool = JSON,
) -> None:
    """Every released weights file: its models, where it is, its size, whether it verifies."""
    from rich.console import Console
    from rich.table import Table

    from aabench.models.catalogue import released_weights
    from aabench.models.weights import (
        expected_hash_prefix,
        local_copy,
        verified_sha256,
    )
    from aabench.models.weights import (
        weights_dir as resolve_weights_dir,
    )

    mirror = resolve_weights_dir(weights_dir)
    rows = []
    for entry in released_weights():
        found = local_copy(entry.source, mirror)
        verified = "not present"
        if found is not None:
            try:
                verified_sha256(found, expected_hash_prefix(found))
                verified = "yes"
            except UserError:
                verified = "no"
        rows.append(
            {
                "file": entry.source.file_name,
                "models": list(entry.models),
                "family": entry.family,
                "where": None if found is None else _place(found, mirror),
                "path": None if found is None else str(found),
                "bytes": None if found is None else found.stat().st_size,
                "verified": verified,
                "url": entry.source.url,
                "licence": entry.source.licence,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="aabench released weights (`aabench weights fetch NAME` gets one)")
    for column in ("file", "models", "where", "size", "verified"):
        table.add_column(column, overflow="fold")
    for row in rows:
        size = "-" if row["bytes"] is None else f"{row['bytes'] / 1e6:.1f} MB"
        where = "-" if row["path"] is None else f"{row['where']}: {row['path']}"
        table.add_row(row["file"], ", ".join(row["models"]), where, size, row["verified"])
    Console().print(table)


def _place(path: Path, mirror: Path | None) -> str:
    return "mirror" if mirror is not None and path.parent == mirror else "cache"
