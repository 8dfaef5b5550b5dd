"""Checkpoints of a long run, so that `aabench run --resume` continues it.

``<out>/<model>/.partial/<suite>/`` holds ``manifest.json`` (the run's identity: what
must be equal for finished records to belong to this run) and chunks of finished images,
``<first>-<last>.r<rank>.npz``. Every file is written to a temporary name and renamed,
so a run killed at any moment leaves only whole files. Chunks carry the images' global
positions, so any number of ranks can resume any run, and the records they hold join
into exactly the records of an uninterrupted run. Chunks are plain arrays read with
``allow_pickle=False``: data, never code. Each chunk also carries the SHA-256 of the
run's identity and a checksum of its arrays: a chunk of another run (another seed), or one
edited or damaged after it was written, is refused on resume instead of joining the result.

While a run evaluates a suite, its rank 0 holds an ``flock`` on ``.partial/<suite>.lock``
(SuiteLock): a second run on the same ``--out`` is refused, naming the first, instead of
mixing its chunks into the first's. The kernel releases the lock when the process ends,
SIGKILL included, so a lock is never stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import socket
import sys
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from aabench.checks import finite, printable
from aabench.engine import Part
from aabench.errors import UserError
from aabench.results.files import write_atomic, write_json

PARTIAL = ".partial"
MANIFEST = "manifest.json"
FORMAT = 2  # 2: chunks carry the identity's SHA-256 and a checksum of their arrays
LOCK_SUFFIX = ".lock"
# A run that only peeks at a lock (check_unfinished) holds it for an instant: the run
# starting that suite then tries again rather than being refused by the peek.
LOCK_ATTEMPTS = 10
LOCK_RETRY_SECONDS = 0.02
DEFAULT_EVERY = 60.0  # seconds between checkpoints: at most a minute of work is lost

# Identity keys as the user knows them, for "its <what> was ..., this run's is ...".
_LABELS = {
    "model": "model",
    "weights_sha256": "weights (SHA-256)",
    "suite": "suite",
    "data": "data (file list)",
    "data_source": "data source",
    "seed": "seed",
    "amp": "--amp",
    "aabench": "aabench version",
}


@dataclass
class CheckpointOptions:
    resume: bool = False
    restart: bool = False
    every: float = DEFAULT_EVERY  # seconds; 0: after every loader batch

    def __post_init__(self):
        if self.resume and self.restart:
            raise UserError(
                "--resume and --restart exclude each other: --resume continues an unfinished "
                "run, --restart discards it"
            )
        # NaN and inf would silently turn checkpoints off (nothing is ever that late).
        self.every = finite(self.every, "--checkpoint-every", minimum=0)


def partial_directory(out: Path, model: str, suite: str) -> Path:
    return Path(out) / model / PARTIAL / suite


def normalised(identity: dict) -> dict:
    """The identity as the manifest stores it (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def identity_sha256(identity: dict) -> str:
    """What every chunk of one run carries: the SHA-256 of its normalised identity."""
    text = json.dumps(normalised(identity), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class PartialRun:
    """The checkpoint directory of one suite of one run, as one rank uses it."""

    def __init__(self, directory: Path, identity: dict, rank: int = 0, session: dict | None = None):
        self.directory = Path(directory)
        self.identity = normalised(identity)
        self.identity_sha256 = identity_sha256(self.identity)
        self.rank = rank
        # How this session runs (device, batch size, ranks): not part of the identity, a
        # resumed run may use another GPU, but recorded so the provenance says so.
        self.session = normalised(session or {})
        self.earlier_sessions: list[dict] = []

    @property
    def manifest(self) -> Path:
        return self.directory / MANIFEST

    def exists(self) -> bool:
        return self.manifest.is_file()

    def chunks(self) -> list[Path]:
        return sorted(self.directory.glob("[0-9]*-[0-9]*.r*.npz"))

    # -- writing (every rank) ------------------------------------------------------------

    def save(self, part: Part) -> None:
        """Checkpoint finished images (Hooks.save)."""
        if not self.exists():
            # Written with the first chunk, not at the start: a run stopped before any
            # image finished leaves nothing to resume or refuse.
            manifest = {"format": FORMAT, "identity": self.identity, "sessions": [self.session]}
            write_json(manifest, self.manifest)
        name = f"{part.positions[0]:09d}-{part.positions[-1]:09d}.r{self.rank}.npz"
        arrays = _arrays(part, self.identity_sha256)
        write_atomic(self.directory / name, lambda temporary: _savez(temporary, arrays))

    # -- reading and deciding (rank 0) ---------------------------------------------------

    def check(self, resume: bool, restart: bool) -> None:
        """Refuse to discard an unfinished run without --restart, or to resume one whose
        identity differs from this run's."""
        if restart or not self.exists():
            return
        if not resume:
            self.refuse_if_unfinished()
        saved = self._read_manifest()
        differences = describe_differences(saved["identity"], self.identity)
        if differences:
            raise UserError(
                f"cannot resume suite {self.identity['suite']} from "
                f"{printable(self.directory)}: {differences}; rerun with the options of the "
                "unfinished run to continue it, or pass --restart to discard it"
            )

    def prepare(self, resume: bool, restart: bool, samples: list | None = None) -> list[Part]:
        """The finished parts to keep: none for a fresh run (leftovers are removed).
        ``samples`` (the run's file list), when given, is what the chunks' positions and
        record paths are checked against."""
        self.check(resume, restart)
        if restart or not self.exists():
            # Also clears leftovers without a manifest (temporary files of a killed run).
            shutil.rmtree(self.directory, ignore_errors=True)
            return []
        parts = self._load_chunks(samples)
        manifest = self._read_manifest()
        self.earlier_sessions = list(manifest["sessions"])
        # This session joins the list now, so a resume interrupted again keeps it too.
        write_json({**manifest, "sessions": [*self.earlier_sessions, self.session]}, self.manifest)
        return parts

    def verify(self, samples: list | None = None) -> None:
        """Refuse now, before any suite runs, checkpoints that --resume would refuse."""
        if self.exists():
            self._load_chunks(samples)

    def _load_chunks(self, samples: list | None) -> list[Part]:
        """Every chunk, each checked (checksum, identity, consistency) before it is kept."""
        parts, first = [], None
        for chunk in self.chunks():
            arrays = _read_arrays(chunk)
            _verify(chunk, arrays, self.identity_sha256, samples)
            # A chunk of skipped images only has no records, so no columns to compare.
            columns = _column_types(arrays) if len(arrays["record_positions"]) else None
            if first is None and columns is not None:
                first = (chunk, columns)
            elif columns is not None and columns != first[1]:
                raise _refused(
                    chunk,
                    f"its record columns {_names(columns)} differ from those of "
                    f"{printable(first[0].name)}, {_names(first[1])}",
                )
            parts.append(_part(arrays))
        positions = np.concatenate([p.positions for p in parts]) if parts else np.zeros(0)
        if len(np.unique(positions)) != len(positions):
            raise UserError(
                f"the checkpoints in {printable(self.directory)} overlap (an image is in two "
                "chunks): pass --restart to discard them"
            )
        return parts

    def refuse_if_unfinished(self) -> None:
        """Neither --resume nor --restart: an unfinished run is neither continued nor
        silently thrown away."""
        if self.exists():
            done = sum(len(_read_arrays(chunk)["positions"]) for chunk in self.chunks())
            raise UserError(
                f"suite {self.identity['suite']} has an unfinished run in "
                f"{printable(self.directory)} ({done} image(s) done): pass --resume to "
                "continue it, or --restart to discard it"
            )

    def _read_manifest(self) -> dict:
        try:
            saved = json.loads(self.manifest.read_text())
        except OSError as error:
            problem = error.strerror or type(error).__name__
        except ValueError as error:  # not JSON (truncated), or not UTF-8
            problem = f"not valid JSON: {error}"
        else:
            problem = _manifest_problem(saved)
        if problem:
            raise UserError(
                f"checkpoint manifest {printable(self.manifest)} is unreadable ({problem}): "
                "pass --restart to discard the unfinished run"
            )
        return saved

    def remove(self) -> None:
        """After the final outputs are written: the checkpoints are no longer needed."""
        # The manifest first: a removal cut short leaves chunks without a manifest, which
        # the next run clears, never an unfinished run that is in fact finished.
        with contextlib.suppress(OSError):
            self.manifest.unlink()
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.parent.rmdir()  # .partial, once no suite has one


def _manifest_problem(saved) -> str | None:
    """What is wrong with a parsed manifest (hand-edited, or of another version)."""
    if not isinstance(saved, dict):
        return f"a JSON {type(saved).__name__}, not an object"
    form = saved.get("format")
    if type(form) is not int or form != FORMAT:
        return f"format {_short(form)}; this aabench reads format {FORMAT}"
    if not isinstance(saved.get("identity"), dict):
        return f"its identity is {_short(saved.get('identity'))}, not an object"
    sessions = saved.get("sessions")
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        return f"its sessions are {_short(sessions)}, not a list of objects"
    return None


class SuiteLock:
    """Who evaluates a suite into ``<out>/<model>/.partial/<suite>`` now: an ``flock`` on
    ``<suite>.lock`` beside the directory, holding the holder's pid, host, start and command.

    The lock file is removed by its holder while still locked, so whoever locks a file
    checks it is still the one at the path (else its holder removed it meanwhile and the
    lock is on a file nobody else will open)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory.with_name(self.directory.name + LOCK_SUFFIX)
        self._descriptor: int | None = None
        self._created: list[Path] = []  # directories acquire made, deepest first

    def __enter__(self) -> SuiteLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def acquire(self) -> None:
        holder = None
        try:
            self._make_directories()
            for _ in range(LOCK_ATTEMPTS):
                descriptor = _open_lock(self.path, create=True)
                if not _try_lock(descriptor, fcntl.LOCK_EX):
                    holder = _read_holder(descriptor)
                    os.close(descriptor)
                    time.sleep(LOCK_RETRY_SECONDS)
                    continue
                if _same_file(descriptor, self.path):
                    self._descriptor = descriptor
                    _write_holder(descriptor)
                    return
                os.close(descriptor)
        except OSError as error:
            raise UserError(
                f"cannot create the lock {printable(self.path)} ({error.strerror or error}): "
                "choose a writable --out directory"
            ) from None
        raise self._busy(holder)

    def release(self) -> None:
        if self._descriptor is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()  # while still locked: see acquire's check
        os.close(self._descriptor)  # which releases the lock
        self._descriptor = None
        # .partial once no suite has anything there, and <out>/<model> if this run made
        # it and wrote nothing there (it failed), so a failed run leaves nothing behind.
        for directory in [self.path.parent, *self._created]:  # the deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _make_directories(self) -> None:
        missing = self.path.parent
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def refuse_if_held(self) -> None:
        """Refuse now, creating nothing, if another run holds the lock (a glance: the
        run takes the lock itself when it reaches the suite)."""
        try:
            descriptor = _open_lock(self.path, create=False)
        except OSError:
            return  # no lock file: nobody holds it
        try:
            if not _try_lock(descriptor, fcntl.LOCK_SH):
                raise self._busy(_read_holder(descriptor))
        finally:
            os.close(descriptor)  # which releases the glance's shared lock

    def _busy(self, holder: dict | None) -> UserError:
        model_directory = self.directory.parent.parent
        return UserError(
            f"suite {printable(self.directory.name)} in {printable(model_directory)} is being "
            f"run by another aabench process ({_describe_holder(holder)}), which holds "
            f"{printable(self.path)}: wait for it to finish, or stop it (its finished images "
            "are kept: --resume continues it), or pass another --out"
        )


def _open_lock(path: Path, create: bool) -> int:
    flags = os.O_RDWR | (os.O_CREAT if create else 0)
    try:
        return os.open(path, flags, 0o666)
    except PermissionError:  # another user's lock file: locking needs no write access
        return os.open(path, os.O_RDONLY)


def _try_lock(descriptor: int, kind: int) -> bool:
    try:
        fcntl.flock(descriptor, kind | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
        return False


def _write_holder(descriptor: int) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": _command_line(),
    }
    with contextlib.suppress(OSError):  # a read-only lock file: the lock still holds
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)


def _read_holder(descriptor: int) -> dict | None:
    try:
        holder = json.loads(os.pread(descriptor, 65536, 0))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe_holder(holder: dict | None) -> str:
    if not holder:
        return "it has not written its pid yet"
    text = f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return printable(text)


def _command_line() -> str:
    text = shlex.join(["aabench", *sys.argv[1:]])
    return text if len(text) <= 160 else text[:157] + "..."


def describe_differences(saved: dict, current: dict) -> str:
    """'its seed was 0, this run's is 1; ...' for every identity key that differs."""
    parts = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        if key == "parameters" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    parts.append(
                        f"its {name} was {old.get(name)!r}, this run's is {new.get(name)!r}"
                    )
            continue
        label = _LABELS.get(key, key)
        parts.append(f"its {label} was {_short(old)}, this run's is {_short(new)}")
    return printable("; ".join(parts))


def _short(value) -> str:
    if isinstance(value, dict) and {"count", "sha256"} <= set(value):
        return f"{value['count']} images (sha256 {str(value['sha256'])[:12]})"
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- chunks --------------------------------------------------------------------------


def _arrays(part: Part, identity: str) -> dict[str, np.ndarray]:
    records = part.records
    arrays = {
        "positions": np.asarray(part.positions, dtype=np.int64),
        "record_positions": np.asarray(part.record_positions, dtype=np.int64),
        "skipped_positions": np.array(list(part.skipped), dtype=np.int64),
        "skipped_reasons": np.array(list(part.skipped.values()), dtype=str),
        "columns": np.array(list(records.columns), dtype=str),
        "identity_sha256": np.array(identity),
    }
    text_columns = []
    for i, column in enumerate(records.columns):
        values = records[column].to_numpy()
        if values.dtype == object:
            # Text (paths, corruption names): stored as fixed-width unicode, which needs
            # no pickling; any other object would not come back as it was.
            if not all(isinstance(value, str) for value in values):
                raise TypeError(f"record column {column!r} holds objects other than text")
            values = values.astype(str)
            text_columns.append(column)
        arrays[f"column_{i}"] = values
    arrays["text_columns"] = np.array(text_columns, dtype=str)
    arrays["checksum"] = np.array(_checksum(arrays))
    return arrays


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of every array but the checksum: names, types, shapes and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        if name == "checksum":
            continue
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as out:  # a file object: np.savez would append .npz to a name
        np.savez(out, **arrays)


_REQUIRED = (
    "positions",
    "record_positions",
    "skipped_positions",
    "skipped_reasons",
    "columns",
    "text_columns",
    "identity_sha256",
    "checksum",
)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a chunk, read as data (never unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise _damaged(path, printable(reason)) from None
    missing = [name for name in _REQUIRED if name not in arrays]
    if missing:
        raise _damaged(path, f"it has no {', '.join(missing)}")
    return arrays


def _verify(path: Path, arrays: dict[str, np.ndarray], identity: str, samples) -> None:
    """Refuse a chunk edited or damaged after it was written, one of another run, or one
    whose positions do not fit this run's file list."""
    if str(arrays["checksum"]) != _checksum(arrays):
        raise _refused(path, "it was changed after it was written (its checksum does not match)")
    if str(arrays["identity_sha256"]) != identity:
        raise _refused(
            path,
            "it belongs to another run (its identity, e.g. the seed, differs from this run's)",
        )
    problem = _inconsistency(arrays, samples)
    if problem:
        raise _refused(path, problem)


def _inconsistency(arrays: dict[str, np.ndarray], samples) -> str | None:
    positions, records = arrays["positions"], arrays["record_positions"]
    columns = [str(c) for c in arrays["columns"]]
    if positions.ndim != 1 or positions.dtype.kind != "i" or (np.diff(positions) <= 0).any():
        return "its positions are not ascending whole numbers"
    if (
        samples is not None
        and len(positions)
        and not 0 <= positions[0] <= positions[-1] < len(samples)
    ):
        return f"its positions go beyond this run's {len(samples)} images"
    if not np.isin(records, positions).all() or (np.diff(records) < 0).any():
        return "its records' positions are not its images'"
    if not np.isin(arrays["skipped_positions"], positions).all():
        return "its skipped images are not among its images"
    for i, column in enumerate(columns):
        values = arrays.get(f"column_{i}")
        if values is None or values.shape != records.shape:
            return f"its record column {column!r} is missing or has the wrong length"
    if samples is not None and "sample" in columns:
        paths = arrays[f"column_{columns.index('sample')}"]
        if any(str(path) != samples[p].path for path, p in zip(paths, records, strict=True)):
            return "its records' image paths do not match their positions in this run's data"
    return None


def _column_types(arrays: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    return [(str(c), arrays[f"column_{i}"].dtype.kind) for i, c in enumerate(arrays["columns"])]


def _names(columns: list[tuple[str, str]]) -> str:
    return _short([name for name, _ in columns])


def _part(arrays: dict[str, np.ndarray]) -> Part:
    columns = [str(c) for c in arrays["columns"]]
    text = {str(c) for c in arrays["text_columns"]}
    records = pd.DataFrame(
        {
            column: arrays[f"column_{i}"].astype(object)
            if column in text
            else arrays[f"column_{i}"]
            for i, column in enumerate(columns)
        }
    )
    skipped = dict(
        zip(
            (int(p) for p in arrays["skipped_positions"]),
            (str(r) for r in arrays["skipped_reasons"]),
            strict=True,
        )
    )
    return Part(arrays["positions"], records, arrays["record_positions"], skipped)


def _damaged(path: Path, reason: str) -> UserError:
    return UserError(
        f"checkpoint {printable(path)} is damaged ({reason}): pass --restart to discard the "
        "unfinished run"
    )


def _refused(path: Path, reason: str) -> UserError:
    return UserError(
        f"checkpoint {printable(path)} is refused: {reason}; pass --restart to discard the "
        "unfinished run"
    )
