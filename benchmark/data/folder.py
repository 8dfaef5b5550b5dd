"""ImageNet val in folder layout: ``<root>/<wnid>/<image>`` (or ``<root>/val/<wnid>/...``).

The file list is sorted and validated up front, so a wrong path or layout fails before
any model runs, and every run records exactly which files it used (the fingerprint).

A sample's ``path`` is text that every output can hold: the file's path relative to the
root, its bytes read as UTF-8, except that a byte that is not UTF-8 is written ``\\xNN``
(two hex digits) and a backslash ``\\\\``. Every name that is UTF-8 without a backslash
(all of ImageNet's) is recorded as it is; the rule is invertible (:func:`file_path`), so a
path in a samples file always leads back to its one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aabench.checks import printable, reading
from aabench.data.classes import wnid_to_index
from aabench.errors import UserError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SAMPLE = "sample"


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the data root, and its canonical class index."""

    path: str  # as recorded (see the module): always valid UTF-8
    label: int

    @property
    def file(self) -> str:
        """The relative path to open, as the file system spells it."""
        return file_path(self.path)

    @property
    def key(self) -> int:
        """A stable per-image number for seeding: the same whatever subset or shard."""
        return zlib.crc32(self.path.encode("utf-8"))


@dataclass(frozen=True)
class ImageFolder:
    root: Path
    samples: tuple[Sample, ...]
    limit: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> dict:
        """Count and SHA-256 of the (path, label) list: equal lists, equal fingerprints."""
        digest = hashlib.sha256()
        for sample in self.samples:
            digest.update(f"{sample.path}\t{sample.label}\n".encode())
        return {"count": len(self.samples), "sha256": digest.hexdigest()}


# An escape of recorded_path: a doubled backslash, or \xNN for one byte.
_ESCAPED = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def recorded_path(relative: str) -> str:
    """A relative file path (undecodable bytes held as surrogates, as ``os.fsdecode``
    gives them) as the text samples record: see the module."""
    chunks = os.fsencode(relative).split(b"\\")
    return "\\\\".join(chunk.decode("utf-8", "backslashreplace") for chunk in chunks)


def file_path(recorded: str) -> str:
    """The inverse of :func:`recorded_path`: the file system's spelling of the path."""
    if "\\" not in recorded:
        return recorded
    raw = _ESCAPED.sub(_unescape, recorded.encode("utf-8"))
    return os.fsdecode(raw)


def _unescape(match: re.Match) -> bytes:
    escape = match[1]
    return b"\\" if escape == b"\\" else bytes([int(escape[1:], 16)])


def sample_root() -> Path:
    """The embedded sample set shipped inside the package."""
    return Path(str(resources.files("aabench.data").joinpath("sample")))


def open_image_folder(data: str | Path, limit: int | None = None) -> ImageFolder:
    """Scan and validate an ImageNet-style folder (``"sample"``: the embedded set)."""
    root = sample_root() if str(data) == SAMPLE else Path(data).expanduser()
    # A folder the user may not list (or that vanishes while scanned) is one line too.
    with reading(root, "data directory"):
        root = _class_root(root)
        class_dirs = _class_dirs(root)
    shown = printable(root)
    if not class_dirs:
        raise UserError(
            f"{shown} holds no class folders: expected ImageNet val in folder layout "
            "<root>/<wnid>/<image> (e.g. <root>/n01440764/ILSVRC2012_val_00000293.JPEG)"
        )
    known = wnid_to_index()
    unknown = [printable(d.name) for d in class_dirs if d.name not in known]
    if unknown:
        listed = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise UserError(
            f"{shown} has {len(unknown)} folders that are not ImageNet wnids ({listed}): "
            "class folders must be named by wnid (n01440764, ...); move other folders out"
        )
    samples = []
    for class_dir in class_dirs:
        with reading(class_dir, "class folder"):
            files = sorted(
                p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
        if not files:
            raise UserError(
                f"class folder {printable(class_dir)} holds no JPEG or PNG images: add its "
                "images or remove the folder"
            )
        label = known[class_dir.name]
        samples += [Sample(recorded_path(p.relative_to(root).as_posix()), label) for p in files]
    if limit is not None:
        samples = spread_subset(samples, limit)
    return ImageFolder(root=root, samples=tuple(samples), limit=limit)


def _class_root(root: Path) -> Path:
    """The folder that holds the class folders: ``root``, or its ``val``."""
    if not root.exists():
        raise UserError(
            f"data directory {printable(root)} does not exist: pass --data with the ImageNet "
            "val folder (<root>/<wnid>/<image>), or --data sample for the embedded sample set"
        )
    if not root.is_dir():
        raise UserError(
            f"--data {printable(root)} is a file: pass the ImageNet val directory that holds "
            "one folder per wnid (n01440764, ...)"
        )
    known = wnid_to_index()
    if (root / "val").is_dir() and not any(d.name in known for d in _class_dirs(root)):
        return root / "val"  # an ImageNet root holding train/ and val/
    return root


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def spread_subset(samples: list[Sample], limit: int) -> list[Sample]:
    """The first ``limit`` samples taken round-robin over classes, in the original order.

    Deterministic, and spread evenly: with 50 images per class and limit 1000, one
    image of every class rather than all of the first 20 classes.
    """
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    by_class: dict[int, list[int]] = {}
    for position, sample in enumerate(samples):
        by_class.setdefault(sample.label, []).append(position)
    chosen: list[int] = []
    rank = 0
    while len(chosen) < min(limit, len(samples)):
        for positions in by_class.values():
            if rank < len(positions) and len(chosen) < limit:
                chosen.append(positions[rank])
        rank += 1
    return [samples[position] for position in sorted(chosen)]
