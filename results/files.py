"""Atomic writes: a reader never sees a half-written table, and an error never leaves one.

Each file is written to a temporary name in its destination directory, flushed to disk,
then renamed over the destination (atomic on POSIX file systems).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from aabench.errors import UserError


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(temporary_path)``, then rename into place.

    A file system error (not writable, disk full) becomes a UserError; no temporary file
    is left behind and an earlier file at ``path`` stays as it was.
    """
    write_together([(path, write)])


def check_writable(directory: Path) -> None:
    """Refuse, creating nothing, a ``directory`` that files could not be written in: below
    a file, or in a directory without write permission."""
    directory = Path(directory)
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        reason = f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    else:
        return
    raise UserError(
        f"cannot write {directory} ({reason}): choose a writable --out directory with free "
        "space; files written before are intact"
    )


def write_together(writes: list[tuple[Path, Callable[[str], None]]]) -> None:
    """Write several files as one: each to a temporary, and only once all are written and
    flushed, rename them all into place.

    A run's table, provenance and samples file describe one run: a failure part way (disk
    full on the last of them) must not leave a new samples file beside an old table.
    """
    temporaries: list[str] = []
    path = None
    try:
        for path, write in writes:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(
                dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
            )
            os.close(handle)
            temporaries.append(temporary)
            # mkstemp creates 0600; give the file the permissions a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            write(temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
        for (path, _), temporary in zip(writes, temporaries, strict=True):
            os.replace(temporary, path)
    except OSError as error:
        raise UserError(
            f"cannot write {path} ({error.strerror or error}): choose a writable --out "
            "directory with free space; files written before are intact"
        ) from error
    finally:
        for temporary in temporaries:
            if os.path.exists(temporary):
                os.unlink(temporary)


def table_writer(table: pd.DataFrame, path: Path) -> Callable[[str], None]:
    if not Path(path).name.endswith(".gz"):
        return lambda temporary: table.to_csv(temporary, index=False)

    def write_gzip(temporary: str) -> None:
        # No time stamp and no (temporary) file name in the gzip header: the same table
        # gives the same bytes, so runs can be compared file by file.
        with (
            open(temporary, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as zipped,
            io.TextIOWrapper(zipped, encoding="utf-8", newline="") as text,
        ):
            table.to_csv(text, index=False)

    return write_gzip


def json_writer(data: dict) -> Callable[[str], None]:
    def write(temporary: str) -> None:
        with open(temporary, "w") as out:
            json.dump(data, out, indent=2, sort_keys=False, default=str)
            out.write("\n")

    return write


def write_table(table: pd.DataFrame, path: Path) -> None:
    write_atomic(path, table_writer(table, path))


def write_json(data: dict, path: Path) -> None:
    write_atomic(path, json_writer(data))
