"""Shift operators on batched float images (N x C x H x W), on whatever device they live.

Sign convention, shared by every operator here: a shift by (dy, dx) moves the content
toward higher row / column indices, like ``torch.roll``: out[i, j] = x[i - dy, j - dx].
(AFC's ``subpixel_shift`` moves content the other way: its shift by d is
``fourier_shift(x, -d)`` here; the grids the suites use are symmetric or say so.)

Every operator takes the shift either as numbers (one shift applied to every image) or
as 1-D sequences / tensors of length B (one shift per output view). With sequences, ``x``
must hold one image (1 x C x H x W) and the result holds B views of it, made on x's
device: this is how a worst-case grid cuts hundreds of views from one uploaded image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _is_sequence(value) -> bool:
    return (torch.is_tensor(value) and value.dim() > 0) or isinstance(value, list | tuple)


def _per_view(x: torch.Tensor, *values):
    """The shifts as float64 tensors of one length (1 for scalars), and whether batched."""
    batched = any(_is_sequence(v) for v in values)
    tensors = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in values]
    if batched:
        length = max(len(t) for t in tensors)
        tensors = [t.expand(length) if len(t) == 1 else t for t in tensors]
        if any(len(t) != length for t in tensors) or x.shape[0] != 1:
            raise ValueError("per-view shifts need equal lengths and one image (1 x C x H x W)")
    return tensors, batched


def roll(x: torch.Tensor, dy, dx) -> torch.Tensor:
    """Circular integer shift (``torch.roll`` along H and W)."""
    (ys, xs), batched = _per_view(x, dy, dx)
    if not batched:
        return torch.roll(x, shifts=(int(ys[0]), int(xs[0])), dims=(2, 3))
    height, width = x.shape[-2:]
    ys, xs = ys.long().to(x.device), xs.long().to(x.device)
    rows = (torch.arange(height, device=x.device)[None, :] - ys[:, None]) % height  # B x H
    cols = (torch.arange(width, device=x.device)[None, :] - xs[:, None]) % width  # B x W
    gathered = x[0][:, rows[:, :, None], cols[:, None, :]]  # C x B x H x W
    return gathered.permute(1, 0, 2, 3).contiguous()


def _phase_ramp(size: int, shifts: torch.Tensor, device) -> torch.Tensor:
    """B x size complex factors of one axis's DFT for shifts by ``shifts`` (float64).

    Coefficient k gets exp(-2 pi i k d / N); for even N the Nyquist coefficient (k = N/2,
    its own conjugate partner) gets the real cos(pi d): the symmetric split of AFC's
    ideal up-sampler (weight 1/2 on +N/2 and -N/2), which keeps the result real and makes
    an integer shift exactly (-1)^d there, i.e. a roll.
    """
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)  # integers, -N/2 for even N
    angle = -2.0 * math.pi * shifts[:, None] * k[None, :] / size
    ramp = torch.polar(torch.ones_like(angle), angle)
    if size % 2 == 0:
        ramp[:, size // 2] = torch.cos(math.pi * shifts).to(ramp.dtype)
    return ramp.to(device)


def fourier_shift(x: torch.Tensor, dy, dx) -> torch.Tensor:
    """The ideal circular band-limited (sinc / DFT) shift by real (dy, dx) pixels.

    AFC's ``subpixel_shift`` (reference §1.1) in closed form, separable per axis: multiply
    the DFT by the phase ramp, the Nyquist coefficient of an even axis by cos(pi d), and
    take the real inverse DFT. An integer shift equals ``torch.roll`` (up to float
    rounding). For an even axis a half-pixel shift has cos(pi/2) = 0 there: it removes
    the Nyquist component (as AFC's does), so two half-pixel shifts equal a one-pixel roll
    only on images without that component (every image, for odd sizes).
    """
    (ys, xs), batched = _per_view(x, dy, dx)
    height, width = x.shape[-2:]
    complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    rows = _phase_ramp(height, ys, x.device).to(complex_dtype)  # B x H
    cols = _phase_ramp(width, xs, x.device).to(complex_dtype)  # B x W
    spectrum = torch.fft.fft2(x)  # N x C x H x W, once per image
    if batched:
        spectrum = spectrum[0][None]  # 1 x C x H x W, broadcast over the B views
    shifted = spectrum * (rows[:, None, :, None] * cols[:, None, None, :])
    return torch.fft.ifft2(shifted).real.to(x.dtype)


def _affine_sample(x: torch.Tensor, theta: torch.Tensor, padding: str) -> torch.Tensor:
    batch = theta.shape[0]
    source = x.expand(batch, -1, -1, -1) if x.shape[0] == 1 and batch > 1 else x
    grid = F.affine_grid(theta, list(source.shape), align_corners=True)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def rotate_translate(x: torch.Tensor, angle_deg, dy, dx, padding: str = "zeros") -> torch.Tensor:
    """Engstrom et al.'s spatial transform: rotation about the centre by ``angle_deg`` and
    a translation by (dy, dx) pixels in one bilinear resampling, zeros outside.

    As MadryLab/spatial-pytorch: the output's normalised grid p (linspace(-1, 1, side),
    i.e. ``align_corners=True``) samples the input at R(angle) p + t, R = [[cos, -sin],
    [sin, cos]]; t = -2 (dx, dy) / (side - 1) so that the content moves by exactly
    (dy, dx) pixels in the roll direction.
    """
    (angles, ys, xs), _ = _per_view(x, angle_deg, dy, dx)
    height, width = x.shape[-2:]
    radians = angles * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    tx = -2.0 * xs / max(width - 1, 1)
    ty = -2.0 * ys / max(height - 1, 1)
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=-1), torch.stack([sin, cos, ty], dim=-1)], dim=1
    )  # B x 2 x 3
    batch = max(theta.shape[0], x.shape[0])
    theta = theta.expand(batch, -1, -1).to(device=x.device, dtype=x.dtype)
    return _affine_sample(x, theta, padding)


def bilinear_shift(x: torch.Tensor, dy, dx, padding: str = "zeros") -> torch.Tensor:
    """Translation by real (dy, dx) pixels: bilinear ``grid_sample``, ``align_corners=True``,
    zero fill by default (Engstrom's and AF-ViT's assumption, reference §5 / §1.6)."""
    return rotate_translate(x, 0.0, dy, dx, padding=padding)


def crops(x: torch.Tensor, top, left, size: int) -> torch.Tensor:
    """size x size crops of one image at the given (top, left) offsets: real content, no
    wrap-around (the crop-shift grid, reference §1.5)."""
    (tops, lefts), _ = _per_view(x, top, left)
    pairs = zip(tops.long().tolist(), lefts.long().tolist(), strict=True)
    return torch.stack([x[0, :, i : i + size, j : j + size] for i, j in pairs])
