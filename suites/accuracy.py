"""Clean accuracy: Resize(256) -> CenterCrop(224) (or the model's own sizes); top-1, top-5."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from suites.base import Metric, Suite, Views, percent, resize_and_center_crop


@dataclass
class AccuracySuite(Suite):
    name = "accuracy"
    description = "Top-1 / top-5 accuracy on the centre crop."
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "top1": Metric("%", True, "top-1 accuracy"),
        "top5": Metric("%", True, "top-5 accuracy"),
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

    def summarise(self, records: pd.DataFrame) -> list[dict]:
        n = len(records)
        return [
            {"metric": "top1", "value": percent(records["correct"]), "n": n},
            {
                "metric": "top5",
                "value": percent(records["top5_correct"].astype(np.float64)),
                "n": n,
            },
        ]
