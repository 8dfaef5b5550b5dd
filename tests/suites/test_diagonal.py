"""Diagonal shift: the 33 offsets, per-offset and overall rows, wobble and flips by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aabench.errors import UserError
from aabench.results.table import tidy_table
from aabench.suites.diagonal import DiagonalSuite
from tests.helpers import GOLDFISH, TENCH, Constant, edges, make_image_folder, run

# First white (red) column of each image, by class folder; labels: tench 0, goldfish 1.
COLUMNS = {TENCH: [0, 6, 20], GOLDFISH: [6]}
LABELS = {TENCH: 0, GOLDFISH: 1}
OTHER_LOGIT = 3.5  # class 1's logit; class 0's is the first white column


class EdgeLogit(nn.Module):
    """Four classes: logit of class 0 = index of the first white column, class 1 = 3.5,
    classes 2 and 3: 0."""

    def forward(self, x):
        first = (x[:, 0].mean(dim=1) > 0.5).int().argmax(dim=1).float()
        logits = torch.zeros(x.shape[0], 4)
        logits[:, 0] = first
        logits[:, 1] = OTHER_LOGIT
        return logits


def by_metric(rows: list[dict]) -> dict:
    return {(row["metric"], row.get("offset")): row["value"] for row in rows}


def test_default_protocol_has_33_offsets(tmp_path):
    suite = DiagonalSuite()
    assert suite.max_offset == 32
    assert suite.views_per_image() == 33
    root = make_image_folder(tmp_path / "d", {TENCH: [edges(64, 10, 0), edges(64, 40, 0)]})
    records = run(Constant(), suite, root, resize=64, crop=32, batch_size=20).records
    assert len(records) == 2 * 33
    for _, group in records.groupby("sample"):
        assert sorted(group["offset"]) == list(range(33))

    rows = suite.summarise(records)
    values = by_metric(rows)
    for metric in ("accuracy", "p_true"):
        assert sorted(r["offset"] for r in rows if r["metric"] == metric and "offset" in r) == list(
            range(33)
        )
    assert values[("flips", None)] == 0.0
    assert values[("wobble", None)] == 0.0
    assert values[("accuracy", None)] == 100.0  # constant logits peak at class 0 (tench)

    table = tidy_table(rows, run_id="r", model="toy", weights="none", suite=suite)
    assert str(table["offset"].dtype) == "Int64"
    per_offset = table[table["offset"].notna()]
    overall = table[table["offset"].isna()]
    assert sorted(per_offset["offset"].unique().tolist()) == list(range(33))
    assert len(per_offset) == 2 * 33
    assert sorted(overall["metric"]) == ["accuracy", "flips", "wobble"]
    assert (table["n"] == 2).all()


def test_views_are_the_diagonal_crops():
    suite = DiagonalSuite(max_offset=3)
    image = (torch.arange(3 * 9 * 9) % 251).reshape(3, 9, 9).to(torch.uint8)
    views = suite.views(image, None, 0, 0)
    assert views.images.shape == (4, 3, 6, 6)
    assert views.meta["offset"].tolist() == [0, 1, 2, 3]
    for o in range(4):
        assert torch.equal(views.images[o], image[:, o : o + 6, o : o + 6])


def test_wobble_flips_and_per_offset_values_match_a_hand_count(tmp_path):
    max_offset = 8
    images = {wnid: [edges(40, col, 0) for col in cols] for wnid, cols in COLUMNS.items()}
    root = make_image_folder(tmp_path / "d", images)
    suite = DiagonalSuite(max_offset=max_offset)
    records = run(EdgeLogit(), suite, root, batch_size=7).records

    offsets = np.arange(max_offset + 1)
    p_true, correct, flips, wobble = [], [], [], []
    for wnid, cols in COLUMNS.items():
        label = LABELS[wnid]
        for col in cols:
            first = np.maximum(0, col - offsets).astype(np.float64)  # class 0's logit
            logits = np.zeros((len(offsets), 4))
            logits[:, 0] = first
            logits[:, 1] = OTHER_LOGIT
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            pred = np.where(first > OTHER_LOGIT, 0, 1)
            p = probs[:, label]
            p_true.append(p)
            correct.append(pred == label)
            flips.append(int((pred[1:] != pred[:-1]).sum()))
            wobble.append(p.max() - p.min())
    p_true, correct = np.array(p_true), np.array(correct)
    assert flips == [0, 1, 0, 1]

    values = by_metric(suite.summarise(records))
    assert values[("flips", None)] == 0.5
    assert values[("wobble", None)] == pytest.approx(100 * np.mean(wobble), abs=1e-5)
    assert values[("accuracy", None)] == pytest.approx(100 * correct.mean(), abs=1e-9)
    for o in offsets:
        assert values[("accuracy", o)] == pytest.approx(100 * correct[:, o].mean(), abs=1e-9)
        assert values[("p_true", o)] == pytest.approx(100 * p_true[:, o].mean(), abs=1e-5)

    ordered = records.sort_values(["sample", "offset"])
    assert ordered["p_true"].to_numpy() == pytest.approx(p_true.ravel(), abs=1e-6)


def test_summary_does_not_depend_on_record_order(tmp_path):
    images = {wnid: [edges(40, col, 0) for col in cols] for wnid, cols in COLUMNS.items()}
    root = make_image_folder(tmp_path / "d", images)
    suite = DiagonalSuite(max_offset=8)
    records = run(EdgeLogit(), suite, root).records
    shuffled = records.sample(frac=1.0, random_state=0).reset_index(drop=True)
    assert not shuffled["offset"].equals(records["offset"])
    expected = by_metric(suite.summarise(records))
    got = by_metric(suite.summarise(shuffled))
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_max_offset_below_one_is_a_user_error():
    with pytest.raises(UserError, match="max_offset must be at least 1, got 0"):
        DiagonalSuite(max_offset=0)
