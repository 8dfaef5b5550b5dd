"""Comparing runs: alignment, deltas, paired statistics and refusals, library and CLI."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.compare import compare, compare_groups, dimension_key, load_runs
from aabench.results.load import RunData, load_run
from aabench.results.stats import mcnemar_exact
from aabench.results.table import tidy_table
from aabench.suites.diagonal import DiagonalSuite
from tests.results.test_load import (
    FINGERPRINT,
    MODEL,
    shift_values,
    write_accuracy,
    write_shift,
    write_suite,
)

FEW = 200  # bootstrap replicates: enough for these small, exact cases and fast


def discordant(both: int, only_a: int, only_b: int, neither: int):
    """Per-image outcomes of runs A and B with the given concordant / discordant counts."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return a, b


def flag(value) -> bool | None:
    """A significance cell as None or a plain bool (pandas hands back numpy bools)."""
    return None if value is None else bool(value)


def row(rows: pd.DataFrame, metric: str, suite: str | None = None, **dims) -> pd.Series:
    selected = rows["metric"] == metric
    if suite:
        selected &= rows["suite"] == suite
    for dim, value in dims.items():
        selected &= rows[dim].isna() if value is None else rows[dim] == value
    (index,) = rows.index[selected]
    return rows.loc[index]


def diagonal_rows(base: float) -> list[dict]:
    rows = []
    for offset in range(3):
        rows.append({"metric": "accuracy", "value": base + offset, "offset": offset})
        rows.append({"metric": "p_true", "value": base / 2 + offset, "offset": offset})
    rows.append({"metric": "accuracy", "value": base + 10})
    rows.append({"metric": "wobble", "value": 5.0})
    rows.append({"metric": "flips", "value": 1.0})
    return rows


# --- alignment and deltas ---------------------------------------------------------------


def test_rows_align_on_suite_metric_and_dimension_including_blank_dimensions(tmp_path):
    reference = write_suite(tmp_path / "ref", "diagonal", diagonal_rows(50.0), model="ref")
    candidate_rows = diagonal_rows(60.0)[::-1]  # another order: alignment is by key
    candidate = write_suite(tmp_path / "cand", "diagonal", candidate_rows, model="cand")
    result = compare([load_run(reference), load_run(candidate)], replicates=FEW)
    rows = result.rows
    assert len(rows) == 9
    for offset in range(3):
        accuracy = row(rows, "accuracy", offset=offset)
        assert accuracy["reference_value"] == 50.0 + offset
        assert accuracy["candidate_value"] == 60.0 + offset
        assert accuracy["delta"] == 10.0
        p_true = row(rows, "p_true", offset=offset)
        assert (p_true["reference_value"], p_true["candidate_value"]) == (
            25.0 + offset,
            30.0 + offset,
        )
    overall = row(rows, "accuracy", offset=None)
    assert (overall["reference_value"], overall["candidate_value"]) == (60.0, 70.0)
    assert row(rows, "wobble", offset=None)["delta"] == 0.0
    assert set(rows["reference"]) == {"ref"} and set(rows["candidate"]) == {"cand"}
    assert rows["suite"].eq("diagonal").all()
    # Without samples files: no paired statistics.
    assert rows["test"].isna().all() and rows["significant"].isna().all()


def test_integer_offsets_match_offsets_read_back_from_csv_as_floats(tmp_path):
    rows = diagonal_rows(50.0)
    suite = DiagonalSuite()
    table = tidy_table(
        [{"n": 20, **r} for r in rows], run_id="r", model="ref", weights="none", suite=suite
    )
    assert str(table["offset"].dtype) == "Int64"
    reference = RunData(label="ref", suite="diagonal", table=table)
    path = write_suite(tmp_path, "diagonal", diagonal_rows(52.0), model="cand", provenance=False)
    candidate = load_run(path)
    assert candidate.table["offset"].dtype == np.float64
    result = compare([reference, candidate], replicates=FEW)
    assert len(result.rows) == 9
    assert result.rows["delta"].tolist() == [2.0, 1.0] * 3 + [2.0, 0.0, 0.0]
    assert row(result.rows, "accuracy", offset=2)["candidate_value"] == 54.0


def test_dimension_key_does_not_depend_on_how_a_column_was_typed():
    frame = pd.DataFrame(
        {
            "ints": pd.array([16, None, 0], dtype="Int64"),
            "floats": [16.0, np.nan, 0.0],
            "text": ["a", None, "b"],
        }
    )
    assert dimension_key(frame, ["ints"]).tolist() == ["16", "", "0"]
    assert dimension_key(frame, ["floats"]).tolist() == ["16", "", "0"]
    assert dimension_key(frame, ["floats", "text"]).tolist() == ["16|a", "|", "0|b"]
    assert dimension_key(frame, ["missing"]).tolist() == ["", "", ""]
    assert dimension_key(frame, []).tolist() == ["", "", ""]


def test_delta_is_candidate_minus_reference_and_improved_follows_the_direction(tmp_path):
    reference_rows = [
        {"metric": "accuracy", "value": 70.0},
        {"metric": "wobble", "value": 5.0},
        {"metric": "flips", "value": 1.0},
        {"metric": "p_true", "value": 40.0, "offset": 0},
    ]
    candidate_rows = [
        {"metric": "accuracy", "value": 68.5},  # lower accuracy: worse
        {"metric": "wobble", "value": 4.0},  # lower wobble: better
        {"metric": "flips", "value": 1.5},  # more flips: worse
        {"metric": "p_true", "value": 40.0, "offset": 0},  # equal: not improved
    ]
    reference = write_suite(tmp_path / "a", "diagonal", reference_rows)
    candidate = write_suite(tmp_path / "b", "diagonal", candidate_rows)
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    expected = {
        "accuracy": (-1.5, False, True),
        "wobble": (-1.0, True, False),
        "flips": (0.5, False, False),
        "p_true": (0.0, False, True),
    }
    for metric, (delta, improved, higher_is_better) in expected.items():
        found = row(rows, metric)
        assert found["delta"] == delta
        assert bool(found["improved"]) is improved
        assert bool(found["higher_is_better"]) is higher_is_better


# --- paired statistics ------------------------------------------------------------------


@pytest.mark.parametrize(("only_a", "only_b"), [(1, 7), (0, 8), (3, 3), (5, 0)])
def test_top1_gets_an_exact_mcnemar_test_from_the_discordant_images(tmp_path, only_a, only_b):
    a, b = discordant(both=8, only_a=only_a, only_b=only_b, neither=4)
    reference = write_accuracy(tmp_path / "a", a, top5=[1] * len(a), model="ref")
    candidate = write_accuracy(tmp_path / "b", b, top5=[1] * len(b), model="cand")
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    top1 = row(rows, "top1")
    images = len(a)
    assert top1["delta"] == pytest.approx(100.0 * (only_b - only_a) / images)
    assert top1["test"] == "mcnemar"
    expected = mcnemar_exact(only_a, only_b)
    assert top1["p_value"] == expected
    assert flag(top1["significant"]) is (expected < 0.05)
    assert top1["ci_low"] <= top1["delta"] <= top1["ci_high"]
    # top5: every image right in both runs -> no discordant image, p = 1.
    top5 = row(rows, "top5")
    assert (top5["test"], top5["p_value"], flag(top5["significant"])) == ("mcnemar", 1.0, False)
    assert (top5["ci_low"], top5["ci_high"]) == (0.0, 0.0)


def test_hand_values_of_the_mcnemar_p_for_constructed_runs(tmp_path):
    cases = {(1, 7): 2 * (1 + 8) / 2**8, (0, 8): 2 / 2**8, (0, 5): 0.0625}
    for (only_a, only_b), p in cases.items():
        a, b = discordant(both=3, only_a=only_a, only_b=only_b, neither=2)
        directory = tmp_path / f"{only_a}-{only_b}"
        reference = write_accuracy(directory / "a", a)
        candidate = write_accuracy(directory / "b", b)
        top1 = row(compare([load_run(reference), load_run(candidate)], replicates=FEW).rows, "top1")
        assert top1["p_value"] == pytest.approx(p, rel=1e-12)
        assert flag(top1["significant"]) is (p < 0.05)


def test_shift_metrics_get_a_bootstrap_interval(tmp_path):
    rng = np.random.default_rng(0)
    images = 30
    preds_a = np.where(rng.random((images, 1, 2)) < 0.6, 7, rng.integers(0, 3, (images, 1, 2)))
    preds_b = np.where(rng.random((images, 1, 2)) < 0.8, 7, rng.integers(0, 3, (images, 1, 2)))
    reference = write_shift(tmp_path / "a", preds_a)
    candidate = write_shift(tmp_path / "b", preds_b)
    rows = compare([load_run(reference), load_run(candidate)], replicates=500).rows
    values_a, values_b = shift_values(preds_a), shift_values(preds_b)
    for metric in ("consistency", "accuracy", "consistency_correct"):
        found = row(rows, metric)
        assert found["delta"] == pytest.approx(values_b[metric] - values_a[metric])
        # consistency is 0/1 per image here but no outcome metric; accuracy has two views
        # per image: neither is a McNemar case.
        assert found["test"] == "bootstrap"
        # An overall row is a family of one: no correction, the p-value decides.
        assert 2 / 501 <= found["p_value"] <= 1.0
        assert (found["family_size"], found["correction"]) == (1, "")
        assert found["p_adjusted"] == found["p_value"]
        assert found["ci_low"] <= found["delta"] <= found["ci_high"]
        assert flag(found["significant"]) is bool(found["p_value"] < 0.05)
        # Same replicates: the interval excludes zero exactly when the p-value rejects here.
        assert flag(found["significant"]) is bool(found["ci_low"] > 0 or found["ci_high"] < 0)
        assert found["n"] == images


def test_bootstrap_significance_of_a_certain_and_of_no_difference(tmp_path):
    agree = [[[7, 7]]] * 10
    disagree = [[[7, 3]]] * 10
    same_a = write_shift(tmp_path / "a", agree)
    same_b = write_shift(tmp_path / "b", agree)
    other = write_shift(tmp_path / "c", disagree)
    same = row(compare([load_run(same_a), load_run(same_b)], replicates=FEW).rows, "consistency")
    assert (same["delta"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    assert flag(same["significant"]) is False
    worse = row(compare([load_run(same_a), load_run(other)], replicates=FEW).rows, "consistency")
    assert (worse["delta"], worse["ci_low"], worse["ci_high"]) == (-100.0, -100.0, -100.0)
    assert flag(worse["significant"]) is True
    assert bool(worse["improved"]) is False


def test_diagonal_outcomes_per_offset_get_mcnemar_and_overall_rows_bootstrap(tmp_path):
    from tests.results.test_load import diagonal_records

    p_true = [[0.9, 0.8, 0.7]] * 4
    preds_a = [[7, 7, 7], [7, 3, 7], [3, 3, 3], [7, 7, 3]]
    preds_b = [[7, 7, 7], [7, 7, 7], [3, 3, 3], [3, 7, 3]]
    tables = []
    for name, preds in (("a", preds_a), ("b", preds_b)):
        records = diagonal_records(p_true, preds)
        suite = DiagonalSuite(max_offset=2)
        rows = suite.summarise(records)
        tables.append(
            write_suite(
                tmp_path / name,
                "diagonal",
                [{k: v for k, v in r.items() if k != "n"} for r in rows],
                records,
                parameters={"max_offset": 2},
            )
        )
    rows = compare([load_run(tables[0]), load_run(tables[1])], replicates=FEW).rows
    # offset 0: image 4 right under A only -> (1, 0); offset 1: image 2 right under B only.
    at_0, at_1 = row(rows, "accuracy", offset=0), row(rows, "accuracy", offset=1)
    assert (at_0["test"], at_0["p_value"], at_0["delta"]) == ("mcnemar", 1.0, -25.0)
    assert (at_1["test"], at_1["p_value"], at_1["delta"]) == ("mcnemar", 1.0, 25.0)
    # Overall accuracy has three views per image: bootstrap.
    overall = row(rows, "accuracy", offset=None)
    assert overall["test"] == "bootstrap"
    assert overall["ci_low"] <= overall["delta"] <= overall["ci_high"]
    for metric in ("wobble", "flips", "p_true"):
        assert set(rows.loc[rows["metric"] == metric, "test"]) == {"bootstrap"}
    flips = row(rows, "flips")
    # flips per image: A 0, 2, 0, 1 -> 0.75; B 0, 0, 0, 2 -> 0.5.
    assert (flips["reference_value"], flips["candidate_value"]) == (0.75, 0.5)
    assert bool(flips["improved"]) is True


def test_no_paired_statistics_without_samples_files(tmp_path):
    a, b = discordant(both=5, only_a=0, only_b=6, neither=1)
    reference = write_accuracy(tmp_path / "a", a)
    candidate = write_accuracy(tmp_path / "b", b, samples=False)
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    top1 = row(rows, "top1")
    assert top1["delta"] == pytest.approx(100 * 6 / 12)
    assert top1["test"] is None and top1["significant"] is None
    assert all(math.isnan(top1[c]) for c in ("p_value", "ci_low", "ci_high"))


def test_no_paired_statistics_without_provenance(tmp_path):
    a, b = discordant(both=5, only_a=0, only_b=6, neither=1)
    reference = write_accuracy(tmp_path / "a", a)
    candidate = write_accuracy(tmp_path / "b", b)
    candidate.with_suffix(".json").unlink()
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    assert rows["test"].isna().all()


def test_no_paired_statistics_when_the_data_differ_even_if_allowed(tmp_path):
    a, b = discordant(both=5, only_a=0, only_b=6, neither=1)
    reference = write_accuracy(tmp_path / "a", a)
    other_data = {**FINGERPRINT, "sha256": "e" * 64}
    candidate = write_accuracy(tmp_path / "b", b, fingerprint=other_data)
    result = compare([load_run(reference), load_run(candidate)], allow_mismatch=True)
    assert result.rows["test"].isna().all()
    assert result.rows["significant"].isna().all()
    assert any("different data" in w for w in result.warnings)


# --- refusals ------------------------------------------------------------------------------


def mismatched_pair(tmp_path, kind: str):
    reference = write_shift(tmp_path / "a", [[[7, 7]], [[7, 3]], [[3, 3]]])
    if kind == "parameters":
        candidate = write_shift(tmp_path / "b", [[[7, 7], [7, 7]], [[7, 3], [3, 3]], [[3, 3]] * 2])
    elif kind == "data":
        candidate = write_shift(
            tmp_path / "b", [[[7, 7]], [[7, 7]], [[3, 3]]], fingerprint={"count": 3}
        )
    elif kind == "n":
        candidate = write_shift(tmp_path / "b", [[[7, 7]], [[7, 7]], [[3, 3]], [[7, 3]]])
    else:
        raise AssertionError(kind)
    return load_run(reference), load_run(candidate)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("parameters", "protocol parameters differ"),
        ("data", "different data"),
        ("n", r"different n: \[3\] vs \[4\]"),
    ],
)
def test_mismatched_runs_are_refused_unless_allowed(tmp_path, kind, message):
    reference, candidate = mismatched_pair(tmp_path, kind)
    with pytest.raises(UserError, match=message) as refused:
        compare([reference, candidate], replicates=FEW)
    assert "--allow-mismatch" in str(refused.value)
    result = compare([reference, candidate], allow_mismatch=True, replicates=FEW)
    assert len(result.warnings) == 1
    assert message.replace("\\", "").split(":")[0] in result.warnings[0]
    assert result.warnings[0].startswith(f"{candidate.label} vs {reference.label}: ")
    assert len(result.rows) == 3


def test_different_suites_are_always_refused(tmp_path):
    accuracy = load_run(write_accuracy(tmp_path / "a", [1, 0, 1]))
    shift = load_run(write_shift(tmp_path / "b", [[[7, 7]], [[7, 3]], [[3, 3]]]))
    for allow in (False, True):
        with pytest.raises(UserError, match="different suites: accuracy vs shift"):
            compare([accuracy, shift], allow_mismatch=allow)


def test_one_table_is_not_a_comparison(tmp_path):
    with pytest.raises(UserError, match="at least two tables"):
        compare([load_run(write_accuracy(tmp_path, [1, 0]))])


def test_a_csv_that_is_not_an_aabench_table_is_refused(tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0])
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    with pytest.raises(UserError, match="not an aabench table"):
        load_runs([str(reference), str(other)])


# --- directories and labels -------------------------------------------------------------


def test_directories_compare_the_suites_they_share(tmp_path):
    a, b = tmp_path / "runs-a" / "alpha", tmp_path / "runs-b" / "beta"
    write_accuracy(a, [1, 1, 0], model="alpha")
    write_shift(a, [[[7, 7]], [[7, 3]], [[3, 3]]], model="alpha")
    write_accuracy(b, [1, 1, 1], model="beta")
    write_suite(b, "diagonal", [{"metric": "wobble", "value": 1.0}], model="beta", n=3)
    groups = load_runs([str(a), str(b)])
    assert [[run.suite for run in group] for group in groups] == [["accuracy", "accuracy"]]
    result = compare_groups(groups, replicates=FEW)
    assert set(result.rows["suite"]) == {"accuracy"}
    assert [run.label for run in result.runs] == ["alpha", "beta"]
    assert row(result.rows, "top1")["delta"] == pytest.approx(100 / 3)


def test_directories_sharing_no_suite_and_mixed_paths_are_refused(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_accuracy(a, [1, 0])
    write_shift(b, [[[7, 7]], [[7, 3]]])
    with pytest.raises(UserError, match="share no suite"):
        load_runs([str(a), str(b)])
    with pytest.raises(UserError, match="not a mix"):
        load_runs([str(a), str(b / "shift.csv")])


def test_two_runs_of_the_same_model_get_distinct_labels(tmp_path):
    first, second = tmp_path / "monday" / MODEL, tmp_path / "tuesday" / MODEL
    write_accuracy(first, [1, 0, 1])
    write_accuracy(second, [1, 1, 1])
    for paths in (
        [str(first), str(second)],
        [str(first / "accuracy.csv"), str(second / "accuracy.csv")],
    ):
        (group,) = load_runs(paths)
        labels = [run.label for run in group]
        assert len(set(labels)) == 2
        assert all(label.startswith(MODEL) for label in labels)
        rows = compare(group, replicates=FEW).rows
        assert rows["reference"].iloc[0] != rows["candidate"].iloc[0]


def test_several_candidates_are_each_compared_with_the_reference(tmp_path):
    reference = load_run(write_accuracy(tmp_path / "a", [1, 0, 0, 0], model="ref"))
    second = load_run(write_accuracy(tmp_path / "b", [1, 1, 0, 0], model="two"))
    third = load_run(write_accuracy(tmp_path / "c", [1, 1, 1, 0], model="three"))
    rows = compare([reference, second, third], replicates=FEW).rows
    top1 = rows[rows["metric"] == "top1"]
    assert top1["candidate"].tolist() == ["two", "three"]
    assert top1["delta"].tolist() == [25.0, 50.0]


def test_metric_filter_and_unknown_metrics(tmp_path):
    groups = load_runs(
        [str(write_accuracy(tmp_path / "a", [1, 0])), str(write_accuracy(tmp_path / "b", [1, 1]))]
    )
    rows = compare_groups(groups, metrics=["top5"], replicates=FEW).rows
    assert rows["metric"].tolist() == ["top5"]
    with pytest.raises(UserError, match="--metric wobble is not in these tables"):
        compare_groups(groups, metrics=["wobble"], replicates=FEW)


# --- real runs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """One real `aabench run` (accuracy, shift; 1 pass) and a copy of it elsewhere."""
    from aabench.cli import main

    root = tmp_path_factory.mktemp("real")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(root / "torch_home"))
        patch.delenv("AABENCH_WEIGHTS_DIR", raising=False)
        with pytest.raises(SystemExit) as exited:
            main(
                [
                    "run", "--model", "resnet18_aa", "--weights", "none",
                    "--suite", "accuracy,shift", "--set", "epochs=1", "--seed", "0",
                    "--out", str(root / "first"), "--quiet", "--batch-size", "16",
                    "--workers", "0", "--json",
                ]
            )  # fmt: skip
    assert exited.value.code in (None, 0)
    first = root / "first" / "resnet18_aa"
    second = root / "second" / "resnet18_aa"
    shutil.copytree(first, second)
    return first, second


def test_a_real_run_compared_with_its_copy_shows_no_difference(real_runs):
    first, second = real_runs
    groups = load_runs([str(first), str(second)])
    assert [group[0].suite for group in groups] == ["accuracy", "shift"]
    result = compare_groups(groups, replicates=FEW)
    # No mismatch; only each run's own warning about its random weights.
    labels = [run.label for run in result.runs]
    assert len(result.warnings) == 2
    for label, warning in zip(labels, result.warnings, strict=True):
        assert warning.startswith(f"{label}: random weights")
    rows = result.rows
    assert set(rows["suite"]) == {"accuracy", "shift"}
    assert (rows["delta"] == 0).all()
    assert not rows["improved"].any()
    assert rows["reference"].nunique() == 1 and rows["candidate"].nunique() == 1
    assert rows["reference"].iloc[0] != rows["candidate"].iloc[0]
    top1 = row(rows, "top1")
    assert (top1["test"], top1["p_value"], top1["significant"]) == ("mcnemar", 1.0, False)
    consistency = row(rows, "consistency")
    assert consistency["test"] == "bootstrap"
    assert (consistency["ci_low"], consistency["ci_high"]) == (0.0, 0.0)


def test_real_runs_with_another_protocol_are_refused(real_runs, tmp_path):
    first, _ = real_runs
    changed = tmp_path / "changed" / "resnet18_aa"
    shutil.copytree(first, changed)
    provenance = json.loads((changed / "shift.json").read_text())
    provenance["parameters"]["max_shift"] = 16
    provenance["protocol"]["max_shift"] = 16
    (changed / "shift.json").write_text(json.dumps(provenance))
    groups = load_runs([str(first / "shift.csv"), str(changed / "shift.csv")])
    with pytest.raises(UserError, match="protocol parameters differ"):
        compare_groups(groups, replicates=FEW)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_compare_json_gives_the_rows_with_their_deltas(cli, tmp_path):
    a, b = discordant(both=4, only_a=0, only_b=5, neither=1)
    reference = write_accuracy(tmp_path / "a", a, model="ref")
    candidate = write_accuracy(tmp_path / "b", b, model="cand")
    code, out, err = cli("compare", str(reference), str(candidate), "--json", "--bootstrap", "100")
    assert code == 0, err
    rows = {entry["metric"]: entry for entry in json.loads(out)}
    assert set(rows) == {"top1", "top5"}
    top1 = rows["top1"]
    assert (top1["reference"], top1["candidate"]) == ("ref", "cand")
    assert top1["reference_value"] == pytest.approx(40.0)
    assert top1["candidate_value"] == pytest.approx(90.0)
    assert top1["delta"] == pytest.approx(50.0)
    assert top1["improved"] is True
    assert top1["test"] == "mcnemar"
    assert top1["p_value"] == pytest.approx(0.0625)
    assert flag(top1["significant"]) is False


def test_cli_compare_metric_filters_rows(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0, 1])
    candidate = write_accuracy(tmp_path / "b", [1, 1, 1])
    code, out, err = cli(
        "compare", str(reference), str(candidate), "--json", "--metric", "top5", "--bootstrap", "50"
    )
    assert code == 0, err
    assert [entry["metric"] for entry in json.loads(out)] == ["top5"]


def test_cli_compare_unknown_metric_exits_2(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0, 1])
    candidate = write_accuracy(tmp_path / "b", [1, 1, 1])
    code, _out, err = cli("compare", str(reference), str(candidate), "--metric", "nonsense")
    assert code == 2
    assert "nonsense" in err and "top1" in err
    assert "Traceback" not in err


def test_cli_compare_prints_a_table_without_json(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0, 1, 1], model="ref")
    candidate = write_accuracy(tmp_path / "b", [1, 1, 1, 1], model="cand")
    code, out, err = cli("compare", str(reference), str(candidate), "--bootstrap", "50")
    assert code == 0, err
    assert "top1" in out and "+25.00" in out and "McNemar" in out


def test_cli_compare_mismatched_protocols_exit_2_unless_allowed(cli, tmp_path):
    reference = write_shift(tmp_path / "a", [[[7, 7]], [[7, 3]], [[3, 3]]])
    candidate = write_shift(tmp_path / "b", [[[7, 7]] * 2, [[7, 3]] * 2, [[3, 3]] * 2])
    code, out, err = cli("compare", str(reference), str(candidate))
    assert code == 2
    assert "--allow-mismatch" in err
    assert "Traceback" not in err
    code, out, err = cli(
        "compare", str(reference), str(candidate), "--allow-mismatch", "--bootstrap", "50"
    )
    assert code == 0, err
    flat = " ".join(out.split())
    assert "warning:" in flat
    assert "protocol parameters differ" in flat


def test_cli_compare_refuses_a_non_table(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0])
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    code, _out, err = cli("compare", str(reference), str(other))
    assert code == 2
    assert "not an aabench table" in err
    assert "Traceback" not in err


def test_the_same_table_twice_gets_distinct_labels(tmp_path):
    run = tmp_path / "monday" / MODEL
    write_accuracy(run, [1, 0, 1])
    (group,) = load_runs([str(run / "accuracy.csv")] * 2)
    assert [r.label for r in group] == [
        f"{MODEL} ({run})",
        f"{MODEL} ({run}) #2",
    ]


# --- Holm within per-dimension families, n and note ----------------------------------------


def holm_pair(tmp_path):
    """Diagonal runs (3 offsets, 8 images) where B wins 6 images at offsets 0 and 1 only."""
    from tests.results.test_load import diagonal_records

    preds_a = [[3, 3, 7]] * 6 + [[7, 7, 7]] * 2
    preds_b = [[7, 7, 7]] * 8
    paths = []
    for name, preds in (("a", preds_a), ("b", preds_b)):
        records = diagonal_records([[0.5, 0.5, 0.5]] * 8, preds)
        rows = DiagonalSuite(max_offset=2).summarise(records)
        paths.append(
            write_suite(
                tmp_path / name,
                "diagonal",
                [{k: v for k, v in r.items() if k != "n"} for r in rows],
                records,
                parameters={"max_offset": 2},
                model=f"model-{name}",
            )
        )
    return paths


def test_per_offset_rows_are_holm_adjusted_within_their_metric(tmp_path):
    reference, candidate = holm_pair(tmp_path)
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    at = [row(rows, "accuracy", offset=offset) for offset in range(3)]
    # McNemar (0, 6): p = 2 / 2^6 = 0.03125 at offsets 0 and 1, p = 1 at offset 2.
    assert [r["p_value"] for r in at] == pytest.approx([1 / 32, 1 / 32, 1.0])
    # Holm over 3: 3 * 1/32 = 0.09375; max(2 * 1/32, 0.09375); max(1, ...) = 1.
    assert [r["p_adjusted"] for r in at] == pytest.approx([3 / 32, 3 / 32, 1.0])
    assert [r["family_size"] for r in at] == [3, 3, 3]
    assert [r["correction"] for r in at] == ["holm"] * 3
    # Significant at 5 % alone, not once the family of 3 is accounted for.
    assert [flag(r["significant"]) for r in at] == [False, False, False]
    assert all(r["n"] == 8 for r in at)
    # The overall rows are families of one: their own p, no correction.
    for metric in ("accuracy", "wobble", "flips"):
        overall = row(rows, metric, offset=None)
        assert (overall["family_size"], overall["correction"]) == (1, "")
        assert overall["p_adjusted"] == overall["p_value"]
        assert flag(overall["significant"]) is bool(overall["p_value"] < 0.05)
    # p_true per offset: its own family of 3 (bootstrap, all deltas 0: p = 1).
    p_true = rows[(rows["metric"] == "p_true") & rows["offset"].notna()]
    assert p_true["family_size"].tolist() == [3, 3, 3]
    assert p_true["p_adjusted"].tolist() == [1.0, 1.0, 1.0]


def test_rows_broken_down_by_other_dimensions_are_other_families():
    # Per-layer means and one layer's (dh, dw) map share a metric but not a family: the
    # map's cells must not dilute the per-layer tests (nor the reverse).
    from aabench.results.compare import _adjust

    rows = pd.DataFrame(
        {
            "candidate": ["b"] * 5,
            "suite": ["equivariance"] * 5,
            "metric": ["l2_distance"] * 5,
            "layer": [None, "conv1", "layer2", "layer2", "layer2"],
            "dh": [None, None, None, 0, 1],
            "dw": [None, None, None, 1, 0],
            "p_value": [0.04, 0.01, 0.02, 0.5, 0.01],
        }
    )
    _adjust(rows, ["layer", "dh", "dw"])
    assert rows["family_size"].tolist() == [1, 2, 2, 2, 2]
    # Per layer, Holm over 2: 2 * 0.01 = 0.02, then max(1 * 0.02, 0.02) = 0.02. The map:
    # 2 * 0.01 = 0.02, then max(1 * 0.5, 0.02) = 0.5. The overall row keeps its own p.
    assert rows["p_adjusted"].tolist() == pytest.approx([0.04, 0.02, 0.02, 0.5, 0.02])
    assert rows["significant"].tolist() == [True, True, True, False, True]


def test_rows_without_a_test_have_no_family_and_say_why(tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0, 1])
    candidate = write_accuracy(tmp_path / "b", [1, 1, 1], samples=False)
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    top1 = row(rows, "top1")
    assert top1["family_size"] == 0 and top1["correction"] == ""
    assert math.isnan(top1["p_adjusted"]) and top1["significant"] is None
    assert top1["no_statistics"] == f"{MODEL} has no samples file"
    assert top1["n"] == 3  # both tables say 3 images
    assert top1["note"] == ""


def test_n_is_the_images_both_runs_share(tmp_path):
    reference = write_shift(tmp_path / "a", [[[7, 7]], [[7, 3]], [[3, 3]]])
    candidate = write_shift(tmp_path / "b", [[[7, 7]], [[7, 7]], [[3, 3]], [[7, 7]]], n=4)
    rows = compare([load_run(reference), load_run(candidate)], allow_mismatch=True).rows
    consistency = row(rows, "consistency")
    assert (consistency["reference_n"], consistency["candidate_n"]) == (3, 4)
    assert consistency["n"] == 3  # paired over the 3 images both saw
    unpaired = write_shift(tmp_path / "c", [[[7, 7]]] * 4, n=4, samples=False)
    rows = compare([load_run(reference), load_run(unpaired)], allow_mismatch=True).rows
    assert pd.isna(row(rows, "consistency")["n"])  # 3 vs 4, nothing paired: unknown


def test_note_says_why_a_value_is_missing(tmp_path):
    reason = "needs max_offset >= 1"
    reference = write_suite(
        tmp_path / "a",
        "diagonal",
        [{"metric": "accuracy", "value": 50.0}, {"metric": "wobble", "value": 2.0}],
        model="ref",
    )
    candidate = write_suite(
        tmp_path / "b",
        "diagonal",
        [{"metric": "wobble", "value": float("nan"), "note": reason}],
        model="cand",
    )
    rows = compare([load_run(reference), load_run(candidate)], replicates=FEW).rows
    assert row(rows, "wobble")["note"] == reason
    assert row(rows, "accuracy")["note"] == "cand has no such row"
    assert math.isnan(row(rows, "accuracy")["candidate_value"])


def test_directories_name_every_suite_they_could_not_pair(tmp_path):
    from aabench.results.compare import pair_runs

    a, b = tmp_path / "a", tmp_path / "b"
    write_accuracy(a, [1, 1, 0])
    write_shift(a, [[[7, 7]], [[7, 3]], [[3, 3]]])
    write_accuracy(b, [1, 1, 1])
    write_suite(b, "diagonal", [{"metric": "wobble", "value": 1.0}], n=3)
    pairing = pair_runs([str(a), str(b)])
    assert [group[0].suite for group in pairing.groups] == ["accuracy"]
    assert pairing.unpaired == [
        f"shift: only in {a}; not compared",
        f"diagonal: only in {b}; not compared",
    ]
    result = compare_groups(pairing.groups, replicates=FEW, unpaired=pairing.unpaired)
    assert result.unpaired == pairing.unpaired
    assert compare_groups(pairing.groups, replicates=FEW).unpaired == []


def test_the_runs_own_warnings_are_in_the_comparison(tmp_path):
    reference = write_accuracy(tmp_path / "a", [1, 0, 1], model="ref")
    candidate = write_accuracy(tmp_path / "b", [1, 1, 1], model="cand")
    provenance = json.loads(candidate.with_suffix(".json").read_text())
    provenance["warnings"] = ["random weights: the numbers say nothing about a trained model"]
    candidate.with_suffix(".json").write_text(json.dumps(provenance))
    result = compare([load_run(reference), load_run(candidate)], replicates=FEW)
    assert result.warnings == [
        "cand: random weights: the numbers say nothing about a trained model"
    ]


def test_cli_published_with_directories_skips_and_names_suites_without_numbers(
    cli, tmp_path, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "250")  # no wrapped verdict
    run = tmp_path / "resnet18_aa"
    write_accuracy(run, [1, 1, 0, 1], model="resnet18_aa")
    write_suite(run, "diagonal", [{"metric": "wobble", "value": 1.0}], model="resnet18_aa", n=4)
    code, out, err = cli(
        "compare", "--published", "antialiased-cnns", str(run), "--allow-mismatch", "--json"
    )
    assert code == 0, err
    assert {entry["suite"] for entry in json.loads(out)} == {"accuracy"}
    code, out, err = cli("compare", "--published", "antialiased-cnns", str(run), "--allow-mismatch")
    assert code == 0, err
    flat = " ".join(out.split())
    assert (
        "warning: diagonal: no published numbers for resnet18_aa in antialiased-cnns; "
        "not compared" in flat
    )
    assert "no paired statistics (published numbers have no per-image samples)" in flat
    # No suite with published numbers at all: an error.
    only_diagonal = tmp_path / "other" / "resnet18_aa"
    write_suite(
        only_diagonal, "diagonal", [{"metric": "wobble", "value": 1.0}], model="resnet18_aa"
    )
    code, _out, err = cli("compare", "--published", "antialiased-cnns", str(only_diagonal))
    assert code == 2 and "no diagonal numbers for resnet18_aa" in err


def test_cli_compare_json_rows_carry_note_n_holm_columns_and_verdict(cli, tmp_path):
    reference, candidate = holm_pair(tmp_path)
    code, out, err = cli("compare", str(reference), str(candidate), "--json", "--bootstrap", "50")
    assert code == 0, err
    entries = json.loads(out)
    at_0 = next(e for e in entries if e["metric"] == "accuracy" and e["offset"] == 0)
    for key in ("note", "n", "family_size", "correction", "p_adjusted", "significant"):
        assert key in at_0
    assert (at_0["n"], at_0["family_size"], at_0["correction"]) == (8, 3, "holm")
    assert at_0["verdict"] == "no significant difference (McNemar p=0.094, Holm over 3, n=8)"


def test_cli_compare_table_at_120_columns_cuts_no_header(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    reference, candidate = holm_pair(tmp_path)
    code, out, err = cli(
        "compare", str(reference), str(candidate), "--all-rows", "--bootstrap", "50"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 120
    header = next(line for line in lines if "metric" in line)
    for name in ("metric", "offset", "unit", "reference", "candidate", "delta", "verdict"):
        assert f" {name} " in header
    assert "…" not in out
    assert "diagonal: reference: model-a; candidate: model-b" in " ".join(out.split())
    assert "no significant difference (McNemar p=0.094, Holm over" in out  # wraps at 120
    assert "better (bootstrap p=0.039, 95% CI [+26.88, +66.67]," in out
