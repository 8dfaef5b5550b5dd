"""One-pixel diagonal shifts (Azulay & Weiss, JMLR 2019; code AzulEye/CNN-Failures).

For each image, ``pairs`` (8) consecutive pairs (x_c, x_{c+1}) related by a one-pixel
diagonal shift (+1 row, +1 column), reference §4:

- ``top1_change`` = mean 1[argmax f(x_c) != argmax f(x_{c+1})] (their P(top-1 change));
- ``mac`` = mean |p(y | x_c) - p(y | x_{c+1})|, y = argmax f(x_c), p the softmax;
- ``accuracy``: top-1 on the first view of each pair.

Protocols (``mode``):

- ``crop`` (default, their s <= 1.1 conditions): the model's crop c (224) at (o, o),
  o = 0..pairs, of a (c + 10) = 234 square (no padding: the shift reveals real content).
  Their 234 square is a RandomResizedCrop(234, scale=(s, s)); here it is Resize(234) ->
  CenterCrop(234), their s = 1 condition without the aspect jitter, so it is seeded by
  nothing and reproducible.
- ``embed`` (their "Translation - Embedding - Black", s > 1.1): the image, resized to
  int(c / scale) (172 for scale 1.3; 1.6 -> 140, 1.9 -> 117) square, pasted into a c x c
  canvas at (o, o), o = centre - 4 .. centre + 4 (centre = (c - size - 1) // 2).
  The canvas is **true black in pixel space** (0 before normalisation). Their code filled
  the canvas with zeros *after* ImageNet normalisation, so their background was the
  normalisation mean colour (grey), not black; we do not reproduce that quirk.

Views are fixed (no random draw), so a run does not depend on seed or batch size; their
1001 shuffled images become whatever set is evaluated (``--limit``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame
from aabench.suites.fractional_shift import reference_reduction

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")

PROTOCOLS = ("crop", "embed")
CROP_MARGIN = 10  # 234 = 224 + 10


@dataclass
class PixelShiftSuite(Suite):
    name = "pixel-shift"
    description = (
        "One-pixel diagonal shifts (Azulay & Weiss 2019): P(top-1 change) and mean "
        "absolute change of p(top-1) over 8 consecutive 1-px diagonal pairs per image. "
        "mode=crop: 224 crops of a 234 square at (o, o), o = 0..8; mode=embed: "
        "the image resized to int(224/scale) on a pixel-black 224 canvas."
    )
    headline = ("top1_change", "mac", "accuracy")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "top1_change": Metric("%", False, "pairs whose two views differ in top-1"),
        "mac": Metric(
            "%", False, "mean |p(y | x_c) - p(y | x_c+1)|, y = the top-1 of the pair's first"
        ),
        "accuracy": Metric("%", True, "top-1 accuracy on the first view of each pair"),
    }

    mode: str = "crop"
    pairs: int = 8
    scale: float = 1.3  # embed: the image is int(crop / scale) pixels square

    def __post_init__(self):
        if self.mode not in PROTOCOLS:
            raise UserError(
                f"pixel-shift mode must be one of {', '.join(PROTOCOLS)}, got {self.mode!r}"
            )
        self.whole_parameter("pairs")
        if not 1 <= self.pairs <= CROP_MARGIN:
            raise UserError(f"pixel-shift pairs must be in 1..{CROP_MARGIN}, got {self.pairs}")
        self.finite_parameter("scale")
        if self.scale <= 1.0:
            raise UserError(f"pixel-shift scale must be above 1, got {self.scale}")

    def check_geometry(self, preprocessing) -> None:
        if self.mode == "embed":
            self.embed_offsets(preprocessing.crop_size)  # the shifts fit the canvas
        super().check_geometry(preprocessing)

    def embed_size(self, canvas: int) -> int:
        return int(canvas / self.scale)

    def embed_offsets(self, canvas: int) -> np.ndarray:
        size = self.embed_size(canvas)
        centre = (canvas - size - 1) // 2
        first = centre - self.pairs // 2
        offsets = np.arange(first, first + self.pairs + 1)
        if offsets[0] < 0 or offsets[-1] + size > canvas:
            raise UserError(
                f"pixel-shift: a {size} px image does not fit {self.pairs} shifts in a "
                f"{canvas} px canvas; use a larger scale"
            )
        return offsets

    def prepare(self, image, preprocessing):
        crop = preprocessing.crop_size
        if self.mode == "crop":
            base = crop + CROP_MARGIN
            return resize_and_center_crop(image, base, base, preprocessing.interpolation)
        size = self.embed_size(crop)
        canvas = torch.zeros(3, crop, crop, dtype=torch.uint8)  # pixel black
        canvas[:, :size, :size] = resize_and_center_crop(
            image, size, size, preprocessing.interpolation
        )
        return canvas  # the image at (0, 0); views move it

    def views_per_image(self) -> int:
        return self.pairs + 1

    def views(self, image, sample, position, seed):
        count = self.pairs + 1
        if self.mode == "crop":
            crop = image.shape[-1] - CROP_MARGIN
            offsets = np.arange(count)
            views = [image[:, o : o + crop, o : o + crop] for o in offsets]
        else:
            canvas = image.shape[-1]
            size = self.embed_size(canvas)
            offsets = self.embed_offsets(canvas)
            views = []
            for o in offsets:
                view = torch.zeros_like(image)
                view[:, o : o + size, o : o + size] = image[:, :size, :size]
                views.append(view)
        index = np.arange(count)
        meta = {"offset": offsets, "index": index, "ref": np.maximum(index - 1, 0)}
        return Views(torch.stack(views), meta)

    def device_reduction(self, module):
        return reference_reduction()

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        ordered = records.sort_values(["sample", "index"], kind="stable")
        width = self.pairs + 1
        images = ordered["sample"].to_numpy()[::width]
        pred = ordered["pred"].to_numpy().reshape(-1, width)
        correct = ordered["correct"].to_numpy().astype(bool).reshape(-1, width)
        p_top = ordered["p_top"].to_numpy().reshape(-1, width)
        p_ref = ordered["p_ref"].to_numpy().reshape(-1, width)
        pair_sample = np.repeat(images, self.pairs)
        return pd.concat(
            [
                term_frame("top1_change", pair_sample, (pred[:, 1:] != pred[:, :-1]).ravel()),
                term_frame("mac", pair_sample, np.abs(p_top[:, :-1] - p_ref[:, 1:]).ravel()),
                term_frame("accuracy", pair_sample, correct[:, :-1].ravel()),
            ],
            ignore_index=True,
        )
