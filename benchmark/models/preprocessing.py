"""What a model expects of its input: the resize, crop and normalisation it was trained for,
and whether the model can take the views a suite will give it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from aabench.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The largest resize or crop side: 48 MiB of pixels per view, more than any published
# protocol uses (518 at most); beyond it a typo (--crop 100000) would take the memory.
MAX_SIDE = 4096
# Every ImageNet architecture takes its 224 training size and more: only a smaller view
# can run out of pixels before the last downsampling, and probing one costs less than a
# batch, so only views below this are probed (check_view_size).
PROBED_BELOW = 224
# What torch (or aabench's BlurPool) says when a feature map has become too small.
_TOO_SMALL = (
    "Output size is too small",
    "output size is too small",
    "Padding size should be less than",
    "Kernel size can't be greater than actual input size",
    "needs feature maps larger than",
)


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_size: int = 256  # short side, before the centre crop
    crop_size: int = 224
    interpolation: str = "bilinear"

    def __post_init__(self):
        for field in ("resize_size", "crop_size"):
            value = getattr(self, field)
            if isinstance(value, int) and not isinstance(value, bool) and value > MAX_SIDE:
                raise UserError(
                    f"{field.replace('_', ' ')} {value} px is more than the {MAX_SIDE} px "
                    f"allowed: give a {field.split('_')[0]} of at most {MAX_SIDE}"
                )
        for field in ("mean", "std"):
            values = getattr(self, field)
            if not all(_finite(v) for v in values):
                raise UserError(
                    f"{field} {', '.join(map(str, values))} holds a value that is not a finite "
                    "number: give three finite numbers"
                )

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: the caller's own check names it


def check_view_size(module, size: int, setting: str, model: str) -> None:
    """Refuse, as one line, views of ``size`` px that ``module``'s downsampling cannot
    take (a feature map shrinks to nothing), naming what set the size (``setting``, a
    format string: ``"--crop {}"``) and a larger size the model was seen to take.
    Probed with one blank view on the module's device, before the run: at the first
    batch, the error would be torch's traceback from deep inside the model."""
    if size >= PROBED_BELOW:
        return
    problem = _too_small(module, size)
    if problem is None:
        return
    works = _larger_size(module, size)
    fix = f"{works} px views work: give {setting.format(works)}" if works else "give larger views"
    raise UserError(
        f"{setting.format(size)} is too small for {model}: its downsampling leaves no pixels of "
        f"{size} x {size} px views ({problem}); {fix}"
    )


def _larger_size(module, failing: int) -> int | None:
    """A size the module takes: ``failing`` doubled until it works (None: not even at
    PROBED_BELOW). Not a bisection to the smallest: which sizes work need not be
    monotonic (a stride-2 layer rounds odd maps up), so only a probed size is named."""
    size = failing
    while size < PROBED_BELOW:
        size = min(2 * size, PROBED_BELOW)
        if _too_small(module, size) is None:
            return size
    return None


def _too_small(module, size: int) -> str | None:
    """What the model says of a blank ``size`` x ``size`` view if it is too small for
    it; None if it takes it (or fails for a reason that is not its size: the run then
    reports that as it would have)."""
    import torch

    from aabench.checks import printable

    parameter = next(iter((*module.parameters(), *module.buffers())), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    modes = [(sub, sub.training) for sub in module.modules()]
    try:
        module.eval()  # batch statistics of one blank view would fail for other reasons
        with torch.inference_mode():
            module(torch.zeros(1, 3, size, size, device=device))
    except Exception as error:
        # Only a size problem is this check's; any other failure the run reports as
        # it would have.
        text = str(error).strip()
        if any(sign in text for sign in _TOO_SMALL):
            # The model's own advice ("use larger input images ...") is ours to give.
            return printable(text.splitlines()[-1].split(": use ")[0])
        return None
    finally:
        for sub, training in modes:
            sub.training = training
    return None


def check_views_fit(suites, preprocessing: Preprocessing, module, model: str, setting) -> None:
    """The model takes the views of every suite whose view size the user chose
    (``--crop``, accuracy's ``crop_size``): ``setting(source)`` spells the flag or
    parameter of a suite's ``view_size_source()`` (None: the model's crop) as a format
    string for check_view_size."""
    probed = set()
    for suite in suites:
        size, source = suite.view_size(preprocessing), suite.view_size_source()
        if source is None and size != preprocessing.crop_size:
            continue  # views the suite sizes itself (ImageNet-C's 224): not the user's
        if (size, source) not in probed:
            probed.add((size, source))
            check_view_size(module, size, setting(source), model)
