"""ImageNet-P perturbation sequences, generated from a val image by the recipe of the
release (hendrycks/robustness ``ImageNet-P/create_p/make_imagenet_p.py``), step for step.

Base: Resize(256) of the val image (shorter side, bilinear). Photometric perturbations act
on its CenterCrop(224); geometric ones transform the 256 image, then CenterCrop(224), so
content from outside the crop moves in. Frames are uint8 224 x 224 x 3, converted from
floats by truncation as the release did (``ToPILImage``'s ``mul(255).byte()``,
``np.uint8(255 * x)``), never by rounding. Randomness comes from a generator seeded by
(run seed, image, perturbation, difficulty) alone.

Exact (each frame is the published script's, computed the same way from the same base
image: 0 levels apart on the embedded sample images): translate, rotate (torchvision
``affine(angle=i - 15)``: clockwise), scale, shear (``affine(shear=i - 15)``: along x
only), tilt (the script's camera: f = sqrt(w^2 + h^2), M = P2 T RX RY P1,
``cv2.warpPerspective``), zoom_blur (running float32 mean of CenterCrop(affine(img256,
scale=1 + 0.004 j))), brightness, gaussian_noise, shot_noise. The noises' random numbers
cannot be the release's (it drew from torch's and NumPy's global RNGs); their
distribution, arithmetic and truncation are.

motion_blur and snow: the release blurred with ImageMagick's ``MotionBlurImage`` (through
Wand), which this project does not depend on; :func:`motion_blur` reimplements that
filter from its definition. Against ImageMagick 6.9.11-60 Q16 (``convert -motion-blur``)
on the five embedded sample images (radius 10 sigma 3 and radius 14 sigma 4, 4 angles
each, and a grey snow layer at 18 angles) it differs by 0 levels on every pixel; the
``imagecorruptions`` NumPy blur used before differs from ImageMagick by up to 1 level on
0.2-5 % of the pixels. The release's own ImageMagick version is not known: one whose
16-to-8-bit step rounds instead of truncating would differ by at most 1 level.

Not the release's: the image is converted to RGB before Resize(256) (the release resized,
then converted), which matters only for palette and CMYK files. The release then encoded
each sequence as H.264 MP4: ``encode="h264"`` makes the same round trip
(:func:`aabench.data.imagenet_p.h264_round_trip`); frames that skip the codec are close to
the released videos, not equal to them.

GENERATOR_VERSION is part of a generated run's protocol: 1 was the earlier generator
(rotate reversed, shear on both axes, its own tilt camera, zoom of the 224 crop,
ImageNet-C snow, rounded frames); `aabench compare` refuses to pair runs of different
versions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

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
GENERATOR_VERSION = 2  # 2: the release's recipe (see the module docstring)
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


def _truncate(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 as the release: clipped, times 255, truncated (its
    ``ToPILImage`` is ``mul(255).byte()``; its NumPy frames are ``np.uint8(255 * x)``)."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _to_tensor(image) -> np.ndarray:
    """torchvision's ToTensor as H x W x C: uint8 / 255 in float32."""
    return np.asarray(image, dtype=np.uint8).astype(np.float32) / 255


def _gaussian_noise(base: Base, difficulty: int, rng) -> np.ndarray:
    # Release: ToPILImage(clamp(x + sigma * randn_like(x), 0, 1)), x = ToTensor(crop).
    x = _to_tensor(base.crop)
    noise = rng.standard_normal((30, *x.shape), dtype=np.float32)
    noisy = np.clip(x + np.float32(NOISE_SIGMA[difficulty]) * noise, 0, 1)
    return np.concatenate([base.crop[None], _truncate(noisy)])


def _shot_noise(base: Base, difficulty: int, rng) -> np.ndarray:
    # Release: np.uint8(255 * clip(poisson(z * lam) / lam, 0, 1)), z = crop / 255.
    x = base.crop / 255.0
    lam = SHOT_LAMBDA[difficulty]
    noisy = rng.poisson(np.broadcast_to(x * lam, (30, *x.shape))) / float(lam)
    return np.concatenate([base.crop[None], _truncate(noisy)])


def _brightness(base: Base, difficulty: int, rng) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(base.crop / 255.0)
    frames = []
    for i in range(31):
        shifted = hsv.copy()
        shifted[..., 2] = np.clip(shifted[..., 2] + (i - 15) * 2 / 100.0, 0, 1)
        frames.append(_truncate(hsv2rgb(shifted)))
    return np.stack(frames)


def _zoom_blur(base: Base, difficulty: int, rng) -> np.ndarray:
    # Release: frame i = ToPILImage of the float32 running mean of ToTensor(CenterCrop(
    # affine(img256, scale=1 + 0.004 j, bilinear))) over j = 0..i (j = 0 is the crop).
    total = _to_tensor(base.crop)
    frames = [base.crop]
    for i in range(1, 31):
        zoomed = TF.affine(
            base.resized,
            angle=0.0,
            translate=[0, 0],
            scale=1 + 0.004 * i,
            shear=0.0,
            interpolation=BILINEAR,
        )
        total += _to_tensor(TF.center_crop(zoomed, CROP))
        frames.append(_truncate(total / (i + 1)))
    return np.stack(frames)


def motion_blur(image: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's ``MotionBlurImage`` (``-motion-blur RxS+A``) of a uint8 image (H x W
    or H x W x C), as an 8-bit PNG of a Q16 build holds its result.

    Kernel: width 2 ceil(radius) + 1, weight exp(-i^2 / (2 sigma^2)) for i = 0..width-1,
    normalised; tap i reads the pixel at (x + ceil(i cos a - 0.5), y + ceil(i sin a - 0.5)),
    a = angle in degrees, outside the image the nearest edge pixel. Values are summed as
    16-bit quanta (v * 257), rounded to a quantum, then scaled to 8 bits by truncation.
    """
    image = np.asarray(image)
    width = int(2 * math.ceil(radius) + 1)
    weights = [math.exp(-(float(i) * i) / (2.0 * sigma * sigma)) for i in range(width)]
    total = sum(weights)
    radians = math.pi * angle / 180.0
    point_x, point_y = width * math.sin(radians), width * math.cos(radians)
    length = math.hypot(point_x, point_y)
    height, columns = image.shape[:2]
    rows, cols = np.arange(height)[:, None], np.arange(columns)[None, :]
    quanta = image.astype(np.float64) * 257.0
    blurred = np.zeros_like(quanta)
    for i, weight in enumerate(weights):
        dx = math.ceil(i * point_y / length - 0.5)
        dy = math.ceil(i * point_x / length - 0.5)
        tap = quanta[np.clip(rows + dy, 0, height - 1), np.clip(cols + dx, 0, columns - 1)]
        blurred += (weight / total) * tap
    quantum = np.floor(np.clip(blurred, 0, 65535) + 0.5)
    return (quantum // 257).astype(np.uint8)


def _motion_blur(base: Base, difficulty: int, rng) -> np.ndarray:
    return np.stack([motion_blur(base.crop, 10, 3, (i - 30) * 4) for i in range(31)])


def clipped_zoom(layer: np.ndarray, factor: float) -> np.ndarray:
    """The release's square zoom: the centre ceil(h / factor) square, scipy ``zoom``
    (order 1), trimmed back to h x h from the top-left of the centre."""
    from scipy.ndimage import zoom

    size = layer.shape[0]
    side = int(np.ceil(size / factor))
    top = (size - side) // 2
    zoomed = zoom(layer[top : top + side, top : top + side], (factor, factor, 1), order=1)
    trim = (zoomed.shape[0] - size) // 2
    return zoomed[trim : trim + size, trim : trim + size]


# The ImageNet-P script's own snow (not ImageNet-C's severities): layer N(0.05, 0.3),
# zoom 3, flakes >= 0.5, motion blur radius 14 sigma 4 at 4 i - 150 degrees, blend 0.85.
SNOW = {"loc": 0.05, "scale": 0.3, "zoom": 3, "threshold": 0.5, "radius": 14, "sigma": 4}
SNOW_BLEND = 0.85


def _snow(base: Base, difficulty: int, rng) -> np.ndarray:
    import cv2

    x = base.crop / 255.0
    size = x.shape[0]
    layer = rng.normal(loc=SNOW["loc"], scale=SNOW["scale"], size=(size, size))
    layer = clipped_zoom(layer[..., None], SNOW["zoom"])
    layer[layer < SNOW["threshold"]] = 0
    layer = (np.clip(layer.squeeze(), 0, 1) * 255).astype(np.uint8)  # an 8-bit grey PNG
    grey = cv2.cvtColor(np.float32(x), cv2.COLOR_RGB2GRAY).reshape(size, size, 1)
    dimmed = SNOW_BLEND * x + (1 - SNOW_BLEND) * np.maximum(x, grey * 1.5 + 0.5)
    frames = []
    for i in range(31):
        angle = i * 4 - 150
        flakes = (motion_blur(layer, SNOW["radius"], SNOW["sigma"], angle) / 255.0)[..., None]
        frames.append(_truncate(dimmed + flakes + np.rot90(flakes, k=2)))
    return np.stack(frames)


def _geometric(transform: Callable[[Image.Image, int], Image.Image], count: int):
    def frames(base: Base, difficulty: int, rng) -> np.ndarray:
        return np.stack(
            [np.asarray(TF.center_crop(transform(base.resized, i), CROP)) for i in range(count)]
        )

    return frames


BILINEAR = Image.Resampling.BILINEAR  # torchvision maps it to InterpolationMode.BILINEAR


def _affine(image: Image.Image, **kwargs) -> Image.Image:
    """torchvision ``affine`` with the release's defaults; ``shear`` a number (x only)."""
    arguments = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": 0.0, **kwargs}
    return TF.affine(image, **arguments)


def _translate(image: Image.Image, i: int) -> Image.Image:
    return _affine(image, translate=[i - 20, 0])  # nearest, as the release (no resample)


def _rotate(image: Image.Image, i: int) -> Image.Image:
    # affine turns clockwise for a positive angle (TF.rotate would turn the other way).
    return _affine(image, angle=float(i - 15), interpolation=BILINEAR)


def _scale(image: Image.Image, i: int) -> Image.Image:
    return _affine(image, scale=(i * 2.5 + 40) / 100.0, interpolation=BILINEAR)


def _shear(image: Image.Image, i: int) -> Image.Image:
    # A number, not [s]: torchvision shears along x only (a list [s] is both axes).
    return _affine(image, shear=float(i - 15), interpolation=BILINEAR)


def tilt_matrix(width: int, height: int, degrees: float) -> np.ndarray:
    """The release's 3 x 3 homography: the image turned by ``degrees`` about both its
    horizontal and vertical axes, seen from f = sqrt(w^2 + h^2): M = P2 T RX RY P1."""
    phi = theta = np.deg2rad(degrees)
    w, h = width, height
    f = np.sqrt(w**2 + h**2)
    p1 = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
    rx = np.array(
        [
            [1, 0, 0, 0],
            [0, np.cos(theta), -np.sin(theta), 0],
            [0, np.sin(theta), np.cos(theta), 0],
            [0, 0, 0, 1],
        ]
    )
    ry = np.array(
        [
            [np.cos(phi), 0, -np.sin(phi), 0],
            [0, 1, 0, 0],
            [np.sin(phi), 0, np.cos(phi), 0],
            [0, 0, 0, 1],
        ]
    )
    t = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
    p2 = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
    return p2 @ t @ rx @ ry @ p1


def _tilt(image: Image.Image, i: int) -> Image.Image:
    import cv2

    width, height = image.size
    warped = cv2.warpPerspective(np.asarray(image), tilt_matrix(width, height, i - 15), image.size)
    return Image.fromarray(warped)


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


# The release's ffmpeg calls: ``-r 1 -framerate 1 -i img%d.png -vcodec libx264 -preset
# veryslow`` with ``-tune grain`` (crf 23, x264's default) for the noise sequences and
# ``-crf 20`` for the others. ffmpeg picks yuv444p for RGB PNG input (no -pix_fmt given).
ENCODINGS = ("none", "h264")
H264_PIXEL_FORMAT = "yuv444p"


def h264_options(perturbation: str) -> dict[str, str]:
    tuning = {"tune": "grain"} if is_noise(perturbation) else {"crf": "20"}
    # x264's SIMD code (AVX-512 here) made a different stream from call to call, and its
    # SIMD and C paths give different streams: its C code alone (asm=0) gives the same
    # stream every time, on every CPU. About 3x slower: ~2 s per 31-frame sequence.
    return {"preset": "veryslow", **tuning, "x264-params": "asm=0"}


@cache
def h264_encoder() -> str | None:
    """Why H.264 encoding is unavailable here (None: it is available)."""
    try:
        import av
    except ImportError:
        return 'PyAV is not installed: pip install "aabench[h264]" (its wheels include libx264)'
    try:
        av.codec.Codec("libx264", "w")
    except Exception:  # any failure means: no encoder
        return f"the installed PyAV {av.__version__} has no libx264 encoder"
    return None


def check_encoding(encode: str, generate: bool) -> str:
    """``encode`` as given, or a UserError that says what to do instead."""
    if encode not in ENCODINGS:
        raise UserError(f"encode must be one of {', '.join(ENCODINGS)}, got {encode!r}")
    if encode != "none" and not generate:
        raise UserError(
            "encode applies to generated sequences: add --set generate=true "
            "(the released videos are already H.264)"
        )
    if encode == "h264" and (problem := h264_encoder()):
        raise UserError(f"--set encode=h264 needs an H.264 encoder: {problem}")
    return encode
