"""Released ImageNet-C JPEGs decoded on the model's device (nvJPEG on a GPU).

With the ``nvjpeg`` decoder the DataLoader workers read each released JPEG cell as
bytes instead of decoding it with PIL. The main process decodes the JPEGs of a whole
loader batch in one ``torchvision.io.decode_jpeg`` call on the model's device, and they
join, there, the views the workers decoded: the clean centre crop, and any cell file
that is not an RGB or grey JPEG (released names may be PNG; CMYK converts differently).

On the CPU the same call runs libjpeg inside torchvision, which gives PIL's pixels
exactly on the generator's JPEGs (tests/benchmark/test_device_decode.py), so the path
is tested without a GPU. nvJPEG may differ from libjpeg by a level or so in some pixels:
the decoder is recorded in the provenance and `compare` refuses to mix decoders.

A file the batched call rejects fails the whole call; the files of that loader batch
are then decoded one at a time, and one that the device rejects is decoded by PIL on the CPU as
the ``pil`` decoder would: a file PIL cannot decode either is a bad image, with the
reason the ``pil`` decoder gives.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from aabench.engine import BadImage, decode  # the engine imports this module lazily
from aabench.suites.base import Views

JPEG_MAGIC = b"\xff\xd8"  # start of image: every JPEG begins so, whatever its name
# Modes whose conversion to RGB is the same in libjpeg (torchvision, nvJPEG) as in PIL.
DEVICE_MODES = ("RGB", "L")


@dataclass(frozen=True)
class JPEGFile:
    """A released cell file read as bytes, to be decoded on the model's device."""

    path: Path
    data: bytes
    size: tuple[int, int]  # (width, height), from the header


def read_cell(path: Path) -> Image.Image | JPEGFile:
    """The file as JPEG bytes for the device, or decoded here by PIL (as the ``pil``
    decoder does) when it is not a JPEG the device decodes as PIL does, or cannot be
    read: the ``pil`` decoder's own error then says why."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return decode(path)
    if not data.startswith(JPEG_MAGIC):
        return decode(path)
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: no pixels
            mode, size = image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return decode(path)  # which says, as the pil decoder does, what is wrong
    if mode not in DEVICE_MODES:
        return decode(path)
    return JPEGFile(Path(path), data, size)


@dataclass
class EncodedCells:
    """One image's JPEG cells as bytes. Every file's bytes are in one tensor, so a worker
    hands them to the main process as one shared-memory block, not one per file."""

    data: torch.Tensor  # uint8: the files one after the other
    offsets: np.ndarray  # file i is data[offsets[i]:offsets[i + 1]]
    index: np.ndarray  # file i is view index[i] of the image
    paths: list[str]

    @staticmethod
    def of(files: list[tuple[int, JPEGFile]]) -> EncodedCells:
        """The (view index, file) pairs of one image."""
        blobs = [file.data for _, file in files]
        offsets = np.cumsum([0, *map(len, blobs)])
        data = torch.frombuffer(bytearray(b"".join(blobs)) or bytearray(1), dtype=torch.uint8)
        return EncodedCells(
            data=data,
            offsets=offsets,
            index=np.array([index for index, _ in files], dtype=np.int64),
            paths=[str(file.path) for _, file in files],
        )

    def __len__(self) -> int:
        return len(self.paths)

    def files(self) -> list[torch.Tensor]:
        return [self.data[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)]


@dataclass
class EncodedViews(Views):
    """An image's views of which ``encoded`` are still JPEG bytes: ``images`` holds the
    others, in view order; the engine decodes the rest on the device (decode_items)."""

    encoded: EncodedCells = field(default_factory=lambda: EncodedCells.of([]))


def decode_items(items: list[dict], device: torch.device) -> list[dict]:
    """A loader batch with every item's JPEG cells decoded on ``device`` into its views
    (all of an item's views then on the device, in view order); an item with a file
    that cannot be decoded becomes a bad-image item, as a worker reports one."""
    encoded = [item["encoded"] for item in items if item.get("encoded") is not None]
    if not encoded:
        return items
    decoded = _decode_batch([file for cells in encoded for file in cells.files()], device)
    finished, start = [], 0
    for item in items:
        cells = item.get("encoded")
        if cells is None:
            finished.append(item)
            continue
        try:
            if decoded is None:
                mine = _decode_one_by_one(cells, device)
            else:
                mine = decoded[start : start + len(cells)]
        except BadImage as error:
            finished.append(
                {"position": item["position"], "error": error.reason, "path": str(error.path)}
            )
        else:
            finished.append(_with_views(item, mine, device))
        start += len(cells)
    return finished


def _decode_batch(files: list[torch.Tensor], device: torch.device) -> list[torch.Tensor] | None:
    """Every file decoded in one call; None if the call rejected one of them."""
    if not files:
        return []
    try:
        return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def _decode_one_by_one(cells: EncodedCells, device: torch.device) -> list[torch.Tensor]:
    decoded = []
    for file, path in zip(cells.files(), cells.paths, strict=True):
        try:
            decoded.append(decode_jpeg(file, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            # PIL's verdict: its pixels if it decodes the file, else the bad image the
            # pil decoder reports (BadImage, with PIL's reason).
            pixels = np.asarray(decode(Path(path)), dtype=np.uint8)
            decoded.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).to(device))
    return decoded


def _with_views(item: dict, decoded: list[torch.Tensor], device: torch.device) -> dict:
    """The item with all its views on ``device``: the worker's and the decoded ones, each
    at its place in the image's view order."""
    cells = item["encoded"]
    on_host = iter(item["views"].to(device))
    at = dict(zip(cells.index.tolist(), decoded, strict=True))
    total = len(item["views"]) + len(decoded)
    views = torch.stack([at[i] if i in at else next(on_host) for i in range(total)])
    return {**{k: v for k, v in item.items() if k != "encoded"}, "views": views}
