"""worst-shift: exhaustive grids, robust = right unshifted and under every shift."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from aabench import shifts
from aabench.suites.worst_shift import WorstShiftSuite
from tests.helpers import GOLDFISH, TABBY, TENCH, make_image_folder, run


def table(suite, records):
    return {(r["metric"], r.get("radius")): r["value"] for r in suite.summarise(records)}


@dataclass
class PerView(WorstShiftSuite):
    """worst-shift keeping every view's record (the engine's records before folding)."""

    def fold_records(self, records):
        return records


def per_view_table(suite, records) -> dict:
    """The table the old way: from every view's record, by the definitions."""
    views = records.assign(correct=records["correct"].astype(bool))
    by_image = views.groupby("sample", sort=False)
    clean = views[views["view"] == 0].set_index("sample")["correct"]
    values = {
        ("robust_accuracy", None): 100 * by_image["correct"].all().mean(),
        ("clean_accuracy", None): 100 * clean.mean(),
    }
    if suite.grid != "spatial":
        for radius in np.unique(views.loc[views["radius"] > 0, "radius"]):
            within = views[views["radius"] <= radius].groupby("sample", sort=False)
            key = int(radius) if float(radius).is_integer() else round(float(radius), 6)
            values[("robust_accuracy", key)] = 100 * within["correct"].all().mean()
    return values


class CircularPool(nn.Module):
    """A 3x3 circular-padded convolution with integer weights, stride 1, then global
    average pooling: exactly invariant to circular shifts on 0/1 inputs (integer sums)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1000, 3, padding=1, padding_mode="circular", bias=False)
        weights = torch.zeros(1000, 3, 3, 3)
        for channel in range(3):  # class c: the density of channel c (and its neighbours)
            weights[channel, channel] = 1.0
            weights[channel, channel, 1, 1] = 2.0
        self.conv.weight.data = weights
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


class CornerRed(nn.Module):
    """Class 0 when the top-left pixel's red is bright, else class 1."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 1000)
        logits[:, 0] = x[:, 0, 0, 0]
        logits[:, 1] = 0.5
        return logits


def binary_noise(density, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.random((size, size, 3)) < np.asarray(density)) * 255).astype(np.uint8)


def test_grid_sizes_are_the_protocols():
    assert WorstShiftSuite().grid_size() == 961
    assert WorstShiftSuite(grid="half").grid_size() == 961
    assert WorstShiftSuite(grid="fraction").grid_size() == 13
    assert WorstShiftSuite(grid="crop", m=3).grid_size() == 4 * 3**2
    assert WorstShiftSuite(grid="spatial").grid_size() == 775
    for grid in ("integer", "half", "fraction", "crop", "spatial"):
        suite = WorstShiftSuite(grid=grid, m=3)
        shifts_ = suite.shift_grid()
        assert len(shifts_["dy"]) == suite.views_per_image()
        assert shifts_["dy"][0] == shifts_["dx"][0] == shifts_["angle"][0] == 0
    half = WorstShiftSuite(grid="half").shift_grid()
    assert set(np.unique(half["dy"][1:])) == {-(i - 0.5) for i in range(1, 32)}
    crop = WorstShiftSuite(grid="crop", m=3).shift_grid()
    assert set(np.unique(crop["dy"][1:])) == {-2, -1, 0, 1, 2, 3}  # i - m, i in {1 .. 2m}
    spatial = WorstShiftSuite(grid="spatial").shift_grid()
    assert np.allclose(np.unique(spatial["angle"]), np.linspace(-30, 30, 31))
    assert np.allclose(np.unique(spatial["dx"]) * 223, np.linspace(-1, 1, 5) * 3 / 28 * 223)
    radius = WorstShiftSuite().shift_grid()["radius"]
    assert (np.diff(radius) >= 0).all()  # ordered by radius


def test_a_circularly_invariant_model_is_as_robust_as_it_is_accurate(tmp_path):
    images = {
        TENCH: [binary_noise((0.8, 0.3, 0.2), seed=1)],
        GOLDFISH: [binary_noise((0.2, 0.7, 0.3), seed=2)],
        TABBY: [binary_noise((0.3, 0.2, 0.9), seed=3)],  # class 2 predicted: wrong
    }
    root = make_image_folder(tmp_path / "noise", images)
    suite = WorstShiftSuite()
    records = run(CircularPool(), suite, root, resize=32, crop=32, batch_size=256).records
    assert len(records) == 3  # one row per image: the 962 views folded on the way out
    assert (records["views"] == 962).all()
    values = table(suite, records)
    assert values[("clean_accuracy", None)] == pytest.approx(200 / 3)
    assert values[("robust_accuracy", None)] == values[("clean_accuracy", None)]


def corner_root(tmp_path):
    image = np.full((32, 32, 3), 255, dtype=np.uint8)
    image[5, 7, 0] = 0  # the one pixel that, rolled to (0, 0), flips the class
    return make_image_folder(tmp_path / "corner", {TENCH: [image]})


def test_the_grid_finds_the_one_failing_shift_and_the_curve_steps_there(tmp_path):
    suite = WorstShiftSuite()
    views = run(CornerRed(), PerView(), corner_root(tmp_path), resize=32, crop=32).records
    failing = views[~views["correct"].astype(bool)]
    # roll by (dy, dx) brings x[-dy, -dx] to (0, 0): (5, 7) for (27, 25) only.
    assert failing[["dy", "dx"]].to_numpy().tolist() == [[27, 25]]
    records = run(CornerRed(), suite, corner_root(tmp_path), resize=32, crop=32).records
    first = records.iloc[0]
    assert (first["clean_correct"], first["robust"]) == (True, False)
    assert (first["first_failure_dy"], first["first_failure_dx"]) == (27, 25)
    assert (first["first_failure_angle"], first["first_failure_radius"]) == (0, 27)
    values = table(suite, records)
    assert values[("clean_accuracy", None)] == 100.0
    assert values[("robust_accuracy", None)] == 0.0
    curve = [values[("robust_accuracy", r)] for r in range(1, 32)]
    assert curve == [100.0] * 26 + [0.0] * 5
    assert curve[-1] == values[("robust_accuracy", None)]


class Pixels(nn.Module):
    """A position-dependent linear model of the whole image."""

    def __init__(self, size=32):
        super().__init__()
        self.linear = nn.Linear(3 * size * size, 1000)
        torch.nn.init.normal_(self.linear.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.linear(x.flatten(1))


@pytest.mark.parametrize("grid", ["fraction", "crop"])
def test_results_do_not_depend_on_the_batch_size_and_the_curve_never_rises(tmp_path, grid):
    rng = np.random.default_rng(0)
    images = {TENCH: [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2)]}
    root = make_image_folder(tmp_path / "noise", images)
    suite = WorstShiftSuite(grid=grid, m=2)
    model = Pixels()
    model.linear.bias.data[0] = 2.0  # class 0 often, not always
    small = run(model, suite, root, batch_size=5).records
    large = run(model, suite, root, batch_size=64).records
    pd.testing.assert_frame_equal(small, large, check_exact=True)
    assert len(small) == 2 and (small["views"] == suite.views_per_image()).all()
    assert table(suite, small) == table(suite, large)
    values = table(suite, small)
    radii = sorted(r for (_, r) in values if r is not None)
    curve = [values[("robust_accuracy", r)] for r in radii]
    assert all(a >= b for a, b in itertools.pairwise(curve))
    assert curve[-1] == values[("robust_accuracy", None)]


def test_device_views_are_the_shift_operators():
    image = torch.rand(1, 3, 12, 12) * 255
    fraction = WorstShiftSuite(grid="fraction")
    meta = fraction.views(image[0].to(torch.uint8), None, 0, 0).meta
    made = fraction.device_views(image, meta)
    assert torch.equal(made[0], image[0])  # the reference exactly
    for v in range(1, len(made)):
        expected = shifts.fourier_shift(image, float(meta["dy"][v]), float(meta["dx"][v]))
        torch.testing.assert_close(made[v : v + 1], expected)
    crop = WorstShiftSuite(grid="crop", m=2)
    source = torch.rand(1, 3, 16, 16)  # a 12 crop plus 2m
    meta = crop.views(source[0], None, 0, 0).meta
    made = crop.device_views(source, meta)
    assert made.shape == (17, 3, 12, 12)
    assert torch.equal(made[0], source[0, :, 2:14, 2:14])
    for v in range(1, 17):
        i, j = int(meta["dy"][v]) + 2, int(meta["dx"][v]) + 2
        assert 1 <= i <= 4 and 1 <= j <= 4
        assert torch.equal(made[v], source[0, :, i : i + 12, j : j + 12])


class Brightness(nn.Module):
    """Class 0 when the image is bright enough, the threshold nudged by each pixel: some
    images right under every shift, some only under some, some never."""

    def __init__(self, size=32):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.nudge = torch.randn(3 * size * size, generator=generator) / (3 * size * size)

    def forward(self, x):
        logits = torch.full((x.shape[0], 1000), -100.0)
        logits[:, 1] = 0.0
        logits[:, 0] = x.flatten(1).mean(1) - 0.45 + 20 * x.flatten(1) @ self.nudge
        return logits


@pytest.mark.parametrize("grid", ["fraction", "crop", "spatial"])
def test_folded_records_give_the_table_of_every_views_records(tmp_path, grid):
    rng = np.random.default_rng(1)
    images = {
        TENCH: [
            rng.integers(lo, lo + 80, (40, 40, 3), dtype=np.uint8)
            for lo in (20, 70, 74, 78, 82, 170)
        ]
    }
    root = make_image_folder(tmp_path / "noise", images)
    parameters = {"grid": grid, "m": 2, "angles": 3, "translations": 3}
    suite = WorstShiftSuite(**parameters)
    model = Brightness()
    folded = run(model, suite, root, batch_size=7).records
    views = run(model, PerView(**parameters), root, batch_size=7).records
    assert len(folded) == 6 and len(views) == 6 * suite.views_per_image()
    assert 0 < folded["robust"].sum() < folded["clean_correct"].sum() <= 6
    expected = per_view_table(suite, views)
    assert table(suite, folded) == pytest.approx(expected, abs=1e-12)
    assert table(suite, folded) == table(suite, views)  # per-view records fold on the way
    pd.testing.assert_frame_equal(suite.fold_records(views), folded, check_exact=True)
    robust = folded["robust"].to_numpy()
    assert folded.loc[robust, [c for c in folded if c.startswith("first_")]].isna().all().all()
    first = folded.loc[~robust].iloc[0]
    image = views[views["sample"] == first["sample"]]
    failing = image[~image["correct"].astype(bool)].iloc[0]
    for key in ("dy", "dx", "angle"):
        assert first[f"first_failure_{key}"] == failing[key]


def test_folding_keeps_the_columns_of_no_records():
    suite = WorstShiftSuite(grid="fraction")
    empty = pd.DataFrame(
        {
            "sample": [],
            "view": [],
            "label": [],
            "correct": [],
            **{key: [] for key in ("dy", "dx", "angle", "radius", "reference")},
        }
    )
    folded = suite.fold_records(empty)
    assert folded.empty and "robust" in folded and "views" in folded


def test_views_are_folded_as_soon_as_their_image_is_finished(tmp_path, monkeypatch):
    """Without checkpoints too: the engine never holds the views of finished images."""
    rng = np.random.default_rng(2)
    images = {TENCH: [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(6)]}
    root = make_image_folder(tmp_path / "noise", images)
    suite = WorstShiftSuite(grid="fraction")  # 14 views an image
    folded_sizes = []
    real_fold = WorstShiftSuite.fold_records

    def recording(self, records):
        folded_sizes.append(len(records))
        return real_fold(self, records)

    monkeypatch.setattr(WorstShiftSuite, "fold_records", recording)
    evaluation = run(Brightness(), suite, root, batch_size=4)
    assert sum(folded_sizes) == 6 * 14 and max(folded_sizes) <= 2 * 14
    assert len(evaluation.records) == 6 and evaluation.views == 6 * 14
    assert evaluation.finished.record_positions.tolist() == list(range(6))
