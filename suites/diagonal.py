"""Diagonal shift (Zhang 2019): 33 crops at (o, o), o = 0..32, of the 256 centre crop.

Per offset: accuracy and mean p(true class). Per image, along the diagonal: ``wobble``
(max - min p(true class), users' issue #44) and ``flips`` (how often the top-1 changes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aabench.lazy import lazy_module
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")


@dataclass
class DiagonalSuite(Suite):
    name = "diagonal"
    description = (
        "Diagonal shift: accuracy and p(true class) against offset, wobble, flips. Crops of "
        "the model's crop c at (o, o), o = 0..max_offset, from a (c + max_offset) centre "
        "crop (224 of 256 by default)."
    )
    headline = ("accuracy", "wobble", "flips")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "accuracy": Metric(
            "%", True, "top-1 accuracy at this offset (all offsets if blank)", outcome=True
        ),
        "p_true": Metric("%", True, "mean probability of the true class at this offset"),
        "wobble": Metric("%", False, "mean over images of max - min p(true class)"),
        "flips": Metric("count", False, "mean number of top-1 changes along the diagonal"),
    }
    dimensions = ("offset",)

    max_offset: int = 32

    def __post_init__(self):
        self.whole_parameter("max_offset", minimum=1)

    def check_geometry(self, preprocessing) -> None:
        self.check_side("max_offset", preprocessing.crop_size)
        super().check_geometry(preprocessing)

    def prepare(self, image, preprocessing):
        base = preprocessing.crop_size + self.max_offset
        # Resize(256) -> CenterCrop(256) for the protocol's 224 crops; never a resize
        # smaller than the crop (it would pad the views with black).
        resize = max(preprocessing.resize_size, base)
        return resize_and_center_crop(image, resize, base, preprocessing.interpolation)

    def views_per_image(self) -> int:
        return self.max_offset + 1

    def views(self, image, sample, position, seed):
        crop = image.shape[-1] - self.max_offset
        offsets = np.arange(self.max_offset + 1)
        crops = [image[:, o : o + crop, o : o + crop] for o in offsets]
        return Views(torch.stack(crops), {"offset": offsets})

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        curves = records.sort_values(["sample", "offset"], kind="stable")
        width = self.max_offset + 1
        images = curves["sample"].to_numpy()[::width]
        p_true = curves["p_true"].to_numpy().reshape(-1, width)
        preds = curves["pred"].to_numpy().reshape(-1, width)
        per_offset = []
        for offset, group in curves.groupby("offset", sort=True):
            per_offset += [
                term_frame("accuracy", group["sample"], group["correct"], offset=int(offset)),
                term_frame("p_true", group["sample"], group["p_true"], offset=int(offset)),
            ]
        overall = [
            term_frame("accuracy", curves["sample"], curves["correct"]),
            term_frame("wobble", images, p_true.max(axis=1) - p_true.min(axis=1)),
            term_frame("flips", images, (preds[:, 1:] != preds[:, :-1]).sum(axis=1)),
        ]
        return pd.concat(per_offset + overall, ignore_index=True)
