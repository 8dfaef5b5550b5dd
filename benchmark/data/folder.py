"""ImageNet val in folder layout: ``<root>/<wnid>/<image>`` (or ``<root>/val/<wnid>/...``).

The file list is sorted and validated up front, so a wrong path or layout fails before
any model runs, and every run records exactly which files it used (the fingerprint).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aabench.data.classes import wnid_to_index
from aabench.errors import UserError

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SAMPLE = "sample"


@dataclass(frozen=True)
class Sample:
    """One image: its path relative to the data root, and its canonical class index."""

    path: str
    label: int

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


def sample_root() -> Path:
    """The embedded sample set shipped inside the package."""
    return Path(str(resources.files("aabench.data").joinpath("sample")))


def open_image_folder(data: str | Path, limit: int | None = None) -> ImageFolder:
    """Scan and validate an ImageNet-style folder (``"sample"``: the embedded set)."""
    root = sample_root() if str(data) == SAMPLE else Path(data).expanduser()
    if not root.exists():
        raise UserError(
            f"data directory {root} does not exist: pass --data with the ImageNet val "
            "folder (<root>/<wnid>/<image>), or --data sample for the embedded sample set"
        )
    if not root.is_dir():
        raise UserError(
            f"--data {root} is a file: pass the ImageNet val directory that holds one "
            "folder per wnid (n01440764, ...)"
        )
    known = wnid_to_index()
    if (root / "val").is_dir() and not any(d.name in known for d in _class_dirs(root)):
        root = root / "val"  # an ImageNet root holding train/ and val/
    class_dirs = _class_dirs(root)
    if not class_dirs:
        raise UserError(
            f"{root} holds no class folders: expected ImageNet val in folder layout "
            "<root>/<wnid>/<image> (e.g. <root>/n01440764/ILSVRC2012_val_00000293.JPEG)"
        )
    unknown = [d.name for d in class_dirs if d.name not in known]
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise UserError(
            f"{root} has {len(unknown)} folders that are not ImageNet wnids ({shown}): "
            "class folders must be named by wnid (n01440764, ...); move other folders out"
        )
    samples = []
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise UserError(
                f"class folder {class_dir} holds no JPEG or PNG images: add its images or "
                "remove the folder"
            )
        label = known[class_dir.name]
        samples += [Sample(p.relative_to(root).as_posix(), label) for p in files]
    if limit is not None:
        samples = spread_subset(samples, limit)
    return ImageFolder(root=root, samples=tuple(samples), limit=limit)


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
