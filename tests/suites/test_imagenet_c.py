"""ImageNet-C: CE, mCE, relative mCE and mean error against AlexNet's own table and hand
examples; missing cells; extra corruptions; released vs generated runs end to end."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aabench.cli import main
from aabench.data import corruptions as C
from aabench.data.folder import Sample
from aabench.data.sources import corruption_library
from aabench.models.preprocessing import Preprocessing
from aabench.suites import alexnet_errors
from aabench.suites.base import summarise_terms
from aabench.suites.imagenet_c import ImageNetCSuite
from tests.helpers import GOLDFISH, TENCH

CLEAN = ("clean", 0)
COMMON_CELLS = [(c, s) for c in C.COMMON for s in C.SEVERITIES]
ALL_CELLS = [(c, s) for c in C.ALL for s in C.SEVERITIES]
ALEXNET_IMAGES = 50_000  # ImageNet val: every AlexNet error is a count out of 50 000


# --- records by hand ------------------------------------------------------------------------


def make_records(wrong: dict[tuple[str, int], list[int]], clean: list[int]) -> pd.DataFrame:
    """Engine-shaped records: per image a clean view (severity 0), then one view per cell.

    ``wrong[(corruption, severity)][i]`` and ``clean[i]`` are 1 where image i is wrong.
    A wrong view predicts class 1 (label 0) and misses the top 5 as well.
    """
    images = len(clean)
    cells = [CLEAN, *wrong]
    outcomes = [clean, *wrong.values()]
    frames = []
    for view, ((corruption, severity), flags) in enumerate(zip(cells, outcomes, strict=True)):
        flags = np.asarray(flags, dtype=bool)
        assert len(flags) == images
        frames.append(
            pd.DataFrame(
                {
                    "sample": [f"{TENCH}/ILSVRC2012_val_{i + 1:08d}.JPEG" for i in range(images)],
                    "view": view,
                    "label": 0,
                    "pred": flags.astype(int),
                    "correct": ~flags,
                    "top5_correct": ~flags,
                    "corruption": corruption,
                    "severity": severity,
                }
            )
        )
    records = pd.concat(frames, ignore_index=True)
    return records.sort_values(["sample", "view"], kind="stable").reset_index(drop=True)


def replicated_summary(suite, records: pd.DataFrame, copies: dict[str, int]) -> list[dict]:
    """``suite.summarise`` of ``records`` with image ``s`` present ``copies[s]`` times.

    Every term is one image's own (its rows alone decide it), and every metric is
    scale * sum(num) / sum(den) over terms, so k identical copies of an image contribute
    exactly k times its num and den: multiplying them is replication, done in integers.
    """
    terms = suite.terms(records)
    weight = terms["sample"].map(copies).astype(float)
    terms = terms.assign(num=terms["num"] * weight, den=terms["den"] * weight)
    return summarise_terms(suite, terms, sum(copies.values())) + suite.not_computed()


def alexnet_records() -> tuple[pd.DataFrame, dict[str, int]]:
    """50 000 images whose errors are exactly AlexNet's, as <= 97 representatives.

    Image i (0 <= i < 50 000) is wrong in a cell iff i < that cell's error count. Between
    two consecutive distinct counts t_j < t_j+1 every image is wrong in the same cells, so
    image t_j stands for t_j+1 - t_j identical images. 50 000 x 96 views would take
    ~12 s through pandas; the representatives give the same sums exactly in milliseconds.
    """
    errors = {CLEAN: alexnet_errors.CLEAN_ERROR}
    errors.update({(c, s): alexnet_errors.ERRORS[c][s - 1] for c, s in ALL_CELLS})
    counts = {}
    for cell, error in errors.items():
        counts[cell] = round(error * ALEXNET_IMAGES)
        assert counts[cell] == pytest.approx(error * ALEXNET_IMAGES, abs=1e-6)  # exact
    bounds = sorted({0, ALEXNET_IMAGES, *counts.values()})
    starts = bounds[:-1]
    wrong = {cell: [int(counts[cell] > t) for t in starts] for cell in ALL_CELLS}
    records = make_records(wrong, [int(counts[CLEAN] > t) for t in starts])
    names = list(dict.fromkeys(records["sample"]))
    copies = {name: bounds[j + 1] - bounds[j] for j, name in enumerate(names)}
    return records, copies


def value(rows: list[dict], metric: str, **dims) -> dict:
    """The one row of ``metric`` whose dimensions are exactly ``dims``."""
    found = [
        row
        for row in rows
        if row["metric"] == metric
        and {k: v for k, v in row.items() if k not in ("metric", "value", "n", "note")} == dims
    ]
    assert len(found) == 1, (metric, dims, found)
    return found[0]


def alexnet_sum(corruption: str) -> float:
    return sum(alexnet_errors.ERRORS[corruption])


# --- AlexNet is 100 -------------------------------------------------------------------------


def test_replicating_by_weights_equals_replicating_images():
    rng = np.random.default_rng(1)
    images = 4
    wrong = {cell: rng.integers(0, 2, images).tolist() for cell in ALL_CELLS}
    clean = rng.integers(0, 2, images).tolist()
    records = make_records(wrong, clean)
    names = list(dict.fromkeys(records["sample"]))
    copies = dict(zip(names, (1, 3, 2, 1), strict=True))
    expanded = make_records(
        {cell: [w for w, k in zip(flags, copies.values(), strict=True) for _ in range(k)]
         for cell, flags in wrong.items()},
        [w for w, k in zip(clean, copies.values(), strict=True) for _ in range(k)],
    )  # fmt: skip
    suite = ImageNetCSuite(corruptions="all")
    weighted = replicated_summary(suite, records, copies)
    direct = suite.summarise(expanded)
    assert len(weighted) == len(direct) == 95 * 2 + 1 + 19 + 3 + 4
    for a, b in zip(weighted, direct, strict=True):
        assert {k: v for k, v in a.items() if k != "value"} == {
            k: v for k, v in b.items() if k != "value"
        }
        assert a["value"] == pytest.approx(b["value"], rel=1e-12)


def test_alexnet_own_errors_give_ce_100_mce_100_and_relative_mce_100():
    records, copies = alexnet_records()
    assert sum(copies.values()) == ALEXNET_IMAGES and len(copies) <= 97
    rows = replicated_summary(ImageNetCSuite(corruptions="all"), records, copies)
    assert all(row["n"] == ALEXNET_IMAGES for row in rows)
    assert not any("note" in row for row in rows)
    for corruption, severity in ALL_CELLS:
        error = value(rows, "error", corruption=corruption, severity=severity)["value"]
        assert error == pytest.approx(100 * alexnet_errors.ERRORS[corruption][severity - 1])
    for corruption in C.ALL:  # all 19, the 4 extras too
        assert value(rows, "ce", corruption=corruption)["value"] == pytest.approx(100, rel=1e-12)
    assert value(rows, "mce")["value"] == pytest.approx(100, rel=1e-12)
    for category in ("noise", "blur", "weather", "digital"):
        assert value(rows, "mce", category=category)["value"] == pytest.approx(100, rel=1e-12)
    # The clean error is AlexNet's, so every relative CE is 1 as well.
    assert value(rows, "clean_error")["value"] == pytest.approx(43.478, rel=1e-12)
    assert value(rows, "relative_mce")["value"] == pytest.approx(100, rel=1e-12)
    # Unnormalised: the mean of AlexNet's 75 common errors (0.788993), not of all 95.
    mean_error = value(rows, "mean_error")["value"]
    assert round(mean_error, 4) == 78.8993
    hand = 100 * sum(sum(alexnet_errors.ERRORS[c]) for c in C.COMMON) / 75
    assert mean_error == pytest.approx(hand, rel=1e-12)
    assert round(100 * sum(map(alexnet_sum, C.ALL)) / 95, 4) != 78.8993  # the 19-name mean


# --- hand examples --------------------------------------------------------------------------


def hand_example() -> pd.DataFrame:
    """Three images, all 75 common cells.

    image 0: wrong on clean and on every cell except brightness/1;
    image 1: right on clean, wrong on gaussian_noise/1-3 and fog/5 only;
    image 2: right everywhere.
    """
    wrong = {cell: [1, 0, 0] for cell in COMMON_CELLS}
    wrong[("brightness", 1)] = [0, 0, 0]
    for severity in (1, 2, 3):
        wrong[("gaussian_noise", severity)] = [1, 1, 0]
    wrong[("fog", 5)] = [1, 1, 0]
    return make_records(wrong, clean=[1, 0, 0])


def test_relative_mce_and_mean_error_against_a_hand_example():
    rows = ImageNetCSuite().summarise(hand_example())
    assert value(rows, "clean_error")["value"] == pytest.approx(100 / 3)
    # E(clean) = 1/3. Relative CE is 0 for the 12 corruptions whose every E(c, s) is 1/3;
    # sum_s (E - E_clean): gaussian_noise 3 x 1/3 = 1, fog 1/3, brightness -1/3.
    # AlexNet's sums minus 5 x 0.43478 = 2.17390:
    #   gaussian_noise 4.43214 - 2.17390 = 2.25824
    #   fog            4.09662 - 2.17390 = 1.92272
    #   brightness     2.82296 - 2.17390 = 0.64906
    # = (0.44282 + 0.17337 - 0.51356) / 15 = 0.0068417
    relative = (1 / 2.25824 + (1 / 3) / 1.92272 - (1 / 3) / 0.64906) / 15
    assert value(rows, "relative_mce")["value"] == pytest.approx(100 * relative, rel=1e-9)
    assert value(rows, "relative_mce")["value"] == pytest.approx(0.6842, abs=1e-4)
    # Mean error: 12 corruptions at 1/3, gaussian_noise (3 x 2/3 + 2 x 1/3) / 5 = 8/15,
    # fog (2/3 + 4 x 1/3) / 5 = 6/15, brightness (0 + 4 x 1/3) / 5 = 4/15.
    mean = (12 / 3 + 8 / 15 + 6 / 15 + 4 / 15) / 15
    assert value(rows, "mean_error")["value"] == pytest.approx(100 * mean, rel=1e-12)
    # CE = sum_s E / sum_s E_AlexNet: gaussian_noise (8/3) / 4.43214.
    ce = value(rows, "ce", corruption="gaussian_noise")["value"]
    assert ce == pytest.approx(100 * (8 / 3) / 4.43214, rel=1e-9)
    ces = [value(rows, "ce", corruption=c)["value"] for c in C.COMMON]
    assert value(rows, "mce")["value"] == pytest.approx(sum(ces) / 15, rel=1e-12)
    noise = [value(rows, "ce", corruption=c)["value"] for c in C.NOISE]
    assert value(rows, "mce", category="noise")["value"] == pytest.approx(sum(noise) / 3)


def test_extra_corruptions_get_their_own_ce_and_never_change_mce():
    rng = np.random.default_rng(7)
    images = 5
    common = {cell: rng.integers(0, 2, images).tolist() for cell in COMMON_CELLS}
    clean = rng.integers(0, 2, images).tolist()
    extra_cells = [(c, s) for c in C.EXTRA for s in C.SEVERITIES]
    extras = {cell: rng.integers(0, 2, images).tolist() for cell in extra_cells}
    all_wrong = {cell: [1] * images for cell in extra_cells}

    base = ImageNetCSuite(corruptions="common").summarise(make_records(common, clean))
    with_extras = ImageNetCSuite(corruptions="all").summarise(
        make_records({**common, **extras}, clean)
    )
    worse_extras = ImageNetCSuite(corruptions="all").summarise(
        make_records({**common, **all_wrong}, clean)
    )
    for rows in (with_extras, worse_extras):
        for metric in ("mce", "relative_mce", "mean_error"):
            assert value(rows, metric)["value"] == value(base, metric)["value"]
        for category in ("noise", "blur", "weather", "digital"):
            assert (
                value(rows, "mce", category=category)["value"]
                == value(base, "mce", category=category)["value"]
            )
        assert not any(row.get("category") == "extra" for row in rows)
    assert not any(row.get("corruption") in C.EXTRA for row in base)
    for corruption in C.EXTRA:
        wrong = sum(sum(extras[(corruption, s)]) for s in C.SEVERITIES)
        hand = 100 * (wrong / images) / alexnet_sum(corruption)
        assert value(with_extras, "ce", corruption=corruption)["value"] == pytest.approx(hand)
        hand_all_wrong = 100 * 5 / alexnet_sum(corruption)
        ce = value(worse_extras, "ce", corruption=corruption)["value"]
        assert ce == pytest.approx(hand_all_wrong)


# --- missing cells --------------------------------------------------------------------------


def not_computed(rows: list[dict], metric: str, **dims) -> str:
    row = value(rows, metric, **dims)
    assert math.isnan(row["value"]) and row["n"] == 0
    return row["note"]


def test_missing_severities_leave_ce_and_mce_without_a_value_and_say_which_cells():
    suite = ImageNetCSuite(severities="1,2,3")
    cells = [(c, s) for c in C.COMMON for s in (1, 2, 3)]
    assert suite.cells() == cells
    records = make_records({cell: [1, 0] for cell in cells}, clean=[0, 0])
    rows = suite.summarise(records)
    for corruption, severity in cells:
        assert value(rows, "error", corruption=corruption, severity=severity)["value"] == 50
    for corruption in C.COMMON:
        note = not_computed(rows, "ce", corruption=corruption)
        assert f"missing 2 cells ({corruption}/4, {corruption}/5)" in note
    for metric in ("mce", "relative_mce", "mean_error"):
        note = not_computed(rows, metric)
        assert "missing 30 cells (gaussian_noise/4, gaussian_noise/5, shot_noise/4" in note
    for category in ("noise", "blur", "weather", "digital"):
        assert "missing" in not_computed(rows, "mce", category=category)
    # No number where a cell is missing: every ce/mce-like row is a NaN with a note.
    aggregates = [r for r in rows if r["metric"] in ("ce", "mce", "relative_mce", "mean_error")]
    assert len(aggregates) == 15 + 3 + 4
    assert all(math.isnan(r["value"]) and r["note"] for r in aggregates)


def test_one_corruption_gets_its_ce_and_a_complete_category_its_mce():
    rng = np.random.default_rng(3)
    suite = ImageNetCSuite(corruptions="gaussian_noise")
    cells = [("gaussian_noise", s) for s in C.SEVERITIES]
    wrong = {cell: rng.integers(0, 2, 4).tolist() for cell in cells}
    rows = suite.summarise(make_records(wrong, clean=[0, 1, 0, 0]))
    hand = 100 * sum(map(sum, wrong.values())) / 4 / alexnet_sum("gaussian_noise")
    assert value(rows, "ce", corruption="gaussian_noise")["value"] == pytest.approx(hand)
    note = not_computed(rows, "mce")
    assert "missing 70 cells (shot_noise/1, shot_noise/2" in note
    assert "missing 10 cells (shot_noise/1" in not_computed(rows, "mce", category="noise")

    weather = ImageNetCSuite(corruptions="weather")
    cells = [(c, s) for c in C.WEATHER for s in C.SEVERITIES]
    wrong = {cell: rng.integers(0, 2, 4).tolist() for cell in cells}
    rows = weather.summarise(make_records(wrong, clean=[0, 0, 1, 0]))
    ces = [value(rows, "ce", corruption=c)["value"] for c in C.WEATHER]
    assert all(math.isfinite(ce) for ce in ces)
    assert value(rows, "mce", category="weather")["value"] == pytest.approx(sum(ces) / 4)
    assert "missing 55 cells" in not_computed(rows, "mce")
    for category in ("noise", "blur", "digital"):
        assert "missing" in not_computed(rows, "mce", category=category)


# --- generated views ------------------------------------------------------------------------


def test_generated_views_are_the_seeded_corruption_of_the_centre_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8))
    sample = Sample(f"{TENCH}/ILSVRC2012_val_00000001.JPEG", 0)
    suite = ImageNetCSuite(corruptions="gaussian_noise,brightness", generate=True)
    views = suite.views_from({"clean": image}, sample, 0, 7, Preprocessing())
    assert views.images.shape == (11, 3, 224, 224)
    assert list(views.meta["corruption"]) == ["clean"] + ["gaussian_noise"] * 5 + ["brightness"] * 5
    assert list(views.meta["severity"]) == [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5]
    centre = views.images[0].permute(1, 2, 0).numpy()
    assert np.array_equal(centre, C.center_224(image))
    for position, (corruption, severity) in ((3, ("gaussian_noise", 3)), (9, ("brightness", 4))):
        seed = C.corruption_seed(7, sample.key, corruption, severity)
        expected = C.corrupt(centre, corruption, severity, seed)
        assert np.array_equal(views.images[position].permute(1, 2, 0).numpy(), expected)
    again = suite.views_from({"clean": image}, sample, 5, 7, Preprocessing())
    assert np.array_equal(again.images.numpy(), views.images.numpy())  # position plays no part
    other = suite.views_from({"clean": image}, sample, 0, 8, Preprocessing())
    assert not np.array_equal(other.images[1].numpy(), views.images[1].numpy())

    jpeg = ImageNetCSuite(
        corruptions="gaussian_noise", severities="2", generate=True, jpeg_quality=85
    )
    views = jpeg.views_from({"clean": image}, sample, 0, 7, Preprocessing())
    corrupted = C.corrupt(
        centre, "gaussian_noise", 2, C.corruption_seed(7, sample.key, "gaussian_noise", 2)
    )
    decoded = np.asarray(Image.open(io.BytesIO(C.jpeg_bytes(corrupted, 85))).convert("RGB"))
    assert np.array_equal(views.images[1].permute(1, 2, 0).numpy(), decoded)


# --- end to end -----------------------------------------------------------------------------

CORRUPTIONS = "gaussian_noise,brightness"
RELEASED_CELLS = [("gaussian_noise", s) for s in C.SEVERITIES] + [
    ("brightness", 1),
    ("brightness", 2),
]
VAL_FILES = [f"{TENCH}/ILSVRC2012_val_00000001.JPEG", f"{GOLDFISH}/ILSVRC2012_val_00000002.JPEG"]


def invoke(*args: str) -> tuple[int, str, str]:
    """The CLI in-process, outside a test's capsys (module-scoped runs)."""
    out, err = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as exited,
    ):
        main(list(args))
    code = exited.value.code
    return (0 if code is None else code), out.getvalue(), err.getvalue()


def make_val(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in VAL_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / name, quality=95)
    return root


def make_released(root: Path, val: Path, cells, size: int = 224) -> Path:
    """A released-layout set for ``val``: the centre crop brightened by 8 x severity."""
    for name in VAL_FILES:
        with Image.open(val / name) as image:
            centre = C.center_224(image)
        if size != C.CROP:
            centre = np.asarray(Image.fromarray(centre).resize((size, size)))
        for corruption, severity in cells:
            path = root / corruption / str(severity) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            shifted = np.clip(centre.astype(int) + 8 * severity, 0, 255).astype(np.uint8)
            path.write_bytes(C.jpeg_bytes(shifted))
    return root


def run_args(val: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "imagenet-c",
        "--data", str(val), "--set", f"corruptions={CORRUPTIONS}", "--out", str(out),
        "--quiet", "--workers", "0", "--batch-size", "8", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One released and one generated run of the same two images (seed 0)."""
    from aabench.models import weights

    base = tmp_path_factory.mktemp("imagenet_c")

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to reach the network: {url}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "urlopen", refuse)
        patch.setenv("TORCH_HOME", str(base / "torch_home"))
        val = make_val(base / "val")
        root = make_released(base / "imagenet-c", val, RELEASED_CELLS)
        released = base / "released"
        code, _, err = invoke(*run_args(val, released, "--imagenet-c", str(root)))
        assert code == 0, err
        generated = base / "generated"
        code, _, err = invoke(*run_args(val, generated, "--set", "generate=true"))
        assert code == 0, err
    return {
        "val": val,
        "released": released / "resnet18_aa",
        "generated": generated / "resnet18_aa",
    }


def read_run(directory: Path) -> tuple[pd.DataFrame, dict]:
    table = pd.read_csv(directory / "imagenet-c.csv")
    return table, json.loads((directory / "imagenet-c.json").read_text())


def error_cells(table: pd.DataFrame) -> list[tuple[str, int]]:
    errors = table[table["metric"] == "error"]
    return list(zip(errors["corruption"], errors["severity"].astype(int), strict=True))


def row(table: pd.DataFrame, metric: str, corruption=None) -> pd.Series:
    selected = (table["metric"] == metric) & table["category"].isna()
    selected &= (
        table["corruption"].isna() if corruption is None else table["corruption"] == corruption
    )
    assert selected.sum() == 1
    return table[selected].iloc[0]


def test_released_run_reads_the_cells_present_and_says_what_is_missing(runs):
    table, provenance = read_run(runs["released"])
    assert error_cells(table) == RELEASED_CELLS
    assert set(table["n"][table["value"].notna()]) == {2}
    assert 0 <= row(table, "clean_error")["value"] <= 100
    # ce from the samples file by hand: images' wrong counts over 5 severities.
    samples = pd.read_csv(runs["released"] / "imagenet-c.samples.csv.gz")
    assert len(samples) == 2 * (1 + len(RELEASED_CELLS))
    noise = samples[samples["corruption"] == "gaussian_noise"]
    hand = 100 * (~noise["correct"]).sum() / 2 / alexnet_sum("gaussian_noise")
    assert row(table, "ce", "gaussian_noise")["value"] == pytest.approx(hand)
    brightness = row(table, "ce", "brightness")
    assert math.isnan(brightness["value"])
    assert "missing 3 cells (brightness/3, brightness/4, brightness/5)" in brightness["note"]
    for metric in ("mce", "relative_mce", "mean_error"):
        assert math.isnan(row(table, metric)["value"])
        assert "missing 68 cells (shot_noise/1" in row(table, metric)["note"]
    assert provenance["data_source"] == {
        "kind": "released",
        "missing_cells": ["brightness/3", "brightness/4", "brightness/5"],
    }
    assert "imagenet_c" not in provenance["protocol"]  # a location, not the protocol


def test_generated_run_is_labelled_with_the_corruption_library(runs):
    table, provenance = read_run(runs["generated"])
    cells = [(c, s) for c in CORRUPTIONS.split(",") for s in C.SEVERITIES]
    assert error_cells(table) == cells
    assert math.isfinite(row(table, "ce", "brightness")["value"])
    assert math.isnan(row(table, "mce")["value"]) and "missing" in row(table, "mce")["note"]
    source = provenance["data_source"]
    assert source["kind"] == "generated"
    assert source["library"] == corruption_library()
    assert version("imagecorruptions-imaug") in source["library"]
    assert provenance["protocol"]["generate"] is True


def test_compare_refuses_released_against_generated(cli, runs):
    released = str(runs["released"] / "imagenet-c.csv")
    generated = str(runs["generated"] / "imagenet-c.csv")
    code, stdout, err = cli("compare", released, generated)
    assert code == 2, err
    assert "different data sources" in err and "released" in err and "generated" in err
    assert err.count("\n") == 1 and stdout == ""
    code, _, err = cli("compare", released, generated, "--allow-mismatch", "--bootstrap", "20")
    assert code == 0, err


def test_the_same_seed_generates_identical_samples(runs, tmp_path):
    out = tmp_path / "again"
    code, _, err = invoke(*run_args(runs["val"], out, "--set", "generate=true", "--seed", "0"))
    assert code == 0, err
    name = "imagenet-c.samples.csv.gz"
    first = gzip.decompress((runs["generated"] / name).read_bytes())
    assert first == gzip.decompress((out / "resnet18_aa" / name).read_bytes())
    assert (runs["generated"] / "imagenet-c.csv").read_bytes() == (
        out / "resnet18_aa" / "imagenet-c.csv"
    ).read_bytes()


@pytest.mark.parametrize("workers", ["0", "1"])  # in-process, and raised in a worker
def test_released_images_of_another_size_are_refused_not_resized(cli, tmp_path, workers):
    val = make_val(tmp_path / "val")
    root = make_released(tmp_path / "imagenet-c", val, [("gaussian_noise", 1)], size=200)
    out = tmp_path / "out"
    code, stdout, err = cli(*run_args(val, out, "--imagenet-c", str(root), "--workers", workers))
    assert code == 2
    assert "is (200, 200), not (224, 224)" in err
    assert "released ImageNet-C is 224 x 224" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert stdout == ""
    assert not out.exists()


def test_clean_view_is_resize_256_crop_224_whatever_the_model_resizes_to():
    from PIL import Image

    from aabench.data.corruptions import center_224
    from aabench.models.preprocessing import Preprocessing

    image = Image.effect_mandelbrot((400, 300), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    view = ImageNetCSuite().prepare(image, Preprocessing(resize_size=232, crop_size=224))
    assert np.array_equal(view.permute(1, 2, 0).numpy(), center_224(image))


def test_jpeg_quality_needs_generate():
    from aabench.errors import UserError

    with pytest.raises(UserError, match="generate=true"):
        ImageNetCSuite(jpeg_quality=85)
