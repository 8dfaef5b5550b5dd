"""Clean accuracy: Resize(256) -> CenterCrop(224) (or the model's own sizes); top-1, top-5."""

from __future__ import annotations

from dataclasses import dataclass

from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.models.preprocessing import MAX_SIDE
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)


@dataclass
class AccuracySuite(Suite):
    name = "accuracy"
    description = (
        "Top-1 / top-5 accuracy on the centre crop: the model's resize and crop "
        "(--resize, --crop; 256 and 224 by default)."
    )
    headline = ("top1", "top5")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "top1": Metric("%", True, "top-1 accuracy", outcome=True),
        "top5": Metric("%", True, "top-5 accuracy", outcome=True),
    }

    resize_size: int | None = None  # None: the model's own (256 for ImageNet CNNs)
    crop_size: int | None = None  # None: the model's own (224)

    def __post_init__(self):
        for field in ("resize_size", "crop_size"):
            value = getattr(self, field)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise UserError(f"accuracy {field} must be at least 1 (or none), got {value!r}")
            if value is not None:
                self.whole_parameter(field, maximum=MAX_SIDE)

    def view_size(self, preprocessing) -> int:
        return preprocessing.crop_size if self.crop_size is None else self.crop_size

    def view_size_source(self) -> str | None:
        return None if self.crop_size is None else "crop_size"

    def prepare(self, image, preprocessing):
        resize = preprocessing.resize_size if self.resize_size is None else self.resize_size
        crop = preprocessing.crop_size if self.crop_size is None else self.crop_size
        return resize_and_center_crop(image, resize, crop, preprocessing.interpolation)

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
