"""ImageNet-C corruptions: names, categories, seeding, and the released image pipeline.

One corrupted image is ``Resize(256) -> CenterCrop(224) -> corruption -> uint8 (truncated)
-> JPEG q85``, as in the released dataset. The corruptions come from the
``imagecorruptions`` module (PyPI ``imagecorruptions-imaug``), which draws from NumPy's
global RNG (and takes ``seed=`` in impulse_noise and glass_blur): :func:`corrupt` seeds
both from a seed that :func:`corruption_seed` derives from the image and the cell alone,
so a file's bytes never depend on worker count or order.

frost is the release's, not the library's: the library draws one of six frost pictures
(``randint(6)``) and enlarges it by 1.1 before cropping; the release's
``make_imagenet_c.py`` drew one of the first five (``randint(5)``: frost6 never appears in
the released set) and cropped it as it is. :func:`frost` does the latter with the
library's pictures. GENERATOR_VERSION, in a generated run's protocol, marks the change.
"""

from __future__ import annotations

import hashlib
import inspect
import io
from functools import cache

import numpy as np
from PIL import Image

from aabench.errors import UserError

NOISE = ("gaussian_noise", "shot_noise", "impulse_noise")
BLUR = ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur")
WEATHER = ("snow", "frost", "fog", "brightness")
DIGITAL = ("contrast", "elastic_transform", "pixelate", "jpeg_compression")
COMMON = NOISE + BLUR + WEATHER + DIGITAL  # the 15 of mCE, in the paper's order
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # never inside mCE
ALL = COMMON + EXTRA
CATEGORIES = {"noise": NOISE, "blur": BLUR, "weather": WEATHER, "digital": DIGITAL, "extra": EXTRA}
SEVERITIES = (1, 2, 3, 4, 5)
JPEG_QUALITY = 85
RESIZE, CROP = 256, 224
PIPELINE = "Resize(256) -> CenterCrop(224) -> corruption -> uint8 -> JPEG q85"
GENERATOR_VERSION = 2  # 2: frost drawn as the release drew it
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
FROST_MIX = ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))  # image, frost


@cache
def frost_picture(index: int) -> np.ndarray:
    """Frost picture ``index`` (0-based) of the installed library, as RGB uint8."""
    import importlib.resources

    import cv2

    resource = importlib.resources.files("imagecorruptions") / "frost" / FROST_FILES[index]
    with importlib.resources.as_file(resource) as path:
        picture = cv2.imread(str(path))
    if picture is None:
        raise UserError(f"cannot read {resource}: reinstall imagecorruptions-imaug")
    return picture[..., ::-1]


def frost(x, severity: int = 1) -> np.ndarray:
    """The release's frost, from NumPy's global RNG: picture randint(5), a crop at
    (randint(0, H - h), randint(0, W - w)), then clip(a * x + b * crop, 0, 255).
    An image larger than the picture (never a 224 crop) gets the picture enlarged first."""
    image = np.asarray(x)
    height, width = image.shape[:2]
    picture = frost_picture(np.random.randint(len(FROST_FILES)))
    if picture.shape[0] <= height or picture.shape[1] <= width:
        import cv2

        factor = max((height + 1) / picture.shape[0], (width + 1) / picture.shape[1])
        size = (int(np.ceil(picture.shape[1] * factor)), int(np.ceil(picture.shape[0] * factor)))
        picture = cv2.resize(np.ascontiguousarray(picture), size, interpolation=cv2.INTER_CUBIC)
    top = np.random.randint(0, picture.shape[0] - height)
    left = np.random.randint(0, picture.shape[1] - width)
    crop = picture[top : top + height, left : left + width]
    if image.ndim == 2:
        crop = crop.mean(axis=-1)
    weight_image, weight_frost = FROST_MIX[severity - 1]
    return np.clip(weight_image * image + weight_frost * crop, 0, 255)


@cache
def _functions() -> dict:
    """name -> corruption function of the installed library, checked against our names."""
    import cv2
    from imagecorruptions import corruption_dict, get_corruption_names

    # Without a thread pool OpenCV is safe to fork after use (DataLoader workers are
    # forked; a forked copy of a live pool can hang), and the parallelism comes from
    # the worker processes anyway.
    cv2.setNumThreads(1)

    installed = set(get_corruption_names("all"))
    missing = [name for name in ALL if name not in installed]
    if missing:
        raise UserError(
            f"the installed imagecorruptions module lacks {', '.join(missing)}: "
            "install imagecorruptions-imaug (pip install -U imagecorruptions-imaug)"
        )
    functions = {name: corruption_dict[name] for name in ALL}
    functions["frost"] = frost  # drawn as the release drew it (see the module docstring)
    return functions


@cache
def _takes_seed(name: str) -> bool:
    return "seed" in inspect.signature(_functions()[name]).parameters


def check_corruption(name: str) -> str:
    if name not in ALL:
        raise UserError(
            f"unknown corruption {name!r}: choose from {', '.join(ALL)} "
            f"(or common, all, {', '.join(CATEGORIES)})"
        )
    return name


def check_severity(severity: int) -> int:
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise UserError(f"unknown severity {severity!r}: choose from 1, 2, 3, 4, 5")
    return int(severity)


def parse_corruptions(text: str) -> tuple[str, ...]:
    """``a,b`` | ``common`` | ``extra`` | ``all`` | a category, mixed freely; kept unique."""
    groups = {"common": COMMON, "extra": EXTRA, "all": ALL, **CATEGORIES}
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        for name in groups.get(item, (item,)):
            if check_corruption(name) not in names:
                names.append(name)
    if not names:
        raise UserError("--corruptions is empty: name corruptions, a category, common or all")
    return tuple(names)


def parse_severities(text: str) -> tuple[int, ...]:
    severities: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"unknown severity {item!r}: choose from 1, 2, 3, 4, 5") from None
        if check_severity(value) not in severities:
            severities.append(value)
    if not severities:
        raise UserError("--severities is empty: name some of 1, 2, 3, 4, 5")
    return tuple(sorted(severities))


def corruption_seed(seed: int, key: int, corruption: str, severity: int) -> int:
    """A 32-bit seed from (run seed, image key, corruption, severity) and nothing else."""
    text = f"aabench-imagenet-c\t{int(seed)}\t{int(key)}\t{corruption}\t{int(severity)}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def corrupt(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt a uint8 H x W x 3 array; the result is uint8 H x W x 3, truncated as released."""
    function = _functions()[check_corruption(corruption)]
    severity = check_severity(severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    np.random.seed(seed)
    kwargs = {"seed": seed} if _takes_seed(corruption) else {}
    result = np.asarray(function(Image.fromarray(image), severity, **kwargs))
    if result.ndim == 2:
        result = np.stack((result,) * 3, axis=-1)
    if result.dtype != np.uint8:
        # The library's own np.uint8(x) truncates; clip first so nothing wraps around.
        result = np.clip(result, 0, 255).astype(np.uint8)
    if result.shape != image.shape:
        raise ValueError(f"{corruption} returned shape {result.shape} for {image.shape}")
    return np.ascontiguousarray(result)


def center_224(image: Image.Image) -> np.ndarray:
    """Resize(256) (shorter side, bilinear) -> CenterCrop(224), as a uint8 224 x 224 x 3 array."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    resized = F.resize(image.convert("RGB"), RESIZE, interpolation=InterpolationMode.BILINEAR)
    return np.asarray(F.center_crop(resized, CROP), dtype=np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """The array as a JPEG (optimize on): the same array gives the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
