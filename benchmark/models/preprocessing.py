"""What a model expects of its input: the resize, crop and normalisation it was trained for."""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = 256  # short side, before the centre crop
    crop_size: int = 224
    interpolation: str = "bilinear"

    def to_dict(self) -> dict:
        return asdict(self)
