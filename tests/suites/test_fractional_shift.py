"""Fractional-shift consistency: exact invariance of a circular linear model, the draw,
and MAC defined against the unshifted view's top-1."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.errors import UserError
from aabench.suites.fractional_shift import FractionalShiftSuite
from tests.helpers import TABBY, TENCH, make_image_folder, run


class CircularLinear(nn.Module):
    """3x3 circular convolution, stride 1, global average pooling, linear: every layer
    commutes with a circular Fourier shift and the pooling keeps only the DC term."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular")
        self.head = nn.Linear(8, 1000)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


class Strided(nn.Module):
    """CircularLinear on every second row and column: stride 2, so not invariant."""

    def __init__(self):
        super().__init__()
        self.inner = CircularLinear()

    def forward(self, x):
        return 50 * self.inner(x[:, :, ::2, ::2])  # sharper softmax


@pytest.fixture
def noise(tmp_path):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    return make_image_folder(tmp_path / "noise", {TENCH: images[:2], TABBY: images[2:]})


def summary(suite, records):
    return {row["metric"]: row["value"] for row in suite.summarise(records)}


def test_a_circular_invariant_model_is_fourier_consistent_with_mac_near_zero(noise):
    suite = FractionalShiftSuite(max_shift=8, draws=2)
    records = run(CircularLinear(), suite, noise).records
    assert len(records) == 3 * 3
    metrics = summary(suite, records)
    assert metrics["consistency"] == 100.0
    assert metrics["mac"] <= 1e-4  # percentage points: float32 rounding only
    assert metrics["accuracy"] == metrics["clean_accuracy"]


def test_bilinear_black_fill_and_a_strided_model_do_change_the_probability(noise):
    bilinear = FractionalShiftSuite(max_shift=8, operator="bilinear")
    assert (
        summary(bilinear, run(CircularLinear(), bilinear, noise).records)["mac"] > 1e-3
    )  # ten times the invariant tolerance
    fourier = FractionalShiftSuite(max_shift=8)
    assert (
        summary(fourier, run(Strided(), fourier, noise).records)["mac"] > 1e-3
    )  # ten times the invariant tolerance


def test_the_draw_is_afcs_half_pixel_grid_in_the_roll_convention():
    suite = FractionalShiftSuite(draws=4000)
    sample = open_image_folder("sample").samples[0]
    drawn = suite.offsets(sample, seed=0)
    # AFC shifts content by s + 1/2 toward negative indices, s in {-32..31}^2.
    assert set(np.unique(-drawn - 0.5)) == set(range(-32, 32))


def test_views_are_the_unshifted_crop_and_its_fourier_shift():
    suite = FractionalShiftSuite(max_shift=4, fraction=0.0)
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    sample = open_image_folder("sample").samples[0]
    views = suite.views(image, sample, 0, seed=3)
    assert views.images.dtype == torch.float32
    assert torch.equal(views.images[0], image.float())
    dy, dx = int(views.meta["dy"][1]), int(views.meta["dx"][1])
    torch.testing.assert_close(
        views.images[1], torch.roll(image.float(), (dy, dx), dims=(1, 2)), atol=1e-3, rtol=0
    )
    assert views.meta["ref"].tolist() == [0, 0]


def test_mac_is_the_change_of_the_unshifted_top1_probability():
    records = pd.DataFrame(
        {
            "sample": ["a", "a", "b", "b"],
            "draw": [-1, 0, -1, 0],
            "pred": [5, 7, 2, 2],
            "correct": [True, False, False, False],
            "p_top": [0.6, 0.5, 0.4, 0.3],
            "p_ref": [0.6, 0.2, 0.4, 0.3],  # p(unshifted top-1 | view)
        }
    )
    metrics = summary(FractionalShiftSuite(), records)
    assert metrics["mac"] == pytest.approx(100 * (0.4 + 0.1) / 2)
    assert metrics["consistency"] == 50.0
    assert metrics["clean_accuracy"] == 50.0
    assert metrics["accuracy"] == 0.0
    assert metrics["degradation"] == 100.0


def test_draws_are_per_image_whatever_the_batch_size(noise):
    suite = FractionalShiftSuite(max_shift=8)
    one = run(CircularLinear(), suite, noise, batch_size=1).records
    many = run(CircularLinear(), suite, noise, batch_size=16).records
    pd.testing.assert_frame_equal(one[["sample", "dy", "dx"]], many[["sample", "dy", "dx"]])
    assert (one["pred"] == many["pred"]).all()
    other = run(CircularLinear(), suite, noise, seed=1).records
    assert not one[["dy", "dx"]].equals(other[["dy", "dx"]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"operator": "lanczos"}, "operator must be one of fourier, bilinear"),
        ({"draws": 0}, "draws must be at least 1"),
        ({"fraction": 1.0}, r"fraction must be in \[0, 1\)"),
    ],
)
def test_invalid_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        FractionalShiftSuite(**kwargs)
