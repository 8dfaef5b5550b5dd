"""`aabench run` end to end on the embedded sample set, with random resnet18_aa weights."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime

import pandas as pd
import pytest
import torch

from aabench.data.folder import open_image_folder
from aabench.results.table import TIDY_COLUMNS

MODEL = ("--model", "resnet18_aa", "--weights", "none")
SAMPLE_PATHS = sorted(s.path for s in open_image_folder("sample").samples)
SUITES = ("accuracy", "shift", "diagonal")
PROVENANCE_KEYS = {
    "versions",
    "device",
    "amp",
    "seed",
    "parameters",
    "data",
    "n",
    "weights",
    "started",
    "finished",
    "images_per_second",
}


def test_run_writes_table_provenance_and_samples_per_suite(cli, tmp_path):
    out = tmp_path / "runs"
    code, stdout, err = cli(
        "run", *MODEL, "--suite", ",".join(SUITES), "--out", str(out), "--quiet",
        "--set", "epochs=1", "--batch-size", "16",
    )  # fmt: skip
    assert code == 0, err
    directory = out / "resnet18_aa"
    assert sorted(p.name for p in out.iterdir()) == ["resnet18_aa"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        f"{suite}{ext}" for suite in SUITES for ext in (".csv", ".json", ".samples.csv.gz")
    )  # in particular, no leftover temporary (".name.tmp") files
    assert "table:" in stdout

    run_ids = set()
    for suite in SUITES:
        table = pd.read_csv(directory / f"{suite}.csv", keep_default_na=False, dtype=str)
        assert list(table.columns)[: len(TIDY_COLUMNS)] == list(TIDY_COLUMNS)
        assert set(table["weights"]) == {"none"}
        assert set(table["model"]) == {"resnet18_aa"}
        assert set(table["suite"]) == {suite}
        assert set(table["n"]) == {"5"}
        assert table["run_id"].nunique() == 1
        run_ids |= set(table["run_id"])

        provenance = json.loads((directory / f"{suite}.json").read_text())
        assert set(provenance) >= PROVENANCE_KEYS
        assert provenance["run_id"] == table["run_id"].iloc[0]
        assert provenance["seed"] == 0
        assert provenance["amp"] == "off"
        assert provenance["device"] == "cpu"
        assert provenance["n"] == 5
        assert provenance["weights"]["name"] == "none"
        assert provenance["weights"]["file"] is None
        assert set(provenance["versions"]) >= {"aabench", "torch", "torchvision", "python"}
        assert provenance["data"]["fingerprint"] == open_image_folder("sample").fingerprint()
        assert provenance["data"]["skipped_images"] == []
        assert datetime.fromisoformat(provenance["started"]) <= datetime.fromisoformat(
            provenance["finished"]
        )
        assert provenance["images_per_second"] > 0

        samples = pd.read_csv(directory / f"{suite}.samples.csv.gz")
        assert list(samples.columns)[:5] == ["sample", "view", "label", "pred", "correct"]
        assert sorted(samples["sample"].unique()) == SAMPLE_PATHS
        assert "n02123045/chelsea.png" in set(samples["sample"])
    assert len(run_ids) == 3

    parameters = {
        suite: json.loads((directory / f"{suite}.json").read_text())["parameters"]
        for suite in SUITES
    }
    assert parameters["shift"]["epochs"] == 1
    assert parameters["diagonal"] == {"max_offset": 32}
    assert parameters["accuracy"] == {"resize_size": None, "crop_size": None}

    shift_samples = pd.read_csv(directory / "shift.samples.csv.gz")
    assert len(shift_samples) == 5 * 2
    diagonal = pd.read_csv(directory / "diagonal.csv")
    assert list(diagonal.columns) == [*TIDY_COLUMNS, "offset"]
    per_offset = diagonal[diagonal["offset"].notna()]
    assert sorted(per_offset["offset"].astype(int).unique()) == list(range(33))
    assert sorted(diagonal[diagonal["offset"].isna()]["metric"]) == ["accuracy", "flips", "wobble"]
    # Offsets are written as integers ("16", not "16.0"); overall rows leave them blank.
    text = (directory / "diagonal.csv").read_text().splitlines()
    assert text[1].endswith(",0") and text[-1].endswith(",")
    assert len(pd.read_csv(directory / "diagonal.samples.csv.gz")) == 5 * 33


def test_json_prints_the_headline_rows(cli, tmp_path):
    code, stdout, err = cli(
        "run", *MODEL, "--suite", "accuracy,shift", "--out", str(tmp_path), "--json",
        "--set", "epochs=1", "--limit", "2", "--workers", "0",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(stdout)
    assert [(row["suite"], row["metric"]) for row in rows][:4] == [
        ("accuracy", "top1"),
        ("accuracy", "top5"),
        ("shift", "consistency"),
        ("shift", "accuracy"),
    ]
    for row in rows:
        assert list(row) == [*TIDY_COLUMNS, "note"]  # note: why a value is missing (none here)
        assert row["note"] is None
        assert row["model"] == "resnet18_aa" and row["weights"] == "none" and row["n"] == 2
        assert isinstance(row["value"], float)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A fixed resnet18_aa checkpoint: random initialisation itself is not seeded by --seed."""
    from aabench.models.zoo import create_model

    torch.manual_seed(0)
    module = create_model("resnet18_aa", weights="none").module
    path = tmp_path_factory.mktemp("weights") / "my_resnet18_aa.pth"
    torch.save(module.state_dict(), path)
    return path


def run_small(cli, out, seed: int, checkpoint) -> None:
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", str(checkpoint),
        "--suite", "accuracy,shift", "--out", str(out), "--quiet",
        "--set", "epochs=2", "--limit", "2", "--workers", "0", "--seed", str(seed),
    )  # fmt: skip
    assert code == 0, err


def test_the_same_seed_gives_identical_files(cli, tmp_path, checkpoint):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_small(cli, first, 3, checkpoint)
    run_small(cli, second, 3, checkpoint)
    run_small(cli, other, 4, checkpoint)
    for suite in ("accuracy", "shift"):
        a = first / "resnet18_aa" / f"{suite}.csv"
        assert a.read_bytes() == (second / "resnet18_aa" / a.name).read_bytes()
        samples = f"{suite}.samples.csv.gz"
        assert gzip.decompress((first / "resnet18_aa" / samples).read_bytes()) == gzip.decompress(
            (second / "resnet18_aa" / samples).read_bytes()
        )
    table = pd.read_csv(first / "resnet18_aa" / "shift.csv")
    assert set(table["weights"]) == {"my_resnet18_aa.pth"}
    provenance = json.loads((first / "resnet18_aa" / "shift.json").read_text())
    assert provenance["weights"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["seed"] == 3
    shift_a = pd.read_csv(first / "resnet18_aa" / "shift.samples.csv.gz")
    shift_c = pd.read_csv(other / "resnet18_aa" / "shift.samples.csv.gz")
    assert not shift_a[["dy", "dx"]].equals(shift_c[["dy", "dx"]])
    run_c = pd.read_csv(other / "resnet18_aa" / "shift.csv")["run_id"].iloc[0]
    assert table["run_id"].iloc[0] != run_c


@pytest.mark.parametrize(
    "args, message",
    [
        (("--suite", "nope"), "aabench: error: unknown suite 'nope'"),
        (("--suite", "shift", "--set", "bogus=1"), "aabench: error: unknown --set key bogus"),
        (("--suite", "shift", "--set", "epochs=x"), "aabench: error: --set epochs='x'"),
        (("--suite", " , "), "aabench: error: --suite is empty"),
        (("--suite", "accuracy", "--data", "/nonexistent/aabench"), "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(cli, tmp_path, args, message):
    out = tmp_path / "runs"
    code, stdout, err = cli("run", *MODEL, *args, "--out", str(out), "--quiet")
    assert code == 2
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert stdout == ""
    assert not out.exists()


def test_every_blurpool_form_gives_the_same_table_and_is_recorded(cli, tmp_path):
    """The forms compute the same blur + subsample: the tables are equal, and each
    run's provenance says which form computed its numbers."""
    tables = {}
    for form in ("reference", "separable", "cascade", "fused", "auto"):
        out = tmp_path / form
        code, _, err = cli(
            "run", *MODEL, "--suite", "accuracy", "--device", "cpu", "--workers", "0",
            "--quiet", "--blurpool", form, "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        provenance = json.loads((out / "resnet18_aa" / "accuracy.json").read_text())
        chosen = "reference" if form == "auto" else form  # the CPU's measured fastest
        # resnet18_aa has 7 BlurPools; but for the reference, its stem's 2x2 stride-1
        # max pool is computed as shifted maxima on the CPU
        shifted = {} if form == "reference" else {"shifted_max": 1}
        assert provenance["blurpool"] == {chosen: 7, **shifted}
        tables[form] = pd.read_csv(out / "resnet18_aa" / "accuracy.csv")[["metric", "value"]]
    for form, table in tables.items():
        pd.testing.assert_frame_equal(table, tables["reference"], obj=form)
    bad = tmp_path / "bad"
    code, _, err = cli(
        "run", *MODEL, "--suite", "accuracy", "--blurpool", "fast", "--quiet", "--out", str(bad)
    )  # fmt: skip
    assert code == 2
    assert "--blurpool must be auto or one of reference, separable, cascade, fused" in err
    assert not bad.exists()


def test_folding_and_chunks_are_recorded_and_refused_where_they_change_what_is_measured(
    cli, tmp_path
):
    """Folded or not, the same table; the provenance says which; a suite that measures
    layer outputs (the convolutions', which folding changes) refuses the flag."""
    tables = {}
    for flag, folded in (("--fold-batchnorm", 20), ("--no-fold-batchnorm", 0)):
        out = tmp_path / flag
        code, _, err = cli(
            "run", *MODEL, "--suite", "accuracy", "--device", "cpu", "--workers", "0",
            "--quiet", flag, "--out", str(out),
        )  # fmt: skip
        assert code == 0, err
        provenance = json.loads((out / "resnet18_aa" / "accuracy.json").read_text())
        assert provenance["folded_batchnorms"] == folded
        assert provenance["forward_chunk"] == 8  # the CPU's measured chunk
        tables[flag] = pd.read_csv(out / "resnet18_aa" / "accuracy.csv")[["metric", "value"]]
    pd.testing.assert_frame_equal(tables["--fold-batchnorm"], tables["--no-fold-batchnorm"])
    bad = tmp_path / "bad"
    refusals = {
        ("--fold-batchnorm",): "--fold-batchnorm: the equivariance suite measures layer "
        "outputs, which folding changes; run it without the flag",
        ("--forward-chunk", "4"): "--forward-chunk: the equivariance suite measures layer "
        "outputs over whole passes; run it without the option",
    }
    for flag, message in refusals.items():
        code, _, err = cli("run", *MODEL, "--suite", "equivariance", *flag, "--out", str(bad))
        assert code == 2
        assert err.strip().splitlines() == [f"aabench: error: {message}"]
        assert not bad.exists()
