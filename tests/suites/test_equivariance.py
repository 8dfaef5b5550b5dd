"""The equivariance suite through the engine: exact zeros where the network commutes with
shifts, aliasing where it subsamples, anti-aliasing lowering the profile, and the
records, table and batching the engine promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions, evaluate
from aabench.errors import UserError
from aabench.models.zoo import create_model
from aabench.suites.equivariance import EquivarianceSuite, column, layers_in
from tests.helpers import TABBY, Recording, loaded, noise_folder, run


@pytest.fixture(scope="module")
def noise(tmp_path_factory):
    return noise_folder(tmp_path_factory.mktemp("noise") / "val", {TABBY: [(32, 32)] * 2})


@pytest.fixture(scope="module")
def noise64(tmp_path_factory):
    return noise_folder(tmp_path_factory.mktemp("noise64") / "val", {TABBY: [(64, 64)] * 2})


def records_of(module, suite, data, size=32, **options):
    return run(module, suite, data, resize=size, crop=size, **options).records


def circular_convolutions() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(6, 6, 5, padding=2, padding_mode="circular"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 1000),
    )


def test_stride_1_circular_convolutions_are_equivariant_at_every_layer(noise):
    suite = EquivarianceSuite(max_shift=4, layers="0,1,2,5:input")
    records = records_of(circular_convolutions(), suite, noise)
    assert layers_in(records) == ["0", "1", "2", "5:input"]
    distances = records[[c for c in records.columns if "[" in c]].to_numpy()
    assert distances.shape == (2 * 16, 8)
    assert np.abs(distances).max() < 1e-6


def test_stride_2_subsampling_is_equivariant_at_even_shifts_only(noise):
    subsample = nn.Sequential(nn.MaxPool2d(kernel_size=1, stride=2))  # x[::2, ::2]
    records = records_of(subsample, EquivarianceSuite(max_shift=4), noise)
    assert layers_in(records) == ["0"]
    even = (records["dh"] % 2 == 0) & (records["dw"] % 2 == 0)
    for metric in ("l2_distance", "cosine_distance"):
        values = records[column(metric, "0")]
        assert values[even].abs().max() < 1e-6
        assert values[~even].min() > 1e-2  # uniform noise: far from band-limited


def profile(name: str, data) -> dict[int, float]:
    module = create_model(name, weights="none", init_seed=0).module
    suite = EquivarianceSuite(max_shift=2, heatmap="none")
    rows = suite.summarise(records_of(module, suite, data, size=64))
    return {
        int(row["depth"]): row["value"]
        for row in rows
        if row["metric"] == "l2_distance" and "depth" in row
    }


def test_anti_aliased_resnet18_is_closer_to_equivariant_after_its_first_downsampling(noise64):
    # Random (seeded) weights, 2 noise images, shifts {0, 1}^2 at 64 x 64. Depth 1 is
    # the plain stride-2 conv1 in both; from depth 2 on (maxpool vs MaxPool(stride
    # 1) + BlurPool, and every later downsampling) the blurred network's features
    # follow the shift more closely, down to the final pooled feature.
    baseline, blurred = profile("resnet18", noise64), profile("resnet18_aa", noise64)
    assert sorted(baseline) == sorted(blurred) == list(range(1, 10))
    for depth in range(2, 10):
        assert blurred[depth] < baseline[depth], depth


def test_the_layers_it_measures_are_the_models_own_batchnorms_not_folded(noise, monkeypatch):
    # Folding a BN into its conv would make the conv's output the BN's: the suite keeps
    # the model as it is whatever the device's default, and would measure otherwise.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1000),
    ).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1.0, 1.0)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.2, 3.0)
        model[1].bias.uniform_(-1.0, 1.0)
    suite = EquivarianceSuite(max_shift=2, layers="0")
    kept = records_of(model, suite, noise, fold_batchnorm=False)
    pd.testing.assert_frame_equal(records_of(model, suite, noise), kept)
    monkeypatch.setattr(EquivarianceSuite, "observes_layers", False)
    folded = records_of(model, suite, noise, fold_batchnorm=True)
    distances = [c for c in kept.columns if "[" in c]
    assert not np.allclose(folded[distances], kept[distances])


def test_table_rows_per_layer_and_the_heatmap_of_depth_2(noise):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 1000),
    )
    suite = EquivarianceSuite(max_shift=3)
    records = records_of(model, suite, noise)
    assert list(records[["dh", "dw"]].itertuples(index=False, name=None))[:9] == [
        (dh, dw) for dh in range(3) for dw in range(3)
    ]
    rows = pd.DataFrame(suite.summarise(records))
    assert set(rows["n"]) == {2}
    overall = rows[rows["layer"].isna()]
    assert list(overall["metric"]) == ["l2_distance", "cosine_distance"]
    per_layer = rows[rows["layer"].notna() & rows["dh"].isna()]
    assert list(zip(per_layer["layer"], per_layer["depth"], strict=True))[::2] == [
        ("0", 1),
        ("1", 2),
        ("3:input", 3),
    ]
    heatmap = rows[rows["dh"].notna()]
    assert set(heatmap["layer"]) == {"1"} and len(heatmap) == 2 * 9
    # Every number is a mean over images and offsets of the samples file's columns.
    l2 = per_layer[per_layer["metric"] == "l2_distance"].set_index("layer")["value"]
    assert l2["1"] == pytest.approx(records[column("l2_distance", "1")].mean())
    assert overall["value"].iloc[0] == pytest.approx(l2.mean())
    cell = heatmap[
        (heatmap["metric"] == "l2_distance") & (heatmap["dh"] == 1) & (heatmap["dw"] == 2)
    ]
    chosen = records[(records["dh"] == 1) & (records["dw"] == 2)]
    assert cell["value"].item() == pytest.approx(chosen[column("l2_distance", "1")].mean())


def test_passes_hold_exactly_batch_size_views_and_records_do_not_depend_on_it(noise):
    # 2 images x 16 views in passes of 5: the reference of an image (its (0, 0) view)
    # is carried from one pass to the next.
    recording = Recording(circular_convolutions()[:3].append(nn.MaxPool2d(1, stride=2)))
    suite = EquivarianceSuite(max_shift=4)
    small = records_of(recording, suite, noise, batch_size=5)
    assert recording.batch_sizes == [1] + [5] * 6 + [2]  # the layer probe, then the passes
    whole = records_of(recording, suite, noise, batch_size=32)
    pd.testing.assert_frame_equal(small, whole, atol=1e-6, rtol=0)
    assert layers_in(small) == ["inner.3"]
    assert small[column("l2_distance", "inner.3")].max() > 1e-2


def test_a_shard_starting_mid_run_gives_the_same_records(noise):
    folder = open_image_folder(noise)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    suite = EquivarianceSuite(max_shift=2)
    whole = records_of(model, suite, folder, batch_size=4)
    options = EngineOptions(device="cpu", batch_size=4, workers=0, quiet=True)
    second = evaluate(loaded(model, 32, 32), suite, folder, options, positions=[1]).records
    expected = whole[whole["sample"] == second["sample"].iloc[0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(second, expected)


def test_bad_choices_stop_the_run_on_its_first_pass(noise):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1))
    with pytest.raises(
        UserError, match="heatmap='conv9' is not a measured layer: the layers are 0"
    ):
        records_of(model, EquivarianceSuite(max_shift=2, heatmap="conv9"), noise)
    with pytest.raises(UserError, match="no module 'O'"):
        records_of(model, EquivarianceSuite(max_shift=2, layers="O"), noise)
    with pytest.raises(UserError, match="max_shift must be at least 1"):
        EquivarianceSuite(max_shift=0)


def test_the_report_draws_the_profile_and_the_heatmap(noise):
    from aabench.results.compare import RunTables
    from aabench.results.plots import EQUIVARIANCE_HEATMAP, EQUIVARIANCE_PROFILE, all_plots
    from aabench.results.table import tidy_table

    suite = EquivarianceSuite(max_shift=2)
    runs = []
    for label, stride in (("strided", 2), ("pooled", 1)):
        model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=stride, padding=1), nn.AvgPool2d(2))
        rows = suite.summarise(records_of(model, suite, noise))
        table = tidy_table(rows, run_id=label, model=label, weights="none", suite=suite)
        runs.append(RunTables(label, table))
    plots = all_plots(runs)
    assert [title for title, _ in plots] == [EQUIVARIANCE_PROFILE, EQUIVARIANCE_HEATMAP]
    assert all(png.startswith(b"\x89PNG") for _, png in plots)
