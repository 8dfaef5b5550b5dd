"""Clean accuracy: Resize(256) -> CenterCrop(224) (or the model's own sizes); top-1, top-5."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame


@dataclass
class AccuracySuite(Suite):
    name = "accuracy"
    description = "Top-1 / top-5 accuracy on the centre crop."
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "top1": Metric("%", True, "top-1 accuracy", outcome=True),
        "top5": Metric("%", True, "top-5 accuracy", outcome=True),
    }

    resize_size: int | None = None  # None: the model's own (256 for ImageNet CNNs)
    crop_size: int | None = None  # None: the model's own (224)

    def prepare(self, image, preprocessing):
        return resize_and_center_crop(
            image,
            self.resize_size or preprocessing.resize_size,
            self.crop_size or preprocessing.crop_size,
            preprocessing.interpolation,
        )

    def views(self, image, sample, position, seed):
        return Views(image[None], {})

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        return pd.concat(
            [
                term_frame("top1", records["sample"], records["correct"]),
                term_frame("top5", records["sample"], records["top5_correct"]),
            ],
            ignore_index=True,
        )
