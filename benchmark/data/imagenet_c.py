"""The released ImageNet-C layout: ``<corruption>/<severity>/<wnid>/<image>``, or the same
one level down under a category (``noise/gaussian_noise/1/...``), as some tarballs have it.

Released images are read as they are: 224 x 224 JPEGs, never resized again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aabench.data.corruptions import ALL, CATEGORIES, SEVERITIES
from aabench.data.folder import IMAGE_SUFFIXES, ImageFolder, Sample
from aabench.device_decode import read_cell
from aabench.engine import decode
from aabench.errors import UserError

LAYOUT = (
    "<root>/<corruption>/<severity 1-5>/<wnid>/<image> "
    "(or <root>/<category>/<corruption>/<severity>/...)"
)


@dataclass(frozen=True)
class ImageNetCLayout:
    root: Path
    cells: dict[tuple[str, int], Path]  # (corruption, severity) -> directory, present only

    def missing(self, corruptions, severities) -> list[tuple[str, int]]:
        return [(c, s) for c in corruptions for s in severities if (c, s) not in self.cells]


def find_layout(root: str | Path) -> ImageNetCLayout:
    """Every (corruption, severity) directory under ``root``; a clear error if none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise UserError(f"--imagenet-c {root} {what}: point it at ImageNet-C laid out as {LAYOUT}")
    cells = {}
    for corruption in ALL:
        candidates = [root / corruption] + [root / category / corruption for category in CATEGORIES]
        for directory in candidates:
            if directory.is_dir():
                for severity in SEVERITIES:
                    cell = directory / str(severity)
                    if cell.is_dir():
                        cells[(corruption, severity)] = cell
                break
    if not cells:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())[:5]
        raise UserError(
            f"{root} holds no ImageNet-C cells (found folders: {', '.join(found) or 'none'}): "
            f"expected {LAYOUT}"
        )
    return ImageNetCLayout(root=root, cells=cells)


class ReleasedImageNetC:
    """Reads, for one val image, its clean version and its file in every requested cell:
    decoded by PIL, or, for the ``nvjpeg`` decoder, JPEG cells as bytes that the engine
    decodes on the model's device (aabench.device_decode)."""

    def __init__(
        self,
        folder: ImageFolder,
        layout: ImageNetCLayout,
        cells: list[tuple[str, int]],
        decoder: str = "pil",
    ):
        self.val_root = folder.root
        self.layout = layout
        self.cells = cells
        self.read_cell = read_cell if decoder == "nvjpeg" else decode

    def cell_file(self, cell: tuple[str, int], sample: Sample) -> Path:
        """The released file of this image in this cell: same wnid and stem as the val
        file (released names end in .JPEG whatever the val copy's suffix)."""
        relative = Path(sample.file)
        directory = self.layout.cells[cell] / relative.parent
        for name in (relative.name, *(relative.stem + s for s in (".JPEG", ".jpg", ".png"))):
            if (directory / name).is_file():
                return directory / name
        for candidate in sorted(directory.glob(relative.stem + ".*")):
            if candidate.suffix.lower() in IMAGE_SUFFIXES:
                return candidate
        corruption, severity = cell
        raise UserError(
            f"ImageNet-C cell {corruption}/{severity} has no file for {sample.path} "
            f"(looked in {directory}): the set is incomplete; re-extract it, or limit the "
            "run with --set corruptions=... / --set severities=..."
        )

    def images(self, sample: Sample) -> dict:
        images = {"clean": decode(self.val_root / sample.file)}
        for cell in self.cells:
            images[cell] = self.read_cell(self.cell_file(cell, sample))
        return images
