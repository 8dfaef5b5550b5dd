"""Checkpoints of a long run, so that `aabench run --resume` continues it.

``<out>/<model>/.partial/<suite>/`` holds ``manifest.json`` (the run's identity: what
must be equal for finished records to belong to this run) and chunks of finished images,
``<first>-<last>.r<rank>.npz``. Every file is written to a temporary name and renamed,
so a run killed at any moment leaves only whole files. Chunks carry the images' global
positions, so any number of ranks can resume any run, and the records they hold join
into exactly the records of an uninterrupted run. Chunks are plain arrays read with
``allow_pickle=False``: data, never code.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from aabench.engine import Part
from aabench.errors import UserError
from aabench.results.files import write_atomic, write_json

PARTIAL = ".partial"
MANIFEST = "manifest.json"
FORMAT = 1
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
        if self.every < 0:
            raise UserError(f"--checkpoint-every must be 0 or more seconds, got {self.every}")


def partial_directory(out: Path, model: str, suite: str) -> Path:
    return Path(out) / model / PARTIAL / suite


def normalised(identity: dict) -> dict:
    """The identity as the manifest stores it (JSON types: lists, not tuples)."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


class PartialRun:
    """The checkpoint directory of one suite of one run, as one rank uses it."""

    def __init__(self, directory: Path, identity: dict, rank: int = 0, session: dict | None = None):
        self.directory = Path(directory)
        self.identity = normalised(identity)
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
        arrays = _arrays(part)
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
        differences = describe_differences(saved.get("identity", {}), self.identity)
        if differences:
            raise UserError(
                f"cannot resume suite {self.identity['suite']} from {self.directory}: "
                f"{differences}; rerun with the options of the unfinished run to continue it, "
                "or pass --restart to discard it"
            )

    def prepare(self, resume: bool, restart: bool) -> list[Part]:
        """The finished parts to keep: none for a fresh run (leftovers are removed)."""
        self.check(resume, restart)
        if restart or not self.exists():
            # Also clears leftovers without a manifest (temporary files of a killed run).
            shutil.rmtree(self.directory, ignore_errors=True)
            return []
        parts = [_load(chunk) for chunk in self.chunks()]
        positions = np.concatenate([p.positions for p in parts]) if parts else np.zeros(0)
        if len(np.unique(positions)) != len(positions):
            raise UserError(
                f"the checkpoints in {self.directory} overlap (an image is in two chunks): "
                "pass --restart to discard them"
            )
        manifest = self._read_manifest()
        self.earlier_sessions = list(manifest.get("sessions", []))
        # This session joins the list now, so a resume interrupted again keeps it too.
        write_json({**manifest, "sessions": [*self.earlier_sessions, self.session]}, self.manifest)
        return parts

    def refuse_if_unfinished(self) -> None:
        """Neither --resume nor --restart: an unfinished run is neither continued nor
        silently thrown away."""
        if self.exists():
            done = sum(len(_load(chunk, positions_only=True)) for chunk in self.chunks())
            raise UserError(
                f"suite {self.identity['suite']} has an unfinished run in {self.directory} "
                f"({done} image(s) done): pass --resume to continue it, or --restart to "
                "discard it"
            )

    def _read_manifest(self) -> dict:
        try:
            saved = json.loads(self.manifest.read_text())
            if saved.get("format") != FORMAT:
                raise ValueError(f"format {saved.get('format')!r}, expected {FORMAT}")
            return saved
        except (OSError, ValueError, AttributeError) as error:
            raise UserError(
                f"checkpoint manifest {self.manifest} is unreadable ({error}): pass --restart "
                "to discard the unfinished run"
            ) from None

    def remove(self) -> None:
        """After the final outputs are written: the checkpoints are no longer needed."""
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.parent.rmdir()  # .partial, once no suite has one


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
    return "; ".join(parts)


def _short(value) -> str:
    if isinstance(value, dict) and {"count", "sha256"} <= set(value):
        return f"{value['count']} images (sha256 {str(value['sha256'])[:12]})"
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _arrays(part: Part) -> dict[str, np.ndarray]:
    records = part.records
    arrays = {
        "positions": np.asarray(part.positions, dtype=np.int64),
        "record_positions": np.asarray(part.record_positions, dtype=np.int64),
        "skipped_positions": np.array(list(part.skipped), dtype=np.int64),
        "skipped_reasons": np.array(list(part.skipped.values()), dtype=str),
        "columns": np.array(list(records.columns), dtype=str),
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
    return arrays


def _savez(path: str, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as out:  # a file object: np.savez would append .npz to a name
        np.savez(out, **arrays)


def _load(path: Path, positions_only: bool = False) -> Part:
    try:
        with np.load(path, allow_pickle=False) as data:
            positions = data["positions"]
            if positions_only:
                return Part(positions, pd.DataFrame(), np.zeros(0, np.int64))
            columns = [str(c) for c in data["columns"]]
            text = {str(c) for c in data["text_columns"]}
            records = pd.DataFrame(
                {
                    column: data[f"column_{i}"].astype(object)
                    if column in text
                    else data[f"column_{i}"]
                    for i, column in enumerate(columns)
                }
            )
            skipped = dict(
                zip(
                    (int(p) for p in data["skipped_positions"]),
                    (str(r) for r in data["skipped_reasons"]),
                    strict=True,
                )
            )
            return Part(positions, records, data["record_positions"], skipped)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise UserError(
            f"checkpoint {path} is damaged ({error}): pass --restart to discard the unfinished run"
        ) from None
