"""Published reference tables: complete, exact, typed, and loaded as package data."""

from __future__ import annotations

import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.published import published_names, published_table

HEADLINE_ARCHS = (
    "alexnet",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
    "mobilenet_v2",
)
FROM_SCRATCH_ARCHS = (
    "alexnet",
    "vgg16",
    "vgg16_bn",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "densenet121",
    "mobilenet_v2",
)
COMMON_CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
FIXED = ["model", "weights", "suite", "metric", "value", "unit", "higher_is_better", "n", "source"]


def value(table: pd.DataFrame, **where) -> float:
    mask = pd.Series(True, index=table.index)
    for column, wanted in where.items():
        mask &= table[column] == wanted
    found = table.loc[mask, "value"]
    assert len(found) == 1, where
    return float(found.iloc[0])


NAMES = ["antialiased-cnns", "imagenet-c", "imagenet-p", "spatial-pytorch"]


def test_names():
    assert published_names() == NAMES


def test_unknown_name_is_a_user_error_that_lists_the_names():
    with pytest.raises(
        UserError, match="antialiased-cnns, imagenet-c, imagenet-p, spatial-pytorch"
    ):
        published_table("imagenet-x")
    with pytest.raises(UserError):
        published_table("../published/imagenet-c")


def test_name_may_carry_the_csv_suffix():
    assert published_table("imagenet-p.csv").equals(published_table("imagenet-p"))


@pytest.mark.parametrize(
    "name", ["antialiased-cnns", "imagenet-c", "imagenet-p", "spatial-pytorch"]
)
def test_tables_are_typed_like_run_tables(name):
    table = published_table(name)
    assert list(table.columns[: len(FIXED)]) == FIXED
    assert table["value"].dtype == float
    assert table["higher_is_better"].dtype == bool
    assert str(table["n"].dtype) == "Int64"
    assert table[["model", "weights", "suite", "metric", "unit", "source"]].notna().all().all()
    assert (table["unit"] == "%").all()
    assert table["value"].between(0, 100).all()
    dimensions = [c for c in table.columns if c not in FIXED]
    assert not table.duplicated(["model", "weights", "suite", "metric", *dimensions]).any()


def test_every_headline_row_is_present():
    table = published_table("antialiased-cnns")
    headline = table[table["source"] == "Zhang 2019, antialiased-cnns README"]
    assert len(headline) == 23 * 2 * 2
    for arch in HEADLINE_ARCHS:
        for model, weights in (
            (arch, "torchvision IMAGENET1K_V1"),
            (f"{arch}_aa", f"{arch}_lpf4_finetune"),
        ):
            rows = headline[(headline["model"] == model) & (headline["weights"] == weights)]
            assert sorted(zip(rows["suite"], rows["metric"], strict=True)) == [
                ("accuracy", "top1"),
                ("shift", "consistency"),
            ], model
    assert (headline["n"] == 50000).all()
    assert headline["higher_is_better"].all()


def test_every_from_scratch_row_is_present_without_the_baseline_column():
    table = published_table("antialiased-cnns")
    scratch = table[table["source"] != "Zhang 2019, antialiased-cnns README"]
    assert len(scratch) == 9 * 4 * 2
    expected = {
        (f"{arch}_aa{k}", f"{arch}_lpf{k}") for arch in FROM_SCRATCH_ARCHS for k in (2, 3, 4, 5)
    }
    assert set(zip(scratch["model"], scratch["weights"], strict=True)) == expected
    assert len(table) == 23 * 4 + 9 * 8


def test_spot_values_of_antialiased_cnns():
    table = published_table("antialiased-cnns")
    assert value(table, model="resnet50_aa", metric="top1") == 77.41
    assert value(table, model="resnet50_aa", metric="consistency") == 91.32
    assert value(table, model="resnet50", metric="top1") == 76.16
    assert value(table, model="resnet50", metric="consistency") == 89.20
    assert value(table, model="vgg16_bn_aa3", metric="top1") == 73.91
    assert value(table, model="vgg16_bn_aa3", metric="consistency") == 91.10
    assert value(table, model="alexnet_aa2", metric="top1") == 57.24  # Rect-2
    assert value(table, model="mobilenet_v2_aa5", metric="consistency") == 87.79  # Bin-5
    assert value(table, model="resnext101_32x8d_aa", metric="top1") == 79.33
    assert value(table, model="densenet161", metric="consistency") == 90.82


def test_imagenet_c_alexnet_errors():
    table = published_table("imagenet-c")
    errors = table[(table["model"] == "alexnet") & (table["metric"] == "error")]
    assert len(errors) == 19 * 5
    assert set(errors["corruption"]) == set(COMMON_CORRUPTIONS + EXTRA_CORRUPTIONS)
    assert sorted(set(errors["severity"])) == [1, 2, 3, 4, 5]
    assert str(table["severity"].dtype) == "Int64"
    assert not errors["higher_is_better"].any()
    assert value(errors, corruption="gaussian_noise", severity=1) == 69.528
    assert value(errors, corruption="saturate", severity=5) == 82.26
    assert value(errors, corruption="elastic_transform", severity=3) == 55.686
    assert value(table, model="alexnet", metric="clean_error") == 43.478
    # Transcription check: the published unnormalised mean error over the 15 common ones.
    common = errors[errors["corruption"].isin(COMMON_CORRUPTIONS)]
    mean = common.groupby("corruption")["value"].mean().mean()
    assert mean == pytest.approx(78.8993, abs=5e-5)
    assert value(table, model="alexnet", metric="mean_error") == 78.8993


def test_imagenet_c_anchor_rows_have_no_dimensions():
    table = published_table("imagenet-c")
    anchors = table[table["metric"] != "error"]
    assert anchors[["corruption", "severity"]].isna().all().all()
    assert value(table, model="resnet50", metric="mce") == 76.7
    assert value(table, model="resnet50", metric="clean_error") == 23.85


def test_imagenet_p_anchors():
    table = published_table("imagenet-p")
    assert value(table, model="resnet50", metric="mfr") == 58.0
    assert value(table, model="resnet50", metric="mt5d") == 78.4
    assert value(table, model="resnet50_aa5", metric="mfr") == 51.2
    assert value(table, model="resnet50_aa5", metric="mt5d") == 71.9
    assert (table.loc[table["model"] == "resnet50_aa5", "weights"] == "resnet50_lpf5").all()
    assert not table["higher_is_better"].any()
    assert table["n"].isna().all()  # the sources do not say


# shift-protocols.md §5.3, confirmed (spatial-pytorch README, PyTorch ResNet-18): training,
# Natural, Exhaustive grid (the Random and Worst-of-10 columns are attacks aabench lacks).
ENGSTROM_GRID = {
    "engstrom2019-resnet18-standard": ("Standard", 71.3, 20.9),
    "engstrom2019-resnet18-nocrop": ("No crop", 65.4, 11.8),
    "engstrom2019-resnet18-aug30": ("Data aug 30°/24 px", 68.9, 38.1),
    "engstrom2019-resnet18-aug40": ("Data aug 40°/32 px", 68.3, 38.8),
    "engstrom2019-resnet18-worst10-30": ("Worst-of-10 train 30°/24 px", 69.1, 48.1),
    "engstrom2019-resnet18-worst10-40": ("Worst-of-10 train 40°/32 px", 68.6, 48.4),
}


def test_spatial_pytorch_is_engstroms_exhaustive_grid_table():
    from aabench.models.catalogue import known_model_names

    table = published_table("spatial-pytorch")
    assert len(table) == 6 * 2 and list(table.columns) == FIXED  # no dimensions
    assert (table["suite"] == "worst-shift").all()
    assert set(table["model"]) == set(ENGSTROM_GRID)
    assert not set(table["model"]) & set(known_model_names())  # never one of aabench's models
    for model, (training, natural, grid) in ENGSTROM_GRID.items():
        assert value(table, model=model, metric="clean_accuracy") == natural
        assert value(table, model=model, metric="robust_accuracy") == grid
        weights = table.loc[table["model"] == model, "weights"]
        assert (weights == f"spatial-pytorch ResNet-18, {training}").all()
    assert table["higher_is_better"].all()
    assert table["n"].isna().all()  # the README does not say
    (source,) = set(table["source"])
    assert source.startswith("Engstrom et al. 2019, spatial-pytorch README")
    assert "grid=spatial" in source and "Random and Worst-of-10" in source
