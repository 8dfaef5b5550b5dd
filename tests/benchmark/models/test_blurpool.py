import math

import pytest
import torch
import torch.nn.functional as F

from aabench.errors import UserError
from aabench.models.blurpool import BlurPool, binomial_filter

# Rows of Pascal's triangle, written out by hand (the paper's Rect-2, Tri-3, Tri-4, Bin-5).
ROWS = {
    1: [1],
    2: [1, 1],
    3: [1, 2, 1],
    4: [1, 3, 3, 1],
    5: [1, 4, 6, 4, 1],
    6: [1, 5, 10, 10, 5, 1],
    7: [1, 6, 15, 20, 15, 6, 1],
}


@pytest.mark.parametrize("k", sorted(ROWS))
def test_filter_is_normalised_outer_product_of_binomial_row(k):
    row = torch.tensor(ROWS[k], dtype=torch.float64)
    expected = torch.outer(row, row) / row.sum() ** 2
    assert torch.allclose(binomial_filter(k).double(), expected, atol=1e-7)
    assert binomial_filter(k).dtype == torch.float32


@pytest.mark.parametrize("k", sorted(ROWS))
def test_filt_is_a_persistent_per_channel_buffer(k):
    pool = BlurPool(5, filter_size=k)
    state = pool.state_dict()
    assert list(state) == ["filt"]
    assert state["filt"].shape == (5, 1, k, k)
    assert list(pool.parameters()) == []


@pytest.mark.parametrize("k", sorted(ROWS))
@pytest.mark.parametrize("size", [56, 57, 8, 9])
def test_output_is_ceil_half_for_every_filter_size(k, size):
    out = BlurPool(3, filter_size=k)(torch.randn(2, 3, size, size + 1))
    assert out.shape == (2, 3, math.ceil(size / 2), math.ceil((size + 1) / 2))


def test_k1_is_plain_subsampling():
    x = torch.randn(1, 2, 7, 6)
    assert torch.equal(BlurPool(2, filter_size=1)(x), x[:, :, ::2, ::2])


def test_even_filter_pads_one_more_on_the_bottom_right():
    # k = 2 pads (0, 1): the output at (0, 0) averages rows/cols 0..1 and the last output
    # row of an odd-sized map averages the last row with its reflection (= the row before).
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
    out = BlurPool(1, filter_size=2)(x)
    assert out[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 5 + 6) / 4)
    # last row index 4 reflected -> row 3; columns 0..1
    assert out[0, 0, 2, 0].item() == pytest.approx((20 + 21 + 15 + 16) / 4)


def test_tri4_on_a_hand_example():
    # A single bright pixel: the blurred, subsampled map holds the filter's taps.
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 64.0
    out = BlurPool(1, filter_size=4, pad_type="zero")(x)
    # k = 4 pads (1, 2); output (i, j) covers padded rows 2i..2i+3 = input rows 2i-1..2i+2.
    # Pixel 4 sits at tap 4-(2i-1) = 5-2i: i=1 -> tap 3 (weight 1), i=2 -> tap 1 (weight 3).
    taps = {1: 1.0, 2: 3.0}
    for i in range(4):
        for j in range(4):
            expected = 64.0 * taps.get(i, 0.0) * taps.get(j, 0.0) / 64.0
            assert out[0, 0, i, j].item() == pytest.approx(expected)


@pytest.mark.parametrize("pad_type, mode", [("replicate", "replicate"), ("zero", "constant")])
def test_other_padding_modes(pad_type, mode):
    x = torch.randn(1, 3, 9, 9)
    pool = BlurPool(3, filter_size=3, pad_type=pad_type)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), pool.filt, stride=2, groups=3)
    assert torch.allclose(pool(x), expected)


def test_reflect_on_too_small_a_map_is_a_clear_error():
    with pytest.raises(UserError, match="larger input"):
        BlurPool(4, filter_size=5)(torch.randn(1, 4, 2, 2))


def test_bad_arguments():
    with pytest.raises(UserError, match=r"1\.\.7"):
        BlurPool(4, filter_size=8)
    with pytest.raises(UserError, match="padding"):
        BlurPool(4, pad_type="circular")
