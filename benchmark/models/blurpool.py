"""BlurPool: low-pass filter then subsample (Zhang, ICML 2019).

The filter is a persistent buffer named ``filt`` because the released checkpoints carry
it; its size k is therefore readable from any checkpoint.

The same blur + subsample can be computed in several ways that agree to float rounding
(about 1e-7 of the activations): the reference depthwise k x k convolution; two 1-D
passes (the binomial filter is the outer product of its row with itself); and, for
binomial filters, a cascade of 2 x 2 averages, the last one strided (k = 4 is three);
and "fused", a zero-padded convolution of the unpadded map with only the border rows and
columns computed again from padded strips (the pad copies the whole map). Unless the
reference form is asked for, the 2 x 2 stride-1 max pools before the BlurPools are
computed as shifted maxima (ShiftedMaxPool2d) where that is measured faster. Which is fastest
depends on the device and the memory format, so it is chosen from measurements
(``FASTEST``) and recorded in the provenance; the reference form stays
selectable for debugging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from aabench.errors import UserError
from aabench.models.catalogue import FILTER_SIZES

__all__ = [
    "FILTER_SIZES",
    "FORMS",
    "BlurPool",
    "ShiftedMaxPool2d",
    "binomial_filter",
    "fastest_form",
    "use_form",
]
PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "zero": "constant"}
FORMS = ("reference", "separable", "cascade", "fused")

# The fastest form by (device type, channels-last), from whole-model forward passes
# (tools/blurpool_forms.py). On a 2-core CPU (resnet18, batch 16, 8-12 interleaved rounds,
# the max pools shifted in both), aa / baseline was 0.755 fused against 0.750 reference
# contiguous and 0.710 against 0.710 channels-last (best rounds 0.727 against 0.701):
# within the rounds' spread, so the CPU keeps the reference form. A device type missing
# here (CUDA, until measured) keeps the reference form too.
FASTEST = {("cpu", False): "reference", ("cpu", True): "reference"}
# The fused form's strips cost a few small convolutions whatever the map's size, the pad
# it saves grows with the map: layer by layer on the CPU (batch 16, k = 4) it computes a
# 111 x 111 map (resnet stems) in 0.27 of the reference's time channels-last and 0.84
# contiguous, but 28 x 28 and smaller maps in 1.3-4x; below this side it pads as the
# reference does.
FUSED_MIN_SIDE = 64
# Whether ShiftedMaxPool2d beats nn.MaxPool2d, by (device type, channels-last), from
# whole-model forward passes; missing: keep nn.MaxPool2d. On the 2-core CPU resnet18_aa /
# resnet18 went from 0.595 to 0.750 contiguous (per-round ranges 0.577-0.612 and
# 0.713-0.811) and from 0.629-0.640 to 0.671-0.710 channels-last in two runs.
SHIFTED_MAX_FASTER = {("cpu", False): True, ("cpu", True): True}


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
        if self.form == "fused":
            return self._fused(x)
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

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        # Padding costs a copy of the whole input, the convolution reads it once more. A
        # zero-padded convolution of the unpadded input is already right wherever the
        # window lies inside the map; only the first and last few output rows and
        # columns see the padding, so they are computed again from padded strips.
        low, high = self.padding[0], self.padding[1]
        mode = PAD_MODES[self.pad_type]
        if min(x.shape[-2:]) < FUSED_MIN_SIDE:
            return self._convolve(F.pad(x, self.padding, mode=mode))
        rows = _Axis(x.shape[2], self.filter_size, self.stride, low, high, mode)
        cols = _Axis(x.shape[3], self.filter_size, self.stride, low, high, mode)
        if rows.bands is None or cols.bands is None:  # a map too small to have an inside
            return self._convolve(F.pad(x, self.padding, mode=mode))
        out = F.conv2d(x, self.filt, stride=self.stride, padding=low, groups=x.shape[1])
        if out.shape[2] < rows.outputs or out.shape[3] < cols.outputs:
            # Odd maps with an even filter: the bottom/right padding has one more row.
            out = F.pad(out, (0, cols.outputs - out.shape[3], 0, rows.outputs - out.shape[2]))
        for first, last, start, stop, before, after in rows.bands:
            strip = F.pad(x[:, :, start:stop], (low, high, before, after), mode=mode)
            out[:, :, first:last] = self._convolve(strip)
        for first, last, start, stop, before, after in cols.bands:
            strip = F.pad(x[:, :, :, start:stop], (before, after, low, high), mode=mode)
            out[:, :, :, first:last] = self._convolve(strip)
        return out

    def _convolve(self, padded: torch.Tensor) -> torch.Tensor:
        return F.conv2d(padded, self.filt, stride=self.stride, groups=padded.shape[1])

    def supports(self, form: str) -> bool:
        """Whether ``form`` computes this module's filter: the released filters are
        binomial, but a checkpoint may carry any filter in ``filt``."""
        if form in ("reference", "fused") or self.filter_size == 1:
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


class _Axis:
    """Where, along one axis of length ``size``, the blur's windows reach the padding.

    Output i reads padded positions stride·i - low .. stride·i - low + k - 1. ``bands``
    lists the output ranges whose windows leave the map, each with the input slice and
    the padding (before, after) that compute them: ``None`` when the bands would cover
    the whole axis (the caller pads the whole map instead).
    """

    def __init__(self, size: int, k: int, stride: int, low: int, high: int, mode: str):
        self.outputs = (size + low + high - k) // stride + 1
        zero_padded = (size + 2 * low - k) // stride + 1  # what conv2d(padding=low) gives
        if mode == "constant":
            # Zero padding is what conv2d does: only the rows it does not produce are missing.
            top, bottom = 0, zero_padded
        else:
            top = -(-low // stride)  # windows starting before position 0
            bottom = (size - k + low) // stride + 1  # the first window ending after the map
            # Reflection reads up to `low` positions inside the strip: make it that tall.
            while top < self.outputs and stride * (top - 1) - low + k <= low:
                top += 1
            need = stride * (self.outputs - 1) - low + k - size
            while bottom > top and size - (stride * bottom - low) <= need:
                bottom -= 1
        if bottom <= top or stride * bottom - low < 0:
            self.bands = None
            return
        self.bands = []
        if top > 0:
            stop = stride * (top - 1) - low + k
            self.bands.append((0, top, 0, stop, low, 0))
        if bottom < self.outputs:
            start = stride * bottom - low
            after = stride * (self.outputs - 1) - low + k - size
            self.bands.append((bottom, self.outputs, start, size, 0, after))


class ShiftedMaxPool2d(nn.MaxPool2d):
    """A 2 x 2 max pool at stride 1 (the anti-aliased models' max before their BlurPool)
    as the maximum of shifted views: the same values, NaNs included (max is exact and
    torch.maximum propagates NaN as max_pool2d does; only where -0 and +0 tie may the
    zero's sign differ: they compare equal and vanish alike in any sum with a nonzero),
    without max_pool2d's CPU kernel
    (layer by layer, batch 16, 64 x 112 x 112: 155 ms contiguous and 52 ms channels-last
    against 35 and 33 ms).

    ``use_form`` switches an eligible nn.MaxPool2d's class to this subclass and back:
    a max pool has no state, so the module tree and the state dict keys stay the same.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < 2:  # no 2 x 2 window: max_pool2d's own error, not an empty map
            return super().forward(x)
        rows = torch.maximum(x[..., :-1, :], x[..., 1:, :])
        return torch.maximum(rows[..., :-1], rows[..., 1:])


def _computes_shifted(pool: nn.Module) -> bool:
    """Whether ``pool`` is a plain 2 x 2, stride-1 max pool that ShiftedMaxPool2d computes."""
    if type(pool) not in (nn.MaxPool2d, ShiftedMaxPool2d):
        return False
    return (
        _pair(pool.kernel_size) == (2, 2)
        and _pair(pool.stride) == (1, 1)
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
        and not pool.return_indices
    )


def fastest_form(device: torch.device | str, channels_last: bool) -> str:
    return FASTEST.get((torch.device(device).type, bool(channels_last)), "reference")


def shifted_max_is_faster(device: torch.device | str, channels_last: bool) -> bool:
    return SHIFTED_MAX_FASTER.get((torch.device(device).type, bool(channels_last)), False)


def use_form(
    module: nn.Module,
    form: str,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    shifted_max: bool | None = None,
) -> dict[str, int]:
    """Compute every BlurPool in ``module`` in ``form``; returns {form: modules} as used
    (for the provenance), and {"shifted_max": n} for the n 2 x 2 stride-1 max pools
    computed by ShiftedMaxPool2d.

    "auto" is the fastest form measured for ``device`` and ``channels_last``, and the
    reference form for a module whose filter it cannot compute. A form asked for by
    name that cannot compute some module's filter is refused, not silently replaced.
    Unless ``form`` is "reference", the max pools are computed as shifted maxima where
    that was measured faster (the values are the same); the reference form is today's
    computation throughout. ``shifted_max`` overrides that choice (for measuring it).
    Call this after the weights are loaded: whether a form
    applies depends on ``filt``.
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
    if shifted_max is None:
        shifted_max = form != "reference" and shifted_max_is_faster(device, channels_last)
    for pool in module.modules():
        if _computes_shifted(pool):
            pool.__class__ = ShiftedMaxPool2d if shifted_max else nn.MaxPool2d
            if shifted_max:
                used["shifted_max"] = used.get("shifted_max", 0) + 1
    return used
