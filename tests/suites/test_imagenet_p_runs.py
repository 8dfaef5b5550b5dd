"""`aabench run --suite imagenet-p` end to end: released videos, generated sequences,
normalisation by a reference run's table, and the errors a user can meet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.benchmark.data.test_imagenet_p_videos import make_imagenet_p
from tests.helpers import GOLDFISH, TENCH, noise_folder

MODEL = ("--model", "alexnet", "--weights", "none", "--device", "cpu", "--quiet")


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", *MODEL, "--suite", "imagenet-p", "--workers", "0", "--out", str(out), *extra]


@pytest.fixture
def val(tmp_path):
    return noise_folder(tmp_path / "val", {TENCH: [(64, 64)], GOLDFISH: [(64, 80)]})


def read(directory: Path) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    return (
        pd.read_csv(directory / "imagenet-p.csv"),
        json.loads((directory / "imagenet-p.json").read_text()),
        pd.read_csv(directory / "imagenet-p.samples.csv.gz"),
    )


def test_released_videos_end_to_end(cli, tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"translate": 41, "gaussian_noise_2": 31})
    out = tmp_path / "out"
    code, _, err = cli(
        *run_args(out, "--imagenet-p", str(root)),
        "--set",
        "perturbations=translate,gaussian_noise",
        "--set",
        "difficulty=2",
    )
    assert code == 0, err
    table, provenance, samples = read(out / "alexnet")
    assert provenance["data_source"] == {
        "kind": "released",
        "directories": {"gaussian_noise": "gaussian_noise_2", "translate": "translate"},
    }
    assert provenance["n"] == 2
    assert provenance["data"]["fingerprint"]["count"] == 2
    assert samples.groupby(["perturbation"]).size().to_dict() == {
        "gaussian_noise": 2 * 31,
        "translate": 2 * 41,
    }
    assert set(samples["sample"]) == {
        f"{TENCH}/ILSVRC2012_val_00000001.mp4",
        f"{GOLDFISH}/ILSVRC2012_val_00000002.mp4",
    }
    rows = table[table["metric"] == "flip_prob"]
    assert sorted(rows["perturbation"]) == ["gaussian_noise", "translate"]


def test_generated_run_then_normalised_by_it_gives_100(cli, val, tmp_path):
    reference = tmp_path / "reference"
    flags = ["--data", str(val), "--limit", "1", "--generate"]
    flags += ["--set", "perturbations=rotate,scale,translate"]
    code, _, err = cli(*run_args(reference, *flags))
    assert code == 0, err
    table, provenance, _ = read(reference / "alexnet")
    assert provenance["data_source"]["kind"] == "generated"
    assert table["metric"].tolist().count("flip_prob") == 3

    # The same run normalised by itself: every fr, t5d and mfr_geometric is 100
    # (where the reference moves at all).
    normalised = tmp_path / "normalised"
    table_path = reference / "alexnet" / "imagenet-p.csv"
    code, _, err = cli(*run_args(normalised, *flags, "--normalize-by", str(table_path)))
    assert code == 0, err
    table, provenance, _ = read(normalised / "alexnet")
    assert provenance["normalization"]["run_id"] == pd.read_csv(table_path)["run_id"].iloc[0]
    assert provenance["normalization"]["provenance"]["model"] == "alexnet"
    assert provenance["protocol"]["reference_run_id"] == provenance["normalization"]["run_id"]
    reference_table = pd.read_csv(table_path).set_index(["metric", "perturbation"])["value"]
    for metric, raw in (("fr", "flip_prob"), ("t5d", "top5_dist")):
        rows = table[table["metric"] == metric].set_index("perturbation")
        assert sorted(rows.index) == ["rotate", "scale", "translate"]
        for perturbation, row in rows.iterrows():
            if reference_table[(raw, perturbation)] > 0:
                assert row["value"] == pytest.approx(100.0)
            else:  # nothing to divide by: said, not computed
                assert np.isnan(row["value"]) and "no non-zero value" in row["note"]
    # Random weights barely move their top 1, but their top 5 does: t5d is computed.
    assert table.loc[table["metric"] == "t5d", "value"].notna().any()

    # compare rebuilds the normalisation from the provenance: the reference table may
    # be gone by then.
    import shutil

    shutil.copytree(normalised, tmp_path / "again")
    shutil.rmtree(reference)
    code, out, err = cli(
        "compare",
        str(normalised / "alexnet" / "imagenet-p.csv"),
        str(tmp_path / "again" / "alexnet" / "imagenet-p.csv"),
        "--all-rows",
        "--bootstrap",
        "50",
        "--json",
    )
    assert code == 0, err
    compared = pd.DataFrame(json.loads(out))
    t5d = compared[compared["metric"] == "t5d"]
    assert not t5d.empty and (t5d["delta"].dropna() == 0).all()


def test_imagenet_p_needs_released_videos_or_generate(cli, val, tmp_path):
    code, _, err = cli(*run_args(tmp_path / "out", "--data", str(val)))
    assert code == 2
    assert "--imagenet-p DIR" in err and "--generate" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_imagenet_p_options_need_the_suite(cli, tmp_path):
    code, _, err = cli("run", *MODEL, "--suite", "accuracy", "--imagenet-p", str(tmp_path))
    assert code == 2 and "--imagenet-p is for --suite imagenet-p" in err


def test_a_video_with_the_wrong_frame_count_stops_the_run_unless_skipped(cli, tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 31}, images=2)
    short = make_imagenet_p(tmp_path / "short", {"rotate": 25}, images=1)
    video = f"{TENCH}/ILSVRC2012_val_00000001.mp4"
    (root / "rotate" / video).write_bytes((short / "rotate" / video).read_bytes())
    out = tmp_path / "out"
    args = run_args(out, "--imagenet-p", str(root), "--set", "perturbations=rotate")
    code, _, err = cli(*args)
    assert code == 2
    assert "25 frames, not the 31 of rotate" in err and "ILSVRC2012_val_00000001.mp4" in err
    assert "--skip-bad-images" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not list(out.rglob("imagenet-p.*"))
    code, _, err = cli(*args, "--skip-bad-images")
    assert code == 0, err
    assert json.loads((out / "alexnet" / "imagenet-p.json").read_text())["n"] == 1


def test_an_unreadable_video_stops_the_run_unless_skipped(cli, tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 31}, images=2)
    broken = root / "rotate" / GOLDFISH / "ILSVRC2012_val_00000002.mp4"
    broken.write_bytes(b"\x00" * 64)
    out = tmp_path / "out"
    args = run_args(out, "--imagenet-p", str(root), "--set", "perturbations=rotate")
    code, _, err = cli(*args)
    assert code == 2
    assert "ILSVRC2012_val_00000002.mp4" in err and "--skip-bad-images" in err
    assert not list(out.rglob("imagenet-p.*"))

    code, _, err = cli(*args, "--skip-bad-images")
    assert code == 0, err
    _, provenance, samples = read(out / "alexnet")
    assert provenance["n"] == 1
    assert provenance["data"]["skipped_images"][0].startswith(
        f"{GOLDFISH}/ILSVRC2012_val_00000002.mp4: "
    )
    assert samples["sample"].nunique() == 1


def test_compare_refuses_released_against_generated_imagenet_p(cli, val, tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 31})
    args = ["--set", "perturbations=rotate"]
    assert cli(*run_args(tmp_path / "rel", "--imagenet-p", str(root), *args))[0] == 0
    assert cli(*run_args(tmp_path / "gen", "--data", str(val), "--generate", *args))[0] == 0
    code, _, err = cli(
        "compare",
        str(tmp_path / "rel" / "alexnet" / "imagenet-p.csv"),
        str(tmp_path / "gen" / "alexnet" / "imagenet-p.csv"),
    )
    assert code == 2 and "released" in err and "generated" in err
