"""Reading what `aabench run` wrote: tables, provenance and samples files.

The builders here (``accuracy_records``, ``shift_records``, ``diagonal_records``,
``write_suite``, ``write_accuracy``, ``write_shift``) write hand-made run files with
known numbers; the compare and gate tests use them too.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.files import write_table
from aabench.results.load import SAMPLES_SUFFIX, load_directory, load_run, read_table
from aabench.results.table import TIDY_COLUMNS, tidy_table
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite

MODEL = "net"
FINGERPRINT = {"count": 20, "sha256": "d" * 64}


def sample_names(images: int) -> list[str]:
    return [f"n{index % 3:08d}/img{index}.png" for index in range(images)]


def accuracy_records(correct, top5=None) -> pd.DataFrame:
    """One view per image; label 7, prediction 7 when right and 3 when wrong."""
    correct = np.asarray(correct, dtype=bool)
    top5 = correct if top5 is None else np.asarray(top5, dtype=bool)
    images = len(correct)
    return pd.DataFrame(
        {
            "sample": sample_names(images),
            "view": 0,
            "label": 7,
            "pred": np.where(correct, 7, 3),
            "correct": correct,
            "top5_correct": top5,
            "p_true": np.where(correct, 0.9, 0.1),
            "p_other": np.where(correct, 0.05, 0.8),
        }
    )


def shift_records(preds, label: int = 7) -> pd.DataFrame:
    """``preds``: images x epochs x 2 top-1 predictions; the label of every image is 7."""
    preds = np.asarray(preds)
    images, epochs, _ = preds.shape
    names = sample_names(images)
    records = []
    for image in range(images):
        for epoch in range(epochs):
            for member in range(2):
                pred = int(preds[image, epoch, member])
                records.append(
                    {
                        "sample": names[image],
                        "view": 2 * epoch + member,
                        "label": label,
                        "pred": pred,
                        "correct": pred == label,
                        "top5_correct": pred == label,
                        "p_true": 0.5,
                        "p_other": 0.1,
                        "epoch": epoch,
                        "member": member,
                        "dy": (3 * image + epoch) % 32,
                        "dx": (5 * image + member) % 32,
                    }
                )
    return pd.DataFrame(records)


def shift_values(preds, label: int = 7) -> dict[str, float]:
    """The shift table's values, counted by hand in plain Python."""
    pairs = [(int(p0), int(p1)) for image in np.asarray(preds) for p0, p1 in image]
    agree = [p0 == p1 for p0, p1 in pairs]
    either = [label in (p0, p1) for p0, p1 in pairs]
    views = [p for pair in pairs for p in pair]
    values = {
        "consistency": 100.0 * sum(agree) / len(pairs),
        "accuracy": 100.0 * sum(p == label for p in views) / len(views),
    }
    if any(either):
        values["consistency_correct"] = (
            100.0 * sum(a and e for a, e in zip(agree, either, strict=True)) / sum(either)
        )
    return values


def diagonal_records(p_true, preds, label: int = 7) -> pd.DataFrame:
    """``p_true`` and ``preds``: images x (max_offset + 1), along the diagonal."""
    p_true, preds = np.asarray(p_true, dtype=float), np.asarray(preds)
    names = sample_names(len(p_true))
    records = []
    for image, name in enumerate(names):
        for offset in range(p_true.shape[1]):
            pred = int(preds[image, offset])
            records.append(
                {
                    "sample": name,
                    "view": offset,
                    "label": label,
                    "pred": pred,
                    "correct": pred == label,
                    "top5_correct": True,
                    "p_true": float(p_true[image, offset]),
                    "p_other": 0.0,
                    "offset": offset,
                }
            )
    return pd.DataFrame(records)


SUITES = {"accuracy": AccuracySuite, "shift": ShiftSuite, "diagonal": DiagonalSuite}


def write_suite(
    directory: Path,
    suite_name: str,
    rows: list[dict],
    records: pd.DataFrame | None = None,
    *,
    model: str = MODEL,
    parameters: dict | None = None,
    fingerprint: dict | None = None,
    n: int | None = None,
    provenance: bool = True,
) -> Path:
    """Write ``<directory>/<suite>.csv`` (+ .json, + .samples.csv.gz when ``records``).

    ``rows``: {metric, value, <dimension>} dicts; every row gets ``n`` (default: the
    number of images in ``records``, else 20).
    """
    suite = SUITES[suite_name](**(parameters or {}))
    if n is None:
        n = int(records["sample"].nunique()) if records is not None else 20
    table = tidy_table(
        [{"n": n, **row} for row in rows],
        run_id=f"{model}-{suite_name}",
        model=model,
        weights="none",
        suite=suite,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{suite_name}.csv"
    write_table(table, path)
    if provenance:
        document = {
            "run_id": f"{model}-{suite_name}",
            "model": model,
            "suite": suite_name,
            "parameters": suite.parameters(),
            "dimensions": list(suite.dimensions),
            "data": {"root": "/data", "fingerprint": fingerprint or FINGERPRINT},
            "n": n,
        }
        (directory / f"{suite_name}.json").write_text(json.dumps(document))
    if records is not None:
        write_table(records, directory / f"{suite_name}{SAMPLES_SUFFIX}")
    return path


def write_accuracy(directory: Path, correct, top5=None, *, samples: bool = True, **kwargs) -> Path:
    """An accuracy run whose top1 / top5 are 100 * (right images) / images."""
    records = accuracy_records(correct, top5)
    rows = [
        {"metric": "top1", "value": 100.0 * records["correct"].sum() / len(records)},
        {"metric": "top5", "value": 100.0 * records["top5_correct"].sum() / len(records)},
    ]
    kwargs.setdefault("n", len(records))
    return write_suite(directory, "accuracy", rows, records if samples else None, **kwargs)


def write_shift(directory: Path, preds, *, samples: bool = True, **kwargs) -> Path:
    preds = np.asarray(preds)
    rows = [{"metric": m, "value": v} for m, v in shift_values(preds).items()]
    kwargs.setdefault("parameters", {"epochs": preds.shape[1]})
    kwargs.setdefault("n", preds.shape[0])
    records = shift_records(preds) if samples else None
    return write_suite(directory, "shift", rows, records, **kwargs)


# --- read_table -----------------------------------------------------------------------


def test_read_table_returns_the_written_table(tmp_path):
    path = write_accuracy(tmp_path / MODEL, [1, 0, 1, 1])
    table = read_table(path)
    assert list(table.columns) == list(TIDY_COLUMNS)
    assert table["value"].tolist() == [75.0, 75.0]
    assert table["higher_is_better"].tolist() == [True, True]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "not an aabench table"),
        ("metric,value\ntop1,3\n", "lacks the columns run_id, model, weights, suite"),
        ("", "not a CSV table"),
    ],
)
def test_read_table_refuses_what_is_not_an_aabench_table(tmp_path, content, message):
    path = tmp_path / "other.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_table(path)


def test_read_table_refuses_binary_files_missing_files_and_directories(tmp_path):
    binary = tmp_path / "binary.csv"
    binary.write_bytes(gzip.compress(b"run_id,model\n" * 50))
    with pytest.raises(UserError, match="not a CSV table"):
        read_table(binary)
    with pytest.raises(UserError, match="does not exist"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="is a directory"):
        read_table(tmp_path)


# --- load_run ------------------------------------------------------------------------


def test_load_run_finds_provenance_and_samples_beside_the_table(tmp_path):
    path = write_accuracy(tmp_path / MODEL, [1, 0, 1, 1], model="resnet")
    run = load_run(path)
    assert run.label == "resnet"
    assert run.suite == "accuracy"
    assert run.path == path
    assert run.provenance["data"]["fingerprint"] == FINGERPRINT
    assert run.provenance["parameters"] == AccuracySuite().parameters()
    assert run.samples_path == tmp_path / MODEL / "accuracy.samples.csv.gz"
    samples = run.samples()
    assert samples["correct"].tolist() == [True, False, True, True]
    assert samples is run.samples()  # read once
    assert run.dimensions == []


def test_load_run_without_provenance_or_samples(tmp_path):
    path = write_accuracy(tmp_path / MODEL, [1, 0], samples=False, provenance=False)
    run = load_run(path)
    assert run.provenance is None
    assert run.samples_path is None
    assert run.samples() is None
    assert run.dimensions == []


def test_dimensions_come_from_provenance_or_else_from_the_extra_columns(tmp_path):
    rows = [
        {"metric": "accuracy", "value": 50.0, "offset": 0},
        {"metric": "accuracy", "value": 40.0},
    ]
    with_json = write_suite(tmp_path / "a", "diagonal", rows)
    without = write_suite(tmp_path / "b", "diagonal", rows, provenance=False)
    assert load_run(with_json).dimensions == ["offset"]
    assert load_run(without).dimensions == ["offset"]


def test_blank_and_integer_offsets_read_back_as_floats_with_nan(tmp_path):
    rows = [
        {"metric": "accuracy", "value": 50.0, "offset": 16},
        {"metric": "accuracy", "value": 40.0},
    ]
    table = load_run(write_suite(tmp_path, "diagonal", rows)).table
    assert table["offset"].iloc[0] == 16.0
    assert pd.isna(table["offset"].iloc[1])


def test_a_table_of_several_suites_is_refused(tmp_path):
    first = tidy_table(
        [{"metric": "top1", "value": 1.0, "n": 2}],
        run_id="r",
        model="m",
        weights="none",
        suite=AccuracySuite(),
    )
    second = tidy_table(
        [{"metric": "consistency", "value": 1.0, "n": 2}],
        run_id="r",
        model="m",
        weights="none",
        suite=ShiftSuite(),
    )
    path = tmp_path / "both.csv"
    pd.concat([first, second]).to_csv(path, index=False)
    with pytest.raises(UserError, match="holds 2 suites"):
        load_run(path)


def test_unreadable_provenance_is_a_user_error(tmp_path):
    path = write_accuracy(tmp_path, [1, 0])
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read provenance"):
        load_run(path)


def test_a_corrupt_samples_file_is_a_user_error_on_load(tmp_path):
    path = write_accuracy(tmp_path, [1, 0])
    (tmp_path / "accuracy.samples.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read samples file"):
        load_run(path)


# --- load_directory ------------------------------------------------------------------


def test_load_directory_reads_every_suite_table_and_skips_hidden_files(tmp_path):
    directory = tmp_path / MODEL
    write_accuracy(directory, [1, 1, 0])
    write_shift(directory, [[[7, 7]], [[7, 3]], [[3, 3]]])
    (directory / ".accuracy.csv.123.tmp.csv").write_text("half-written")
    runs = load_directory(directory)
    assert sorted(runs) == ["accuracy", "shift"]
    assert runs["shift"].samples_path == directory / "shift.samples.csv.gz"
    assert runs["accuracy"].table["value"].tolist() == pytest.approx([200 / 3, 200 / 3])


def test_load_directory_without_tables_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"holds no <suite>\.csv tables"):
        load_directory(tmp_path)


# --- checked against provenance and samples ----------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "accepted"),
    [(75.0, True), (75.00001, True), (75.001, False), (74.99, False)],
)
def test_values_must_be_what_the_samples_give_to_float32_rounding(tmp_path, recorded, accepted):
    """The samples keep float32 outputs: 1e-6 of a % metric's scale is rounding, 1e-3 is
    an edit."""
    path = write_accuracy(tmp_path, [1, 0, 1, 1])  # top1 = top5 = 75 %
    table = pd.read_csv(path)
    table.loc[0, "value"] = recorded
    table.to_csv(path, index=False)
    if accepted:
        assert load_run(path).unchecked is None
        return
    with pytest.raises(UserError) as refused:
        load_run(path)
    assert str(refused.value) == (
        f"{path}, row 1 (top1): the table says {recorded:.10g} (n=4), its samples "
        f"{tmp_path / 'accuracy.samples.csv.gz'} give 75 (n=4): the table was edited, or its "
        "files come from different runs; rerun the suite to write its files again"
    )


def test_what_could_not_be_recomputed_is_named(tmp_path):
    without_samples = write_accuracy(tmp_path / "a", [1, 0], samples=False)
    without_provenance = write_accuracy(tmp_path / "b", [1, 0], provenance=False)
    assert load_run(without_samples).unchecked == (
        f"{without_samples} has no samples file beside it, so its values are not recomputed"
    )
    assert load_run(without_provenance).unchecked == (
        f"{without_provenance} has no provenance beside it, so its values are not recomputed"
    )


def test_a_run_id_of_hex_digits_that_looks_like_a_number_is_read_as_text(tmp_path):
    path = write_accuracy(tmp_path, [1, 0])
    for name in (path, path.with_suffix(".json")):
        name.write_text(name.read_text().replace("net-accuracy", "3e1234567890"))
    run = load_run(path)
    assert run.table["run_id"].tolist() == ["3e1234567890"] * 2
