"""Clean accuracy: top-1 and top-5 against a hand count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aabench.errors import UserError
from aabench.suites.accuracy import AccuracySuite
from tests.helpers import GOLDFISH, TENCH, make_image_folder, one_hot_logits, run, solid

SHARK = "n01484850"  # index 2


class Grey(nn.Module):
    """Predicts class = the image's grey level (0..255); logits -|k - grey| make the top 5
    exactly {grey-2 .. grey+2} (clipped to {0..4} near 0)."""

    def forward(self, x):
        grey = torch.round(x.mean(dim=(1, 2, 3)) * 255).long()
        return one_hot_logits(grey, 1000)


# (grey level, top-1 correct, top-5 correct) per image, by class folder.
CASES = {
    TENCH: [(0, True, True), (2, False, True), (9, False, False)],
    GOLDFISH: [(1, True, True), (3, False, True), (4, False, False)],
    SHARK: [(2, True, True), (8, False, False)],
}


@pytest.fixture
def grey_root(tmp_path):
    images = {wnid: [solid(40, grey) for grey, *_ in cases] for wnid, cases in CASES.items()}
    return make_image_folder(tmp_path / "grey", images)


def test_top1_and_top5_match_a_hand_count(grey_root):
    suite = AccuracySuite()
    records = run(Grey(), suite, grey_root).records
    cases = [case for wnid in sorted(CASES) for case in CASES[wnid]]
    assert len(records) == len(cases)
    assert records["view"].tolist() == [0] * len(cases)
    assert records["pred"].tolist() == [grey for grey, *_ in cases]
    assert records["label"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert records["correct"].tolist() == [top1 for _, top1, _ in cases]
    assert records["top5_correct"].tolist() == [top5 for *_, top5 in cases]

    rows = suite.summarise(records)
    assert [row["metric"] for row in rows] == ["top1", "top5"]
    values = {row["metric"]: row["value"] for row in rows}
    assert values["top1"] == pytest.approx(100 * 3 / 8)
    assert values["top5"] == pytest.approx(100 * 5 / 8)
    assert {row["n"] for row in rows} == {8}


class Shapes(nn.Module):
    """Records the shape of every view it sees; predicts class 0."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes += [tuple(view.shape) for view in x]
        return torch.zeros(x.shape[0], 1000)


def test_uses_the_model_sizes_unless_overridden(tmp_path):
    root = make_image_folder(tmp_path / "g", {TENCH: [solid(50, 7)], GOLDFISH: [solid(60, 9)]})
    default, overridden = Shapes(), Shapes()
    run(default, AccuracySuite(), root, resize=40, crop=32)
    run(overridden, AccuracySuite(resize_size=20, crop_size=16), root, resize=40, crop=32)
    assert default.shapes == [(3, 32, 32)] * 2
    assert overridden.shapes == [(3, 16, 16)] * 2


def test_prepare_is_resize_then_centre_crop():
    from PIL import Image

    from aabench.models.preprocessing import Preprocessing

    # 40 x 80 image: resize keeps 40 x 80, the centre 32 crop holds columns 24..55.
    columns = np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (40, 1, 3))
    image = Image.fromarray(columns)
    tensor = AccuracySuite().prepare(image, Preprocessing(resize_size=40, crop_size=32))
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (3, 32, 32)
    assert tensor[0, 0].tolist() == list(range(24, 56))


@pytest.mark.parametrize("field", ["resize_size", "crop_size"])
@pytest.mark.parametrize("value", [0, -5])
def test_sizes_below_one_are_user_errors(field, value):
    with pytest.raises(UserError, match=field):
        AccuracySuite(**{field: value})
