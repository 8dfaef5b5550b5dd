"""BlurPool: low-pass filter then subsample (Zhang, ICML 2019).

The filter is a persistent buffer named ``filt`` because the released checkpoints carry
it; its size k is therefore readable from any checkpoint.

The same blur + subsample can be computed in several ways that agree to float rounding
(about 1e-7 of the activations): the reference depthwise k x k convolution; two 1-D
passes (the binomial filter is the outer product of its row with itself); and, for
binomial filters, a cascade of 2 x 2 averages, the last one strided (k = 4 is three).
Which is fastest depends on the device and the memory format, so it is chosen from
measurements (``FASTEST``) and recorded in the provenance; the reference form stays
selectable for debugging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aabench.errors import UserError
from aabench.models.catalogue import FILTER_SIZES

__all__ = ["FILTER_SIZES", "FORMS", "BlurPool", "binomial_filter", "fastest_form", "use_form"]
PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "zero": "constant"}
FORMS = ("reference", "separable", "cascade")

# The fastest form by (device type, channels-last), to be filled from whole-model
# forward passes (tools/blurpool_forms.py). On a 2-core CPU, layer by layer, no form beat
# the reference's depthwise convolution (the reflect pad costs about twice the
# convolution, and every form pads), so the CPU keeps it. A device type missing here
# (CUDA, until measured) keeps the reference form too.
FASTEST = {("cpu", False): "reference", ("cpu", True): "reference"}


def binomial_filter(k: int) -> torch.Tensor:
    """The normalised k x k binomial filter a·aᵀ / sum(a·aᵀ), a = row k of Pascal's triangle."""
    if k not in FILTER_SIZES:
        raise UserError(f"filter size must be in 1..7, got {k}")
    row = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=torch.float64)
    outer = row[:, None] * row[None, :]
    return (outer / outer.sum()).to(torch.float32)


class BlurPool(nn.Module):
    """Depthwise blur with a binomial filter of size k, then stride-s subsampling.

    Padding is (floor((k-1)/2), ceil((k-1)/2)) on each axis, so the output is
    ceil(H / stride) for every k; k = 1 is plain subsampling.
    """

    def __init__(
        self, channels: int, filter_size: int = 4, stride: int = 2, pad_type: str = "reflect"
    ):
        super().__init__()
        if pad_type not in PAD_MODES:
            raise UserError(
                f"unknown BlurPool padding {pad_type!r}: use one of {', '.join(PAD_MODES)}"
            )
        self.channels = channels
        self.filter_size = filter_size
        self.stride = stride
        self.pad_type = pad_type
        low = (filter_size - 1) // 2
        high = filter_size - 1 - low
        self.padding = (low, high, low, high)  # F.pad order: left, right, top, bottom
        filt = binomial_filter(filter_size)[None, None].repeat(channels, 1, 1, 1)
        self.register_buffer("filt", filt, persistent=True)
        self.form = "reference"  # not state: the outputs are the same in every form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        if self.pad_type == "reflect" and min(x.shape[-2:]) <= max(self.padding):
            raise UserError(
                f"BlurPool(k={self.filter_size}, reflect) needs feature maps larger than "
                f"{max(self.padding)} pixels, got {tuple(x.shape[-2:])}: use larger input "
                "images (ImageNet models expect 224x224) or a smaller filter size"
            )
        padded = F.pad(x, self.padding, mode=PAD_MODES[self.pad_type])
        if self.form == "separable":
            return self._separable(padded)
        if self.form == "cascade":
            return self._cascade(padded)
        return F.conv2d(padded, self.filt, stride=self.stride, groups=x.shape[1])

    def _separable(self, padded: torch.Tensor) -> torch.Tensor:
        # filt = a·aᵀ with sum(a) = 1, so each row of filt sums to a's entries.
        taps = self.filt.sum(dim=3, keepdim=True)  # C x 1 x k x 1: the column pass
        channels, stride = padded.shape[1], self.stride
        rows = F.conv2d(padded, taps.transpose(2, 3), stride=(1, stride), groups=channels)
        return F.conv2d(rows, taps, stride=(stride, 1), groups=channels)

    def _cascade(self, padded: torch.Tensor) -> torch.Tensor:
        # Row k of Pascal's triangle / 2^(k-1) is [1, 1] / 2 convolved with itself k-1
        # times: k-1 averages of 2 x 2 neighbours, subsampling at the last.
        for _ in range(self.filter_size - 2):
            padded = F.avg_pool2d(padded, 2, stride=1)
        return F.avg_pool2d(padded, 2, stride=self.stride)

    def supports(self, form: str) -> bool:
        """Whether ``form`` computes this module's filter: the released filters are
        binomial, but a checkpoint may carry any filter in ``filt``."""
        if form == "reference" or self.filter_size == 1:
            return True
        filt = self.filt.detach().double()
        if form == "cascade":
            expected = binomial_filter(self.filter_size).double().expand_as(filt)
            return torch.allclose(filt, expected, rtol=0, atol=1e-7)
        taps = filt.sum(dim=3, keepdim=True)
        return torch.allclose(taps * taps.transpose(2, 3), filt, rtol=0, atol=1e-7)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}, "
            f"pad_type={self.pad_type}, form={self.form}"
        )


def fastest_form(device: torch.device | str, channels_last: bool) -> str:
    return FASTEST.get((torch.device(device).type, bool(channels_last)), "reference")


def use_form(
    module: nn.Module, form: str, device: torch.device | str = "cpu", channels_last: bool = False
) -> dict[str, int]:
    """Compute every BlurPool in ``module`` in ``form``; returns {form: modules} as used
    (for the provenance).

    "auto" is the fastest form measured for ``device`` and ``channels_last``, and the
    reference form for a module whose filter it cannot compute. A form asked for by
    name that cannot compute some module's filter is refused, not silently replaced.
    Call this after the weights are loaded: whether a form applies depends on ``filt``.
    """
    if form not in (*FORMS, "auto"):
        raise UserError(f"unknown --blurpool {form!r}: use auto or one of {', '.join(FORMS)}")
    chosen = fastest_form(device, channels_last) if form == "auto" else form
    used: dict[str, int] = {}
    for name, pool in module.named_modules():
        if not isinstance(pool, BlurPool):
            continue
        supported = pool.supports(chosen)
        if not supported and form != "auto":
            kind = "binomial" if chosen == "cascade" else "separable"
            raise UserError(
                f"--blurpool {chosen} cannot compute the filter of {name} (it is not "
                f"{kind}): use --blurpool reference or auto"
            )
        pool.form = chosen if supported else "reference"
        used[pool.form] = used.get(pool.form, 0) + 1
    return used
