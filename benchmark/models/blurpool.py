"""BlurPool: low-pass filter then subsample (Zhang, ICML 2019).

The filter is a persistent buffer named ``filt`` because the released checkpoints carry
it; its size k is therefore readable from any checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aabench.errors import UserError
from aabench.models.catalogue import FILTER_SIZES

__all__ = ["FILTER_SIZES", "BlurPool", "binomial_filter"]
PAD_MODES = {"reflect": "reflect", "replicate": "replicate", "zero": "constant"}


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            return x[:, :, :: self.stride, :: self.stride]
        if self.pad_type == "reflect" and min(x.shape[-2:]) <= max(self.padding):
            raise UserError(
                f"BlurPool(k={self.filter_size}, reflect) needs feature maps larger than "
                f"{max(self.padding)} pixels, got {tuple(x.shape[-2:])}: use larger input "
                "images (ImageNet models expect 224x224) or a smaller filter size"
            )
        mode = PAD_MODES[self.pad_type]
        padded = F.pad(x, self.padding, mode=mode)
        return F.conv2d(padded, self.filt, stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}, "
            f"pad_type={self.pad_type}"
        )
