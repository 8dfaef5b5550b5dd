"""The shift operators: exact identities against torch.roll and integer translations."""

from __future__ import annotations

import pytest
import torch

from aabench import shifts


def image(height=12, width=12, batch=2, seed=0):
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def without_nyquist(x):
    """x with the Nyquist rows and columns of its spectrum removed (even sizes)."""
    spectrum = torch.fft.fft2(x)
    spectrum[..., x.shape[-2] // 2, :] = 0
    spectrum[..., :, x.shape[-1] // 2] = 0
    return torch.fft.ifft2(spectrum).real


@pytest.mark.parametrize("size", [(12, 12), (224, 224), (9, 14)])
@pytest.mark.parametrize("shift", [(1, 0), (0, 3), (-5, 7), (31, 31)])
def test_fourier_shift_by_an_integer_is_a_roll(size, shift):
    x = image(*size)
    rolled = torch.roll(x, shifts=shift, dims=(2, 3))
    torch.testing.assert_close(shifts.fourier_shift(x, *shift), rolled, atol=1e-5, rtol=0)
    assert torch.equal(shifts.roll(x, *shift), rolled)


def test_fourier_shift_is_real_and_moves_content_like_roll():
    x = image(8, 8)
    half = shifts.fourier_shift(x, 0.5, 0.0)
    assert half.dtype == x.dtype and half.shape == x.shape
    # Shifting by +d then by -d is the identity on what the shift keeps (all of an odd axis).
    odd = image(9, 9)
    back = shifts.fourier_shift(shifts.fourier_shift(odd, 0.3, -0.7), -0.3, 0.7)
    torch.testing.assert_close(back, odd, atol=1e-5, rtol=0)


def test_two_half_pixel_shifts_compose_to_a_one_pixel_roll():
    odd = image(9, 11)  # no Nyquist coefficient: exact for every image
    twice = shifts.fourier_shift(shifts.fourier_shift(odd, 0.5, 0.5), 0.5, 0.5)
    torch.testing.assert_close(twice, torch.roll(odd, (1, 1), (2, 3)), atol=1e-5, rtol=0)
    # Even sizes: the half shift zeroes the Nyquist component (cos(pi/2) = 0, as AFC's
    # operator does), so the identity holds for images without it.
    even = without_nyquist(image(12, 12))
    twice = shifts.fourier_shift(shifts.fourier_shift(even, 0.5, 0.5), 0.5, 0.5)
    torch.testing.assert_close(twice, torch.roll(even, (1, 1), (2, 3)), atol=1e-5, rtol=0)


def test_per_view_shifts_match_one_at_a_time():
    x = image(10, 10, batch=1)
    dy, dx = torch.tensor([0.0, 1.0, -2.5, 0.25]), torch.tensor([3.0, 0.0, 0.5, -1.0])
    for op in (shifts.fourier_shift, shifts.bilinear_shift):
        views = op(x, dy, dx)
        assert views.shape == (4, 3, 10, 10)
        for b in range(4):
            torch.testing.assert_close(views[b : b + 1], op(x, float(dy[b]), float(dx[b])))
    ints = torch.tensor([0, 1, -3, 9]), torch.tensor([2, 0, 5, -1])
    views = shifts.roll(x, *ints)
    for b in range(4):
        assert torch.equal(views[b], torch.roll(x[0], (int(ints[0][b]), int(ints[1][b])), (1, 2)))


def test_bilinear_shift_by_zero_is_the_identity():
    x = image(13, 17)
    torch.testing.assert_close(shifts.bilinear_shift(x, 0.0, 0.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(shifts.rotate_translate(x, 0.0, 0, 0), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dy, dx", [(1, 0), (0, -2), (3, 4), (-2, -5)])
def test_bilinear_shift_by_an_integer_is_a_zero_filled_translation(dy, dx):
    x = image(16, 16)
    expected = torch.zeros_like(x)
    h, w = x.shape[-2:]
    expected[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    torch.testing.assert_close(shifts.bilinear_shift(x, dy, dx), expected, atol=1e-5, rtol=0)


def test_rotation_by_90_degrees_is_exact_on_the_square_grid():
    x = image(9, 9)
    rotated = shifts.rotate_translate(x, 90.0, 0, 0)
    # Sampling at R(90) p turns the image a quarter turn (one of the two directions).
    candidates = [torch.rot90(x, k, dims=(2, 3)) for k in (1, 3)]
    assert any(torch.allclose(rotated, c, atol=1e-5) for c in candidates)


def test_crops_are_real_content():
    x = image(20, 20, batch=1)
    views = shifts.crops(x, [0, 3, 6], [1, 0, 6], 14)
    assert views.shape == (3, 3, 14, 14)
    assert torch.equal(views[1], x[0, :, 3:17, 0:14])
