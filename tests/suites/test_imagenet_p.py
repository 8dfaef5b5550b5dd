"""ImageNet-P: flip probability and top-5 distance against hand-computed sequences, the
pairing rules (noise vs the others, difficulty-d chains), normalisation by a reference
run, and runs end to end on generated sequences and on released videos."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from aabench.data import perturbations as P
from aabench.errors import UserError
from aabench.suites.imagenet_p import ImageNetPSuite, pairs, top5_distance
from tests.helpers import (
    GOLDFISH,
    TENCH,
    Constant,
    Recording,
    noise_folder,
    one_hot_logits,
    run,
)

RANKS = [f"rank_{i}" for i in range(1, 6)]


def records_for(sequences: dict[str, list[list[int]]], ranks=None) -> pd.DataFrame:
    """Engine-shaped records: ``sequences[perturbation][image]`` = predictions per frame.

    Unless ``ranks`` gives them, each frame's top 5 is pred, pred+1, ..., pred+4.
    """
    frames = []
    for perturbation, per_image in sequences.items():
        for image, preds in enumerate(per_image):
            preds = np.asarray(preds)
            top5 = (
                np.asarray(ranks[perturbation][image])
                if ranks
                else preds[:, None] + np.arange(5)[None, :]
            )
            frame = pd.DataFrame(
                {
                    "sample": f"{TENCH}/img{image}.png",
                    "pred": preds,
                    "perturbation": perturbation,
                    "frame": np.arange(len(preds)),
                }
            )
            frame[RANKS] = top5
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def values(suite, records) -> dict[tuple[str, str | None], float]:
    return {
        (row["metric"], row.get("perturbation")): row["value"] for row in suite.summarise(records)
    }


# --- pairs and distances by hand ------------------------------------------------------


def test_noise_pairs_every_frame_with_the_first_whatever_the_difficulty():
    for difficulty in (1, 2, 3):
        earlier, later = pairs(5, "gaussian_noise", difficulty)
        assert earlier.tolist() == [0, 0, 0, 0]
        assert later.tolist() == [1, 2, 3, 4]


def test_other_pairs_are_consecutive_at_stride_difficulty_one_chain_per_offset():
    earlier, later = pairs(5, "rotate", 1)
    assert list(zip(earlier, later, strict=True)) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    earlier, later = pairs(6, "rotate", 2)
    # Chains 0-2-4 and 1-3-5.
    assert sorted(zip(earlier, later, strict=True)) == [(0, 2), (1, 3), (2, 4), (3, 5)]
    earlier, later = pairs(7, "translate", 3)
    assert sorted(zip(earlier, later, strict=True)) == [(0, 3), (1, 4), (2, 5), (3, 6)]


@pytest.mark.parametrize(
    "earlier, later, distance",
    [
        ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 0),
        ([1, 2, 3, 4, 5], [2, 1, 3, 4, 5], 2),  # |0-1| + |1-0|
        # class 1 moves to rank 5 (|0-4|); 2..5 leave the top 5: |1-5|+|2-5|+|3-5|+|4-5|.
        ([1, 2, 3, 4, 5], [9, 8, 7, 6, 1], 4 + 4 + 3 + 2 + 1),
        ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], 5 + 4 + 3 + 2 + 1),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 4 + 2 + 0 + 2 + 4),
    ],
)
def test_top5_distance_by_hand(earlier, later, distance):
    assert top5_distance(np.array(earlier), np.array(later)) == distance


def test_flip_prob_and_top5_dist_of_hand_sequences_at_difficulty_1():
    # Rotate, two images: flips 0,1,0,1 -> 1/2 and 0,0,0,0 -> 0; mean over images 1/4.
    records = records_for({"rotate": [[0, 0, 1, 1, 0], [3, 3, 3, 3, 3]]})
    result = values(ImageNetPSuite(perturbations="rotate"), records)
    assert result[("flip_prob", "rotate")] == pytest.approx(100 * 0.25)
    # The top 5 of pred p is p..p+4. Up (0 -> 1): class 0 leaves (|0-5|), 1..4 rise one
    # rank each: 5 + 4 = 9. Down (1 -> 0): 1..4 fall one rank, 5 leaves from rank 5
    # (|4-5|): 4 + 1 = 5. The distance is not symmetric.
    assert top5_distance(np.arange(5), np.arange(1, 6)) == 9
    assert top5_distance(np.arange(1, 6), np.arange(5)) == 5
    # Image 0 averages (0 + 9 + 0 + 5) / 4 pairs, image 1 is 0.
    assert result[("top5_dist", "rotate")] == pytest.approx(((9 + 5) / 4 + 0) / 2)


def test_difficulty_2_compares_frames_two_apart():
    # Chains 0-2-4 (preds 0,1,0) and 1-3 (0,1): pairs flip 1,1 and 1 -> 3/3.
    records = records_for({"scale": [[0, 0, 1, 1, 0]]})
    assert values(ImageNetPSuite(perturbations="scale", difficulty=2), records)[
        ("flip_prob", "scale")
    ] == pytest.approx(100.0)
    # The same sequence at difficulty 1 flips on 2 of its 4 pairs.
    assert values(ImageNetPSuite(perturbations="scale", difficulty=1), records)[
        ("flip_prob", "scale")
    ] == pytest.approx(50.0)


def test_noise_compares_with_the_clean_first_frame_not_the_previous_one():
    # Against frame 0: 0,1,1,0 flip on 2 of 4; consecutively it would be 1,0,1,1 = 3 of 4.
    records = records_for({"gaussian_noise": [[0, 0, 1, 1, 0]]})
    result = values(ImageNetPSuite(perturbations="gaussian_noise"), records)
    assert result[("flip_prob", "gaussian_noise")] == pytest.approx(50.0)


def test_sequences_are_averaged_first_then_over_sequences():
    # Images with flip rates 1/4 and 3/4 average to 1/2, whatever the pooling.
    records = records_for({"translate": [[0, 0, 0, 0, 1], [0, 1, 0, 1, 1]]})
    assert values(ImageNetPSuite(perturbations="translate"), records)[
        ("flip_prob", "translate")
    ] == pytest.approx(50.0)


def test_ties_among_ranks_follow_the_recorded_order():
    # The same classes in a different order is a distance, not a tie: ranks are ordinal.
    ranks = {"tilt": [[[1, 2, 3, 4, 5], [2, 1, 3, 4, 5]]]}
    records = records_for({"tilt": [[1, 1]]}, ranks=ranks)
    result = values(ImageNetPSuite(perturbations="tilt"), records)
    assert result[("flip_prob", "tilt")] == 0.0
    assert result[("top5_dist", "tilt")] == 2.0


def test_means_over_the_10_need_all_10_and_say_which_are_missing():
    sequences = {p: [[0, 1, 1]] for p in P.GEOMETRIC}
    rows = ImageNetPSuite().summarise(records_for(sequences))
    by_metric = {row["metric"]: row for row in rows if "perturbation" not in row}
    assert by_metric["mean_flip_prob_geometric"]["value"] == pytest.approx(50.0)
    assert math.isnan(by_metric["mean_flip_prob"]["value"])
    assert "lacks gaussian_noise" in by_metric["mean_flip_prob"]["note"]
    assert "mfr" not in by_metric  # no reference, no normalised rows


def test_mean_flip_prob_is_the_mean_over_the_10_test_perturbations():
    # Perturbation k: 11 frames 0,...,0,1,2,...,k. Consecutive pairs flip k times, and
    # so do comparisons with the first frame (noise): flip_prob k / 10 either way.
    sequences = {p: [[0] * (11 - k) + list(range(1, k + 1))] for k, p in enumerate(P.TEST)}
    rows = values(ImageNetPSuite(perturbations="all"), records_for(sequences))
    for k, p in enumerate(P.TEST):
        assert rows[("flip_prob", p)] == pytest.approx(100 * k / 10)
    assert rows[("mean_flip_prob", None)] == pytest.approx(100 * 4.5 / 10)
    geometric = [P.TEST.index(p) for p in ("rotate", "scale", "translate")]
    assert rows[("mean_flip_prob_geometric", None)] == pytest.approx(100 * sum(geometric) / 3 / 10)


def test_perturbation_names():
    assert P.parse_perturbations("geometric") == ("translate", "rotate", "tilt", "scale")
    assert P.parse_perturbations("all") == P.TEST
    assert P.parse_perturbations("scale, gaussian_noise") == ("gaussian_noise", "scale")
    with pytest.raises(UserError, match="unknown perturbation 'blur'"):
        P.parse_perturbations("blur")
    with pytest.raises(UserError, match="difficulty must be 1, 2 or 3"):
        ImageNetPSuite(difficulty=4)


# --- normalisation by a reference run ---------------------------------------------------


def write_reference(directory: Path, values_by_perturbation, difficulty=1, generate=True) -> Path:
    """A reference imagenet-p table (and provenance) as `aabench run` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for perturbation, (flip_prob, top5_dist) in values_by_perturbation.items():
        for metric, value, unit in (
            ("flip_prob", 100 * flip_prob, "%"),
            ("top5_dist", top5_dist, ""),
        ):
            rows.append(
                {
                    "run_id": "ref123",
                    "model": "alexnet",
                    "weights": "IMAGENET1K_V1",
                    "suite": "imagenet-p",
                    "metric": metric,
                    "value": value,
                    "unit": unit,
                    "higher_is_better": False,
                    "n": 2,
                    "perturbation": perturbation,
                }
            )
    path = directory / "imagenet-p.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    provenance = {
        "run_id": "ref123",
        "model": "alexnet",
        "suite": "imagenet-p",
        "protocol": {"difficulty": difficulty, "generate": generate},
    }
    path.with_suffix(".json").write_text(json.dumps(provenance))
    return path


def test_fr_and_t5d_divide_by_the_reference_and_mfr_geometric_averages_three(tmp_path):
    reference = write_reference(
        tmp_path / "ref", {"rotate": (0.5, 2.0), "scale": (0.25, 1.0), "translate": (1.0, 4.0)}
    )
    suite = ImageNetPSuite(
        perturbations="rotate,scale,translate", generate=True, normalize_by=str(reference)
    )
    # Every sequence flips on 1 of its 2 pairs (FP 1/2) and moves 9 on that pair (uT5D 4.5).
    sequences = {p: [[0, 0, 1]] for p in ("rotate", "scale", "translate")}
    result = values(suite, records_for(sequences))
    assert result[("fr", "rotate")] == pytest.approx(100 * 0.5 / 0.5)
    assert result[("fr", "scale")] == pytest.approx(100 * 0.5 / 0.25)
    assert result[("fr", "translate")] == pytest.approx(100 * 0.5 / 1.0)
    assert result[("t5d", "scale")] == pytest.approx(100 * 4.5 / 1.0)
    assert result[("mfr_geometric", None)] == pytest.approx(100 * (1 + 2 + 0.5) / 3)
    assert math.isnan(result[("mfr", None)])  # needs the 10 test perturbations


def test_the_reference_run_normalises_itself_to_100(tmp_path):
    sequences = {p: [[0, 1, 1, 2], [0, 0, 0, 5]] for p in P.TEST}
    records = records_for(sequences)
    own = values(ImageNetPSuite(perturbations="all"), records)
    reference = write_reference(
        tmp_path / "ref",
        {p: (own[("flip_prob", p)] / 100, own[("top5_dist", p)]) for p in P.TEST},
    )
    suite = ImageNetPSuite(perturbations="all", generate=True, normalize_by=str(reference))
    normalised = values(suite, records)
    for metric in ("mfr", "mt5d", "mfr_geometric"):
        assert normalised[(metric, None)] == pytest.approx(100.0)
    assert all(normalised[("fr", p)] == pytest.approx(100.0) for p in P.TEST)


def test_a_reference_of_another_difficulty_or_data_kind_is_refused(tmp_path):
    hard = write_reference(tmp_path / "hard", {"rotate": (0.5, 1.0)}, difficulty=2)
    with pytest.raises(UserError, match="difficulty 2, this run at 1"):
        ImageNetPSuite(perturbations="rotate", generate=True, normalize_by=str(hard))
    released = write_reference(tmp_path / "rel", {"rotate": (0.5, 1.0)}, generate=False)
    with pytest.raises(UserError, match="the released videos, this run generated sequences"):
        ImageNetPSuite(perturbations="rotate", generate=True, normalize_by=str(released))


def test_mt5d_needs_the_reference_top5_dist_only_and_mfr_its_flip_prob_only(tmp_path):
    # A reference that never flips on brightness still moves its top 5 there.
    reference = write_reference(
        tmp_path / "ref", {p: (0.0 if p == "brightness" else 0.5, 2.0) for p in P.TEST}
    )
    suite = ImageNetPSuite(perturbations="all", generate=True, normalize_by=str(reference))
    rows = suite.summarise(records_for({p: [[0, 1, 1]] for p in P.TEST}))
    by_metric = {row["metric"]: row for row in rows if "perturbation" not in row}
    # Frames 0, 1, 1: consecutive pairs move 9 then 0 (4.5); the two noise sequences
    # compare both later frames with the first (9 each).
    assert by_metric["mt5d"]["value"] == pytest.approx(100 * (2 * 9 + 8 * 4.5) / 10 / 2.0)
    assert math.isnan(by_metric["mfr"]["value"])
    assert "no non-zero flip_prob for brightness" in by_metric["mfr"]["note"]
    assert by_metric["mfr_geometric"]["value"] == pytest.approx(100.0)


def test_a_reference_without_its_provenance_is_refused(tmp_path):
    reference = write_reference(tmp_path / "ref", {"rotate": (0.5, 1.0)}, difficulty=3)
    reference.with_suffix(".json").unlink()
    with pytest.raises(UserError, match="no provenance beside it"):
        ImageNetPSuite(perturbations="rotate", generate=True, normalize_by=str(reference))


def test_references_with_the_same_run_id_but_other_numbers_are_other_protocols(tmp_path):
    first = write_reference(tmp_path / "a", {"rotate": (0.5, 1.0)})
    second = write_reference(tmp_path / "b", {"rotate": (0.25, 1.0)})
    protocols = [
        ImageNetPSuite(perturbations="rotate", generate=True, normalize_by=str(path)).protocol()
        for path in (first, second)
    ]
    assert protocols[0]["reference_run_id"] == protocols[1]["reference_run_id"]
    assert protocols[0] != protocols[1]


def test_perturbations_that_cannot_be_generated_are_refused_up_front():
    with pytest.raises(UserError, match="spatter cannot be generated"):
        ImageNetPSuite(perturbations="rotate,spatter", generate=True)
    ImageNetPSuite(perturbations="rotate,spatter", imagenet_p="/data/imagenet-p")  # released


def test_the_reference_identity_enters_protocol_and_provenance(tmp_path):
    reference = write_reference(tmp_path / "ref", {"rotate": (0.5, 1.0)})
    suite = ImageNetPSuite(perturbations="rotate", generate=True, normalize_by=str(reference))
    assert suite.protocol()["reference_run_id"] == "ref123"
    assert "normalize_by" not in suite.protocol()  # a location, not the protocol
    entry = suite.extra_provenance()["normalization"]
    assert entry["flip_prob"] == {"rotate": 0.5}
    assert entry["provenance"]["model"] == "alexnet"


# --- end to end through the engine --------------------------------------------------------


@pytest.fixture
def val(tmp_path):
    return noise_folder(tmp_path / "val", {TENCH: [(60, 80)], GOLDFISH: [(70, 50)]})


def test_a_model_that_ignores_its_input_never_flips(val):
    suite = ImageNetPSuite(perturbations="translate,gaussian_noise", generate=True)
    evaluation = run(Constant(), suite, val, batch_size=50)
    rows = values(suite, evaluation.records)
    for perturbation in ("translate", "gaussian_noise"):
        assert rows[("flip_prob", perturbation)] == 0.0
        assert rows[("top5_dist", perturbation)] == 0.0


class MeanBrightness(nn.Module):
    """Class = mean brightness in 1/1000 steps: moves with almost any perturbation."""

    def forward(self, x):
        return one_hot_logits((x.mean(dim=(1, 2, 3)) * 1000).long().clamp(0, 999))


def test_samples_have_one_row_per_sequence_frame_and_recompute_the_table(val):
    suite = ImageNetPSuite(perturbations="translate,rotate", generate=True)
    evaluation = run(MeanBrightness(), suite, val, batch_size=64)
    records = evaluation.records
    counts = records.groupby(["sample", "perturbation"]).size()
    assert counts.xs("translate", level="perturbation").tolist() == [41, 41]
    assert counts.xs("rotate", level="perturbation").tolist() == [31, 31]
    assert {"sample", "perturbation", "frame", "pred", *RANKS} <= set(records.columns)
    # Anyone can recompute flip_prob from the samples: consecutive frames per sequence.
    rows = values(suite, records)
    for perturbation in ("translate", "rotate"):
        per_image = [
            np.mean(np.diff(group.sort_values("frame")["pred"].to_numpy()) != 0)
            for _, group in records[records["perturbation"] == perturbation].groupby("sample")
        ]
        assert rows[("flip_prob", perturbation)] == pytest.approx(100 * np.mean(per_image))
    assert rows[("flip_prob", "rotate")] > 0  # the model does see the rotation


class Tied(nn.Module):
    """Classes 7, 3 and 500 tie for first place, whatever the input."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 1000)
        logits[:, [7, 3, 500]] = 1.0
        logits[:, 9] = 0.5
        return logits


def test_tied_classes_get_ordinal_ranks_and_the_first_is_the_prediction(val):
    suite = ImageNetPSuite(perturbations="rotate", generate=True)
    records = run(Tied(), suite, val, batch_size=31).records
    assert (records["pred"] == 3).all()
    assert records[RANKS].drop_duplicates().values.tolist() == [[3, 7, 500, 9, 0]]


def test_batch_size_one_runs_sequences_whole_until_memory_runs_out(val):
    from tests.benchmark.test_engine import RunsOutOfMemoryAbove

    model = RunsOutOfMemoryAbove(Constant(), limit=8)
    suite = ImageNetPSuite(perturbations="rotate", generate=True)
    evaluation = run(model, suite, val, batch_size=1, forward_chunk=0)  # whole passes
    # A 31-frame pass at --batch-size 1 is out of memory: halved (to 1) and run.
    assert evaluation.batch_size_halvings == [1]
    assert set(model.batch_sizes) == {1}
    assert evaluation.views == 62


@pytest.mark.parametrize("batch_size", [16, 72, 100])
def test_every_sequence_goes_through_the_model_in_one_forward_pass(val, batch_size):
    model = Recording(Constant())
    suite = ImageNetPSuite(perturbations="translate,rotate", generate=True)
    run(model, suite, val, batch_size=batch_size, forward_chunk=0)  # the model sees passes
    runs = [41, 31, 41, 31]
    # Each pass holds whole sequences: its size is a sum of consecutive runs.
    position = 0
    for size in model.batch_sizes:
        total = 0
        while total < size:
            total += runs[position]
            position += 1
        assert total == size
        assert size <= max(batch_size, max(runs))
    assert position == len(runs)


def test_generated_sequences_are_deterministic_per_seed_image_and_perturbation(val):
    suite = ImageNetPSuite(perturbations="gaussian_noise,rotate", generate=True)
    first = run(MeanBrightness(), suite, val, seed=3).records
    again = run(MeanBrightness(), suite, val, seed=3, batch_size=7).records
    pd.testing.assert_frame_equal(first, again)


def test_frame_counts_per_perturbation():
    assert {p: P.frame_count(p) for p in P.TEST} == {
        p: 41 if p == "translate" else 31 for p in P.TEST
    }


def test_views_are_uint8_frames_of_224(val):
    from aabench.data.folder import open_image_folder

    folder = open_image_folder(val)
    suite = ImageNetPSuite(perturbations="scale", generate=True)
    from PIL import Image

    image = Image.open(folder.root / folder.samples[0].path)
    views = suite.views_from({"clean": image}, folder.samples[0], 0, 0, None)
    assert views.images.dtype == torch.uint8
    assert tuple(views.images.shape) == (31, 3, 224, 224)
    assert views.groups == [31]
    assert views.meta["frame"].tolist() == list(range(31))
