"""ImageNet-P perturbation sequences, generated from a val image (Hendrycks & Dietterich
2019, with the published parameters).

Base: Resize(256) of the val image (shorter side, bilinear). Photometric perturbations act
on its CenterCrop(224); geometric ones transform the 256 image, then CenterCrop(224), so
content from outside the crop moves in. Frames are uint8 224 x 224 x 3 (rounded); randomness comes
from a generator seeded by (run seed, image, perturbation, difficulty) alone.

Exact (the published definition, up to resampling details): gaussian_noise, shot_noise,
brightness, zoom_blur, translate, rotate, scale, shear. Approximate: tilt (our pinhole
model of the published "perspective tilt"), motion_blur and snow (built from the
``imagecorruptions`` helpers, which blur with a NumPy kernel where the released set used
ImageMagick; the snow layer's parameters are ImageNet-C severity 3's, as the ImageNet-P
ones are not published).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aabench.data.corruptions import CROP, RESIZE
from aabench.errors import UserError
from aabench.lazy import lazy_module

# torchvision (and torch) load on first use: the suite reads this module's names when
# `aabench suites` or an argument check runs, which must not wait for torch.
TF = lazy_module("torchvision.transforms.functional")

GEOMETRIC = ("rotate", "scale", "translate", "tilt")  # the transformations anti-aliasing targets
# The 10 test perturbations of mFR / mT5D, in the paper's order.
TEST = (
    "gaussian_noise",
    "shot_noise",
    "motion_blur",
    "zoom_blur",
    "snow",
    "brightness",
    "translate",
    "rotate",
    "tilt",
    "scale",
)
# Validation perturbations: never inside mFR. Only shear can be generated here; the
# released set's speckle_noise, gaussian_blur and spatter are read from its MP4s.
VALIDATION = ("speckle_noise", "gaussian_blur", "spatter", "shear")
ALL = TEST + VALIDATION
GEOMETRIC_MFR = ("rotate", "scale", "translate")  # mfr_geometric's three
DIFFICULTIES = (1, 2, 3)
NOISE_SIGMA = {1: 0.03, 2: 0.05, 3: 0.08}  # gaussian_noise, on [0, 1]
SHOT_LAMBDA = {1: 300, 2: 120, 3: 60}


def is_noise(perturbation: str) -> bool:
    """Noise sequences compare every frame with the first, clean one."""
    return "noise" in perturbation


def frame_count(perturbation: str) -> int:
    return 41 if perturbation == "translate" else 31


def parse_perturbations(text: str) -> tuple[str, ...]:
    """'geometric' | 'test' | 'all' | a comma-separated list -> names, in ALL's order."""
    groups = {"geometric": GEOMETRIC, "test": TEST, "all": TEST}
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item in groups:
            names += groups[item]
        elif item in ALL:
            names.append(item)
        else:
            raise UserError(
                f"unknown perturbation {item!r}: choose from geometric, all, or {', '.join(ALL)}"
            )
    if not names:
        raise UserError("--set perturbations is empty: use geometric, all, or a list of names")
    return tuple(name for name in ALL if name in names)


def check_difficulty(difficulty: int) -> int:
    if difficulty not in DIFFICULTIES:
        raise UserError(f"difficulty must be 1, 2 or 3, got {difficulty}")
    return difficulty


def sequence_seed(seed: int, key: int, perturbation: str, difficulty: int) -> int:
    """A seed from (run seed, image key, perturbation, difficulty) and nothing else."""
    text = f"aabench-imagenet-p\t{int(seed)}\t{int(key)}\t{perturbation}\t{int(difficulty)}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


@dataclass(frozen=True)
class Base:
    """A val image as the sequences start from it."""

    resized: Image.Image  # Resize(256)
    crop: np.ndarray  # CenterCrop(224) of it, uint8 224 x 224 x 3

    @classmethod
    def of(cls, image: Image.Image) -> Base:
        resized = TF.resize(image.convert("RGB"), RESIZE, interpolation=BILINEAR)
        return cls(resized, np.asarray(TF.center_crop(resized, CROP), dtype=np.uint8))


def generate(
    base: Base, perturbation: str, difficulty: int, rng: np.random.Generator
) -> np.ndarray:
    """The sequence as uint8 frames x 224 x 224 x 3."""
    if perturbation not in GENERATORS:
        raise UserError(
            f"{perturbation} sequences cannot be generated: read them from the released "
            "set with --imagenet-p DIR, or leave it out of --set perturbations"
        )
    frames = GENERATORS[perturbation](base, difficulty, rng)
    assert frames.shape == (frame_count(perturbation), CROP, CROP, 3), frames.shape
    return frames


def _as_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded: a frame that is the clean image up to float
    error (brightness + 0, zoom 1.0) comes back as the clean image."""
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def _gaussian_noise(base: Base, difficulty: int, rng) -> np.ndarray:
    x = base.crop.astype(np.float32) / 255
    noise = rng.standard_normal((30, *x.shape), dtype=np.float32)
    return np.concatenate([base.crop[None], _as_uint8(x + NOISE_SIGMA[difficulty] * noise)])


def _shot_noise(base: Base, difficulty: int, rng) -> np.ndarray:
    x = base.crop.astype(np.float64) / 255
    lam = SHOT_LAMBDA[difficulty]
    noisy = rng.poisson(np.broadcast_to(x * lam, (30, *x.shape))) / lam
    return np.concatenate([base.crop[None], _as_uint8(noisy)])


def _brightness(base: Base, difficulty: int, rng) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(base.crop.astype(np.float64) / 255)
    frames = []
    for i in range(31):
        shifted = hsv.copy()
        shifted[..., 2] = np.clip(shifted[..., 2] + (i - 15) * 0.02, 0, 1)
        frames.append(_as_uint8(hsv2rgb(shifted)))
    return np.stack(frames)


def _zoom_blur(base: Base, difficulty: int, rng) -> np.ndarray:
    from imagecorruptions.corruptions import clipped_zoom

    x = base.crop.astype(np.float32) / 255
    total = x.copy()
    frames = [base.crop]
    for i in range(1, 31):
        total += clipped_zoom(x, 1 + 0.004 * i)[: x.shape[0], : x.shape[1]]
        frames.append(_as_uint8(total / (i + 1)))  # running average of the zooms so far
    return np.stack(frames)


def _motion_blur(base: Base, difficulty: int, rng) -> np.ndarray:
    from imagecorruptions.corruptions import _motion_blur as blur

    x = base.crop.astype(np.float32)
    return np.stack(
        [_as_uint8(blur(x, radius=10, sigma=3, angle=(i - 30) * 4) / 255) for i in range(31)]
    )


def _snow(base: Base, difficulty: int, rng) -> np.ndarray:
    import cv2
    from imagecorruptions.corruptions import _motion_blur as blur
    from imagecorruptions.corruptions import clipped_zoom

    # ImageNet-C severity 3's layer: (loc, scale, zoom, threshold, radius, sigma, blend).
    loc, scale, zoom, threshold, radius, sigma, blend = 0.55, 0.3, 4, 0.9, 12, 8, 0.7
    x = base.crop.astype(np.float32) / 255
    layer = rng.normal(loc, scale, size=x.shape[:2]).astype(np.float32)
    layer = clipped_zoom(layer[..., None], zoom)[: x.shape[0], : x.shape[1], 0]
    layer = np.clip(np.where(layer < threshold, 0, layer), 0, 1)
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    dimmed = blend * x + (1 - blend) * np.maximum(x, grey * 1.5 + 0.5)
    frames = []
    for i in range(31):
        flakes = blur(layer, radius=radius, sigma=sigma, angle=4 * i - 150)
        flakes = (np.round(flakes * 255) / 255)[..., None]
        frames.append(_as_uint8(dimmed + flakes + np.rot90(flakes, k=2)))
    return np.stack(frames)


def _geometric(transform: Callable[[Image.Image, int], Image.Image], count: int):
    def frames(base: Base, difficulty: int, rng) -> np.ndarray:
        return np.stack(
            [np.asarray(TF.center_crop(transform(base.resized, i), CROP)) for i in range(count)]
        )

    return frames


BILINEAR = Image.Resampling.BILINEAR  # torchvision maps it to InterpolationMode.BILINEAR


def _translate(image: Image.Image, i: int) -> Image.Image:
    return TF.affine(image, angle=0.0, translate=[i - 20, 0], scale=1.0, shear=[0.0])


def _rotate(image: Image.Image, i: int) -> Image.Image:
    return TF.rotate(image, float(i - 15), interpolation=BILINEAR)


def _scale(image: Image.Image, i: int) -> Image.Image:
    factor = (2.5 * i + 40) / 100
    return TF.affine(
        image, angle=0.0, translate=[0, 0], scale=factor, shear=[0.0], interpolation=BILINEAR
    )


def _shear(image: Image.Image, i: int) -> Image.Image:
    return TF.affine(
        image, angle=0.0, translate=[0, 0], scale=1.0, shear=[float(i - 15)], interpolation=BILINEAR
    )


def _tilt(image: Image.Image, i: int) -> Image.Image:
    """The image plane turned by the same angle about its vertical and horizontal axes,
    seen by a pinhole camera whose focal length is the image's longer side."""
    angle = math.radians(i - 15)
    width, height = image.size
    focal = float(max(width, height))
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array(
        [[1, 0, 0], [0, c, -s], [0, s, c]]
    )
    corners = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    moved = []
    for x, y in corners:
        point = rotation @ np.array([x - width / 2, y - height / 2, 0.0])
        depth = focal + point[2]
        moved.append([width / 2 + focal * point[0] / depth, height / 2 + focal * point[1] / depth])
    return TF.perspective(image, corners, moved, interpolation=BILINEAR)


GENERATORS: dict[str, Callable[[Base, int, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "brightness": _brightness,
    "translate": _geometric(_translate, 41),
    "rotate": _geometric(_rotate, 31),
    "tilt": _geometric(_tilt, 31),
    "scale": _geometric(_scale, 31),
    "shear": _geometric(_shear, 31),
}
