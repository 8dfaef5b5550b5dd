"""One-pixel diagonal shifts (Azulay & Weiss): the pairs, the black canvas, the metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.errors import UserError
from aabench.models.preprocessing import Preprocessing
from aabench.suites.pixel_shift import PixelShiftSuite
from tests.helpers import TABBY, TENCH, FirstEdge, edges, make_image_folder, run

SAMPLE = open_image_folder("sample").samples[0]


def summary(suite, records):
    return {row["metric"]: row["value"] for row in suite.summarise(records)}


def test_the_views_are_nine_crops_making_eight_consecutive_diagonal_pairs():
    suite = PixelShiftSuite()
    image = torch.randint(0, 256, (3, 234, 234), dtype=torch.uint8)
    views = suite.views(image, SAMPLE, 0, seed=0)
    assert views.images.shape == (9, 3, 224, 224)
    assert views.meta["offset"].tolist() == list(range(9))
    for o in range(9):
        assert torch.equal(views.images[o], image[:, o : o + 224, o : o + 224])
    # Pair c is (view c, view c + 1): one row and one column further.
    assert np.diff(views.meta["offset"]).tolist() == [1] * 8
    assert views.meta["ref"].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_crop_base_is_234_for_a_224_model():
    base = PixelShiftSuite().prepare(
        Image.new("RGB", (300, 260), (9, 9, 9)), Preprocessing(resize_size=256, crop_size=224)
    )
    assert base.shape == (3, 234, 234)


def test_embed_pastes_the_image_on_a_pixel_black_canvas():
    suite = PixelShiftSuite(mode="embed", scale=1.3)
    image = Image.new("RGB", (300, 260), (200, 100, 50))
    pre = Preprocessing(resize_size=256, crop_size=224)  # ImageNet mean / std
    canvas = suite.prepare(image, pre)
    views = suite.views(canvas, SAMPLE, 0, seed=0)
    size = 172  # int(224 / 1.3)
    centre = (224 - size - 1) // 2
    assert views.meta["offset"].tolist() == list(range(centre - 4, centre + 5))
    for view, o in zip(views.images, views.meta["offset"], strict=True):
        inside = torch.zeros(224, 224, dtype=torch.bool)
        inside[o : o + size, o : o + size] = True
        # Raw uint8 pixels, before the engine normalises: black outside, the image inside.
        assert view.dtype == torch.uint8
        assert int(view[:, ~inside].max()) == 0
        assert view[:, inside].float().mean(dim=1).tolist() == [200.0, 100.0, 50.0]


class Inputs(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.inner(x)


def test_the_model_sees_black_as_zero_pixels_normalised(tmp_path):
    root = make_image_folder(tmp_path / "grey", {TENCH: [np.full((40, 40, 3), 90, np.uint8)]})
    model = Inputs(FirstEdge())
    run(model, PixelShiftSuite(mode="embed", scale=1.9, pairs=4), root)
    x = torch.cat(model.seen)  # the helpers' models see pixel / 255
    assert x.min() == 0.0
    assert (x == 0.0).float().mean() > 0.5  # most of the 32 canvas is background


def test_top1_change_and_mac_match_a_hand_count(tmp_path):
    # FirstEdge's class is the first white column + 33 * first white row; a crop at
    # (o, o) of edges(42, col, row) predicts max(0, col - o) + 33 * max(0, row - o).
    root = make_image_folder(
        tmp_path / "edges", {TENCH: [edges(42, 3, 0)], TABBY: [edges(42, 20, 20)]}
    )
    suite = PixelShiftSuite()
    records = run(FirstEdge(), suite, root).records
    expected = {"n01440764/img0.png": [max(0, 3 - o) for o in range(9)]}
    expected["n02123045/img0.png"] = [(20 - o) * 34 for o in range(9)]
    for sample, group in records.groupby("sample"):
        assert group.sort_values("index")["pred"].tolist() == expected[sample]
    metrics = summary(suite, records)
    # tench: changes at o = 0, 1, 2 (3 of 8); tabby: every pair changes.
    assert metrics["top1_change"] == pytest.approx(100 * (3 + 8) / 16)
    assert metrics["accuracy"] == pytest.approx(100 * 5 / 16)  # tench pairs c = 3..7
    assert metrics["mac"] > 0


def test_mac_uses_the_first_views_top1():
    records = pd.DataFrame(
        {
            "sample": ["a"] * 3,
            "index": [0, 1, 2],
            "pred": [1, 1, 2],
            "correct": [True, True, False],
            "p_top": [0.9, 0.7, 0.5],
            "p_ref": [0.9, 0.7, 0.1],  # p(top-1 of the previous view | view)
        }
    )
    metrics = summary(PixelShiftSuite(pairs=2), records)
    assert metrics["mac"] == pytest.approx(100 * (0.2 + 0.6) / 2)
    assert metrics["top1_change"] == 50.0
    assert metrics["accuracy"] == 100.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "inpaint"}, "mode must be one of crop, embed"),
        ({"pairs": 11}, "pairs must be in 1..10"),
        ({"scale": 1.0}, "scale must be above 1"),
    ],
)
def test_invalid_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        PixelShiftSuite(**kwargs)
