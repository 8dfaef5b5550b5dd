"""Random-shift consistency against hand counts, with tiny images and tiny models."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.errors import UserError
from aabench.suites.shift import PRESETS, ShiftSuite
from tests.helpers import (
    GOLDFISH,
    TABBY,
    TENCH,
    Constant,
    FirstEdge,
    edges,
    make_image_folder,
    run,
)

CROP = 32
MAX_SHIFT = 8
# (first white column, first white row) of each image, by class folder.
EDGES = {
    TENCH: [(0, 0), (1, 0), (4, 0)],
    GOLDFISH: [(0, 2), (3, 3)],
    TABBY: [(1, 9), (31, 31)],
}
IMAGES = sum(len(pairs) for pairs in EDGES.values())


@pytest.fixture
def edge_root(tmp_path):
    images = {
        wnid: [edges(CROP + MAX_SHIFT, c, r) for c, r in pairs] for wnid, pairs in EDGES.items()
    }
    return make_image_folder(tmp_path / "edges", images)


def geometry(records: pd.DataFrame) -> pd.Series:
    """(col, row) of each record's image, from its path ``<wnid>/img<i>.png``."""

    def lookup(path: str) -> tuple[int, int]:
        wnid, name = path.split("/")
        return EDGES[wnid][int(name[3:-4])]

    return records["sample"].map(lookup)


def pairs(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, epoch): both members side by side."""
    first = records[records["member"] == 0]
    second = records[records["member"] == 1]
    return first.merge(second, on=["sample", "epoch"], suffixes=("_1", "_2"), validate="1:1")


def summary(suite: ShiftSuite, records: pd.DataFrame) -> dict[str, float]:
    return {row["metric"]: row["value"] for row in suite.summarise(records)}


def crop_prediction(col: int, row: int, dy: int, dx: int) -> int:
    # The view holds columns dx..dx+31 of the image: red starts at column col - dx.
    return max(0, col - dx) + 33 * max(0, row - dy)


def circular_first(edge: int, shift: int) -> int:
    """First white index after rolling by ``shift`` a 32-line crop white from ``edge`` on."""
    return 0 if (-shift) % CROP >= edge else (edge + shift) % CROP


def circular_prediction(col: int, row: int, dy: int, dx: int) -> int:
    # Circular views roll the centre 32 crop of the 40 image: columns 4..35.
    return circular_first(col - 4, dx) + 33 * circular_first(row - 4, dy)


def check_pairs(records: pd.DataFrame, epochs: int) -> None:
    expected = [(epoch, member) for epoch in range(epochs) for member in (0, 1)]
    for _, group in records.groupby("sample"):
        assert sorted(zip(group["epoch"], group["member"], strict=True)) == expected


@pytest.mark.parametrize("mode", ["crop", "circular"])
def test_a_model_that_ignores_its_input_is_perfectly_consistent(edge_root, mode):
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=3, mode=mode)
    records = run(Constant(), suite, edge_root).records
    metrics = summary(suite, records)
    assert metrics["consistency"] == 100.0
    # Constant logits peak at class 0: exactly the tench images are correct.
    assert metrics["accuracy"] == pytest.approx(100.0 * 3 / IMAGES)
    assert metrics["consistency_correct"] == 100.0
    assert len(records) == IMAGES * 3 * 2


def predicted(rule, frame: pd.DataFrame, suffix: str = "") -> np.ndarray:
    """``rule(col, row, dy, dx)`` for every row of ``frame`` (offsets ``dy<suffix>``...)."""
    offsets = zip(geometry(frame), frame[f"dy{suffix}"], frame[f"dx{suffix}"], strict=True)
    return np.array([rule(col, row, dy, dx) for (col, row), dy, dx in offsets])


def test_crop_consistency_matches_a_hand_count(edge_root):
    epochs = 4
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=epochs)
    records = run(FirstEdge(), suite, edge_root).records
    assert len(records) == IMAGES * epochs * 2
    check_pairs(records, epochs)
    assert set(records["dy"]) | set(records["dx"]) <= set(range(MAX_SHIFT))
    assert records["pred"].tolist() == predicted(crop_prediction, records).tolist()

    both = pairs(records)
    first = predicted(crop_prediction, both, "_1")
    second = predicted(crop_prediction, both, "_2")
    agree = first == second
    labels = both["label_1"].to_numpy()
    correct = np.stack([first == labels, second == labels], axis=1)
    metrics = summary(suite, records)
    assert metrics["consistency"] == pytest.approx(100.0 * agree.mean(), abs=1e-12)
    assert 0.0 < metrics["consistency"] < 100.0  # the count is not trivially all or nothing
    assert metrics["accuracy"] == pytest.approx(100.0 * correct.mean(), abs=1e-12)
    either = correct.any(axis=1)
    assert metrics["consistency_correct"] == pytest.approx(100.0 * agree[either].mean(), abs=1e-12)


def test_circular_consistency_matches_a_hand_count(edge_root):
    epochs = 4
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=epochs, mode="circular")
    records = run(FirstEdge(), suite, edge_root).records
    check_pairs(records, epochs)
    offsets = set(records["dy"]) | set(records["dx"])
    assert offsets <= set(range(-MAX_SHIFT, MAX_SHIFT))
    assert min(offsets) < 0 < max(offsets)
    assert records["pred"].tolist() == predicted(circular_prediction, records).tolist()

    both = pairs(records)
    agree = predicted(circular_prediction, both, "_1") == predicted(circular_prediction, both, "_2")
    consistency = summary(suite, records)["consistency"]
    assert consistency == pytest.approx(100.0 * agree.mean(), abs=1e-12)
    assert 0.0 < consistency < 100.0


class ChannelPool(nn.Module):
    """A 1x1 convolution with integer weights, then global average pooling: exactly
    invariant to circular shifts (inputs are 0 or 1, all partial sums are integers)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1000, 1, bias=False)
        weights = torch.zeros(1000, 3, 1, 1)
        # Classes 0..5: each channel, and each channel minus another: the densest wins.
        weights[:3, :, 0, 0] = 2 * torch.eye(3)
        weights[3:6, :, 0, 0] = torch.tensor([[3, -1, 0], [0, 3, -1], [-1, 0, 3]]).float()
        self.conv.weight.data = weights
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.conv(x)).flatten(1)


def test_circular_shifts_leave_a_circularly_invariant_model_perfectly_consistent(
    tmp_path, edge_root
):
    rng = np.random.default_rng(0)
    noise = []
    for _ in range(6):
        density = rng.uniform(0.05, 0.95, size=3)
        noise.append(((rng.random((40, 40, 3)) < density) * 255).astype(np.uint8))
    root = make_image_folder(tmp_path / "noise", {TENCH: noise[:3], TABBY: noise[3:]})
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=3, mode="circular")
    records = run(ChannelPool(), suite, root).records
    assert records["pred"].nunique() > 1  # the model does look at its input
    assert (records[["dy", "dx"]] != 0).any(axis=None)
    assert summary(suite, records)["consistency"] == 100.0

    # The same suite in crop mode, with a position-dependent model, is not.
    crop = ShiftSuite(max_shift=MAX_SHIFT, epochs=3, mode="crop")
    assert summary(crop, run(FirstEdge(), crop, edge_root).records)["consistency"] < 100.0


def test_the_same_seed_gives_the_same_draw_and_another_seed_another(edge_root):
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=3)
    first = run(FirstEdge(), suite, edge_root, seed=7).records
    again = run(FirstEdge(), suite, edge_root, seed=7, batch_size=5).records
    other = run(FirstEdge(), suite, edge_root, seed=8).records
    pd.testing.assert_frame_equal(first, again)
    assert suite.summarise(first) == suite.summarise(again)
    assert not first[["dy", "dx"]].equals(other[["dy", "dx"]])


def test_offsets_do_not_depend_on_which_subset_is_evaluated(edge_root):
    suite = ShiftSuite(max_shift=MAX_SHIFT, epochs=2)
    full = run(Constant(), suite, edge_root).records
    subset = run(Constant(), suite, open_image_folder(edge_root, limit=3)).records
    merged = subset.merge(full, on=["sample", "epoch", "member"], suffixes=("", "_full"))
    assert len(merged) == len(subset) == 3 * 2 * 2
    assert (merged["dy"] == merged["dy_full"]).all()
    assert (merged["dx"] == merged["dx_full"]).all()


def test_per_batch_shares_one_draw_per_block_of_reference_batch_images(tmp_path):
    images = [np.full((40, 40, 3), 10 * i, dtype=np.uint8) for i in range(10)]
    root = make_image_folder(tmp_path / "ten", {TENCH: images[:5], GOLDFISH: images[5:]})
    folder = open_image_folder(root)
    per_image = ShiftSuite(max_shift=MAX_SHIFT, epochs=2, reference_batch=4)
    per_batch = ShiftSuite(max_shift=MAX_SHIFT, epochs=2, reference_batch=4, per_batch=True)
    a = run(Constant(), per_image, folder).records
    b = run(Constant(), per_batch, folder).records
    assert list(a.columns) == list(b.columns)
    others = [c for c in a.columns if c not in ("dy", "dx")]
    pd.testing.assert_frame_equal(a[others], b[others])

    position = {sample.path: i for i, sample in enumerate(folder.samples)}

    def draws(records):
        records = records.assign(block=records["sample"].map(position) // 4)
        return records.groupby(["block", "epoch", "member"])

    for _, group in draws(b):
        assert group[["dy", "dx"]].drop_duplicates().shape[0] == 1
    for _, group in draws(a):
        assert group[["dy", "dx"]].drop_duplicates().shape[0] > 1
    # Blocks are drawn independently of each other.
    per_block = b.assign(block=b["sample"].map(position) // 4)
    assert per_block.groupby("block")[["dy", "dx"]].first().drop_duplicates().shape[0] > 1


def test_views_are_the_crops_at_the_drawn_offsets():
    suite = ShiftSuite(max_shift=4, epochs=2)
    image = torch.arange(3 * 12 * 12, dtype=torch.int32).reshape(3, 12, 12).to(torch.uint8)
    sample = open_image_folder("sample").samples[0]
    views = suite.views(image, sample, 0, seed=3)
    assert views.images.shape == (4, 3, 8, 8)
    assert suite.views_per_image() == 4
    for k in range(4):
        dy, dx = int(views.meta["dy"][k]), int(views.meta["dx"][k])
        assert torch.equal(views.images[k], image[:, dy : dy + 8, dx : dx + 8])
    circular = ShiftSuite(max_shift=4, epochs=1, mode="circular")
    rolled = circular.views(image, sample, 0, seed=3)
    assert rolled.images.shape == (2, 3, 12, 12)
    for k in range(2):
        dy, dx = int(rolled.meta["dy"][k]), int(rolled.meta["dx"][k])
        assert torch.equal(rolled.images[k], torch.roll(image, (dy, dx), dims=(1, 2)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "wrap"}, "shift mode must be one of crop, circular"),
        ({"max_shift": 0}, "max_shift must be at least 1"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"reference_batch": 0}, "reference_batch must be at least 1"),
    ],
)
def test_invalid_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        ShiftSuite(**kwargs)


def test_a_model_resize_below_256_never_pads_the_views_with_black():
    from PIL import Image

    from aabench.models.preprocessing import Preprocessing

    image = Image.new("RGB", (400, 300), (200, 200, 200))
    # torchvision's V2 weights resize to 232; the protocol's base crop is 256.
    base = ShiftSuite().prepare(image, Preprocessing(resize_size=232, crop_size=224))
    assert base.shape == (3, 256, 256)
    assert int(base.min()) == 200


class Inputs(nn.Module):
    """Wraps a module and keeps a copy of every input it sees."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x)


def noise_root(tmp_path, size: int = 40):
    rng = np.random.default_rng(0)
    noise = []
    for _ in range(4):
        density = rng.uniform(0.05, 0.95, size=3)
        noise.append(((rng.random((size, size, 3)) < density) * 255).astype(np.uint8))
    return make_image_folder(tmp_path / "noise", {TENCH: noise[:2], TABBY: noise[2:]})


@pytest.mark.parametrize("preset", ["aps", "lps", "afc"])
def test_every_circular_variant_leaves_a_circularly_invariant_model_perfectly_consistent(
    tmp_path, preset
):
    suite = ShiftSuite(max_shift=MAX_SHIFT, preset=preset, epochs=1)
    records = run(ChannelPool(), suite, noise_root(tmp_path)).records
    assert records["pred"].nunique() > 1
    assert summary(suite, records)["consistency"] == 100.0


def checkerboard(size: int) -> np.ndarray:
    """Red where row + column is even, green where it is odd."""
    rows, cols = np.indices((size, size))
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[..., 0] = 255 * ((rows + cols) % 2 == 0)
    image[..., 1] = 255 * ((rows + cols) % 2 == 1)
    return image


class Strided(nn.Module):
    """ChannelPool on every second row and column (a stride-2 subsampling)."""

    def __init__(self):
        super().__init__()
        self.pool = ChannelPool()

    def forward(self, x):
        return self.pool(x[:, :, ::2, ::2])


@pytest.mark.parametrize("preset", ["aps", "lps", "afc"])
def test_a_strided_model_changes_its_label_exactly_on_odd_rolls(tmp_path, preset):
    root = make_image_folder(tmp_path / "board", {TENCH: [checkerboard(40)] * 3})
    suite = ShiftSuite(max_shift=MAX_SHIFT, **{**PRESETS[preset], "epochs": 4})
    records = run(Strided(), suite, root).records
    # The subsampled grid sees only red (class 3: 3 red - green wins) or only green
    # (class 4); a roll by (dy, dx) swaps them exactly when dy + dx is odd.
    assert records["pred"].tolist() == (3 + (records["dy"] + records["dx"]) % 2).tolist()
    assert summary(suite, records)["consistency"] < 100.0


def test_presets_resolve_to_their_parameters_and_the_protocol_records_those():
    aps = ShiftSuite(preset="aps")
    assert (aps.mode, aps.roll_of, aps.compare_to, aps.epochs) == ("circular", "crop", "shifted", 1)
    lps = ShiftSuite(preset="lps")
    assert (lps.mode, lps.roll_of, lps.compare_to, lps.epochs) == ("circular", "base", "shifted", 1)
    afc = ShiftSuite(preset="afc")
    assert (afc.mode, afc.compare_to, afc.epochs) == ("circular", "unshifted", 1)
    assert ShiftSuite(preset="zhang").protocol() == ShiftSuite().protocol()
    manual = ShiftSuite(mode="circular", roll_of="base", epochs=1)
    assert lps.protocol() == manual.protocol()
    assert "preset" not in lps.protocol()
    assert ShiftSuite.from_provenance({"parameters": lps.parameters()}) == lps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "bcos"}, "shift preset must be one of zhang, aps, lps, lps-standard, afc"),
        ({"preset": "aps", "epochs": 3}, "preset aps sets epochs=1, but epochs=3 was given"),
        ({"roll_of": "image"}, "roll_of must be one of crop, base"),
        ({"compare_to": "clean"}, "compare_to must be one of shifted, unshifted"),
        ({"roll_of": "base"}, "need mode=circular"),
        ({"compare_to": "unshifted"}, "need mode=circular"),
    ],
)
def test_invalid_circular_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        ShiftSuite(**kwargs)


def test_lps_rolls_the_whole_base_image_and_the_model_sees_it(tmp_path):
    model = Inputs(ChannelPool())
    suite = ShiftSuite(max_shift=MAX_SHIFT, preset="lps")
    records = run(model, suite, noise_root(tmp_path)).records
    assert {tuple(x.shape[1:]) for x in model.seen} == {(3, CROP + MAX_SHIFT, CROP + MAX_SHIFT)}
    assert len(records) == 4 * 2


def test_afc_compares_each_roll_with_the_unshifted_crop(tmp_path):
    root = noise_root(tmp_path)
    model = Inputs(ChannelPool())
    suite = ShiftSuite(max_shift=MAX_SHIFT, preset="afc")
    records = run(model, suite, root, batch_size=2).records
    seen = torch.cat(model.seen)  # the view order of the records
    assert len(seen) == len(records) == 4 * 2
    for i, row in records.reset_index(drop=True).iterrows():
        wnid, name = row["sample"].split("/")
        pixels = np.array(Image.open(root / wnid / name))
        crop = torch.from_numpy(pixels[4:36, 4:36]).permute(2, 0, 1).float() / 255
        shift = (int(row["dy"]), int(row["dx"]))
        if row["member"] == 0:
            assert shift == (0, 0)
            assert torch.equal(seen[i], crop)
        else:
            assert torch.equal(seen[i], torch.roll(crop, shift, dims=(1, 2)))
    metrics = summary(suite, records)
    shifted = records[records["member"] == 1]
    assert metrics["accuracy"] == pytest.approx(100.0 * shifted["correct"].mean())
