import math

import pytest
import torch
import torch.nn.functional as F

from aabench.errors import UserError
from aabench.models import blurpool
from aabench.models.blurpool import (
    FASTEST,
    FORMS,
    BlurPool,
    ShiftedMaxPool2d,
    binomial_filter,
    use_form,
)

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


# The forms: each computes the reference's blur + subsample to float rounding.

FAST_FORMS = [form for form in FORMS if form != "reference"]


@pytest.mark.parametrize("form", FAST_FORMS)
@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("pad_type", ["reflect", "replicate", "zero"])
def test_every_form_computes_the_reference_output(form, k, pad_type):
    x = torch.randn(2, 3, 13, 16, generator=torch.Generator().manual_seed(k))
    pool = BlurPool(3, filter_size=k, pad_type=pad_type)
    reference = pool(x)
    assert use_form(pool, form) == {form: 1}
    fast = pool(x)
    assert fast.shape == reference.shape
    assert (fast - reference).abs().max().item() <= 1e-6 * reference.abs().max().item()
    # channels-last input gives the same numbers
    assert torch.allclose(pool(x.contiguous(memory_format=torch.channels_last)), fast, atol=1e-6)


@pytest.mark.parametrize("form", FAST_FORMS)
@pytest.mark.parametrize("stride", [1, 3])
def test_forms_agree_for_other_strides(form, stride):
    x = torch.randn(1, 2, 11, 10, generator=torch.Generator().manual_seed(stride))
    pool = BlurPool(2, filter_size=4, stride=stride)
    reference = pool(x)
    use_form(pool, form)
    assert torch.allclose(pool(x), reference, atol=1e-6)


def test_a_filter_that_is_not_binomial_keeps_the_reference_form_under_auto():
    """A checkpoint may carry any ``filt``: a named form refuses one it cannot compute,
    auto falls back to the reference for that module alone."""
    model = torch.nn.Sequential(BlurPool(2, filter_size=3), BlurPool(2, filter_size=3))
    with torch.no_grad():
        model[1].filt[:, :, 0, 0] += 0.5  # neither binomial nor separable any more
    fastest = dict(FASTEST)
    try:
        FASTEST[("cpu", False)] = "cascade"
        assert use_form(model, "auto", "cpu", channels_last=False) == {
            "cascade": 1,
            "reference": 1,
        }
    finally:
        FASTEST.clear()
        FASTEST.update(fastest)
    for form in ("separable", "cascade"):
        with pytest.raises(UserError, match=rf"--blurpool {form} cannot compute the filter of 1"):
            use_form(model, form)
    # The fused form convolves with ``filt`` itself, whatever it holds.
    x = torch.randn(1, 2, 70, 70, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    assert use_form(model, "fused") == {"fused": 2}
    assert torch.allclose(model(x), reference, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="unknown --blurpool 'fast'"):
        use_form(model, "fast")


def test_separable_needs_only_a_rank_one_filter():
    pool = BlurPool(1, filter_size=3)
    with torch.no_grad():
        row = torch.tensor([0.2, 0.5, 0.3])
        pool.filt.copy_(torch.outer(row, row)[None, None])
    assert pool.supports("separable") and not pool.supports("cascade")


# The fused form: a zero-padded convolution with the border strips computed again.


@pytest.fixture
def fuse_every_map(monkeypatch):
    """Fuse the pad on maps of any size, so that small test maps take the strips' path."""
    monkeypatch.setattr(blurpool, "FUSED_MIN_SIDE", 1)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize("pad_type", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_fused_strips_compute_the_reference_output(fuse_every_map, k, pad_type, stride):
    # Odd and even sides, and maps just large enough for reflection (k = 7 pads 3).
    for height, width in [(13, 16), (16, 13), (8, 9), (4, 5), (111, 7)]:
        x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(k))
        pool = BlurPool(3, filter_size=k, stride=stride, pad_type=pad_type)
        reference = pool(x)
        use_form(pool, "fused")
        for layout in (torch.contiguous_format, torch.channels_last):
            fused = pool(x.contiguous(memory_format=layout))
            assert fused.shape == reference.shape, (height, width)
            error = (fused - reference).abs().max().item()
            assert error <= 1e-6 * reference.abs().max().item(), (height, width, layout)


def test_fused_pads_only_strips_of_a_large_map(monkeypatch):
    """Above FUSED_MIN_SIDE the whole map is never padded: only the first and last
    output rows and columns (k = 4, stride 2) are computed from padded strips."""
    padded = []
    pad = F.pad

    def recording_pad(x, *args, **kwargs):
        padded.append(tuple(x.shape))
        return pad(x, *args, **kwargs)

    monkeypatch.setattr(F, "pad", recording_pad)
    x = torch.randn(1, 2, 65, 64)
    pool = BlurPool(2)
    use_form(pool, "fused")
    out = pool(x)
    # 65 rows: a zero-padded convolution gives 32 of the 33 output rows, so its output
    # (1 x 2 x 32 x 32) is padded to 33; then the strips: rows 0..2 (top), rows 61..64
    # (the last output row reflects 2 rows below the map, so the strip starts one output
    # row earlier to hold their sources), columns 0..2 and 61..63.
    assert padded == [(1, 2, 32, 32), (1, 2, 3, 64), (1, 2, 4, 64), (1, 2, 65, 3), (1, 2, 65, 3)]
    assert out.shape == (1, 2, 33, 32)
    padded.clear()
    pool(x[:, :, :63, :63])  # below FUSED_MIN_SIDE: the reference's single pad
    assert padded == [(1, 2, 63, 63)]


def test_fused_keeps_the_input_memory_format():
    x = torch.randn(2, 4, 70, 71).contiguous(memory_format=torch.channels_last)
    pool = BlurPool(4)
    use_form(pool, "fused")
    assert pool(x).is_contiguous(memory_format=torch.channels_last)
    assert pool(x.contiguous()).is_contiguous()


# The 2 x 2 stride-1 max pools before the BlurPools, computed as shifted maxima.


def awkward_values(*shape: int) -> torch.Tensor:
    """Ties, signed zeros, infinities and NaNs among random values."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).round(decimals=1)
    flat = x.view(-1)
    flat[::7] = 0.0
    flat[3::11] = -0.0
    flat[5::13] = float("inf")
    flat[6::17] = float("-inf")
    flat[2::19] = float("nan")
    return x


@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (1, 5, 2, 2), (3, 7, 6), (2, 16, 37, 40)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shifted_max_is_bit_identical_to_max_pool2d(shape, channels_last):
    x = awkward_values(*shape)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = F.max_pool2d(x, kernel_size=2, stride=1)
    got = ShiftedMaxPool2d(kernel_size=2, stride=1)(x)
    assert got.shape == expected.shape
    assert torch.equal(got.isnan(), expected.isnan())
    # Equal values (torch.equal counts -0 == +0: where they tie, the sign of the zero
    # may differ, which no later sum, product or comparison can tell apart).
    assert torch.equal(got.nan_to_num(), expected.nan_to_num())
    assert (got == expected).sum() + got.isnan().sum() == got.numel()


def test_use_form_switches_the_2x2_stride_1_max_pools_and_back():
    model = torch.nn.Sequential(
        torch.nn.MaxPool2d(kernel_size=2, stride=1),
        BlurPool(2),
        torch.nn.MaxPool2d(kernel_size=(2, 2), stride=(1, 1)),
        torch.nn.MaxPool2d(kernel_size=3, stride=1),  # not 2 x 2: left alone
        torch.nn.MaxPool2d(kernel_size=2, stride=2),  # strided: left alone
        torch.nn.MaxPool2d(kernel_size=2, stride=1, padding=1),  # padded: left alone
    )
    keys = list(model.state_dict())
    assert use_form(model, "fused") == {"fused": 1, "shifted_max": 2}
    assert [type(m).__name__ for m in model] == [
        "ShiftedMaxPool2d", "BlurPool", "ShiftedMaxPool2d", "MaxPool2d", "MaxPool2d", "MaxPool2d",
    ]  # fmt: skip
    assert list(model.state_dict()) == keys
    # The reference is today's computation throughout.
    assert use_form(model, "reference") == {"reference": 1}
    assert [type(m) for m in model if type(m) is not BlurPool] == [torch.nn.MaxPool2d] * 5
    # auto takes the measured tables of the device.
    fastest, shifted = dict(FASTEST), dict(blurpool.SHIFTED_MAX_FASTER)
    try:
        FASTEST[("cpu", True)] = "separable"
        blurpool.SHIFTED_MAX_FASTER[("cpu", True)] = False
        assert use_form(model, "auto", "cpu", channels_last=True) == {"separable": 1}
        assert type(model[0]) is torch.nn.MaxPool2d
        blurpool.SHIFTED_MAX_FASTER[("cpu", True)] = True
        assert use_form(model, "auto", "cpu", True) == {"separable": 1, "shifted_max": 2}
        assert use_form(model, "auto", "meta", True) == {"reference": 1}  # not measured
    finally:
        FASTEST.clear()
        FASTEST.update(fastest)
        blurpool.SHIFTED_MAX_FASTER.clear()
        blurpool.SHIFTED_MAX_FASTER.update(shifted)


def test_an_antialiased_resnet_gives_the_same_logits_in_every_form(fuse_every_map):
    from aabench.models.antialiased import build_antialiased

    model = build_antialiased("resnet18", 4).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(x)
        for form in FAST_FORMS:
            assert use_form(model, form) == {form: 7, "shifted_max": 1}
            error = (model(x) - reference).abs().max().item()
            assert error <= 1e-5 * reference.abs().max().item(), form


@pytest.mark.parametrize("shape", [(1, 2, 1, 5), (1, 2, 5, 1)])
def test_shifted_max_of_a_map_without_a_window_fails_as_max_pool2d(shape):
    x = torch.zeros(shape)
    with pytest.raises(RuntimeError) as expected:
        F.max_pool2d(x, kernel_size=2, stride=1)
    with pytest.raises(RuntimeError) as got:
        ShiftedMaxPool2d(kernel_size=2, stride=1)(x)
    assert str(got.value) == str(expected.value)
