"""The error catalogue, second pass (issue 15), for `compare` and `gate`: they trust only
what they checked. A table is recomputed from its samples and checked against its
provenance on load; rules are finite; every malformed or unreadable file is one line.

Each test edits copies of real tiny runs (made once per module) the way a user or a
broken script would, runs the command, and checks the exit code, the one line, and that
nothing was written and nothing beside the runs changed.
"""

from __future__ import annotations

import gzip
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from aabench.cli import main
from tests.catalogue import TINY, files_under, snapshot, tiny_folder, unprivileged, user_error

RERUN = "rerun the suite to write its files again"


@dataclass
class Runs:
    accuracy: Path  # <out>/resnet18_aa of --suite accuracy on 2 images
    shift: Path  # <out>/resnet18_aa of --suite shift --set epochs=1 on 2 images


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("catalogue_results")
    data = tiny_folder(root / "data")

    def run(name: str, *args: str) -> Path:
        with pytest.raises(SystemExit) as exited:
            main(["run", *TINY, "--data", str(data), "--out", str(root / name), *args])
        assert exited.value.code in (0, None)
        return root / name / "resnet18_aa"

    return Runs(
        accuracy=run("accuracy", "--suite", "accuracy"),
        shift=run("shift", "--suite", "shift", "--set", "epochs=1"),
    )


def copy_run(run: Path, where: Path) -> Path:
    """A copy of a run directory at ``where/resnet18_aa``; returns it."""
    target = where / "resnet18_aa"
    shutil.copytree(run, target)
    return target


def edit_table(directory: Path, suite: str, edit) -> None:
    """Rewrite ``<suite>.csv`` as text after ``edit(list of lines)``."""
    path = directory / f"{suite}.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def set_cell(line: str, column: int, value: str) -> str:
    cells = line.split(",")
    cells[column] = value
    return ",".join(cells)


VALUE, HIGHER, N = 5, 7, 8  # columns of the tidy table


def gate(reference: Path, candidate: Path, *extra: str) -> tuple[str, ...]:
    return (
        "gate",
        "--reference",
        str(reference),
        "--candidate",
        str(candidate),
        "--bootstrap",
        "10",
        *extra,
    )


def compare(reference: Path, candidate: Path, *extra: str) -> tuple[str, ...]:
    return ("compare", str(reference), str(candidate), "--bootstrap", "10", *extra)


def output_flag(command: str, where: Path) -> tuple[str, str]:
    """What the command would write: the gate's summary, compare's report."""
    if command == "gate":
        return ("--summary", str(where / "summary.md"))
    return ("--out", str(where / "report.md"))


# --- untouched runs are trusted, and what could not be checked is said ---------------------


def test_15_untouched_runs_pass_their_check_and_unchecked_ones_are_named(cli, tmp_path, runs):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    candidate = copy_run(runs.accuracy, tmp_path / "cand")
    code, out, err = cli(*gate(reference, candidate))
    assert (code, err) == (0, "")
    assert "not recomputed" not in out
    assert "gate passed: 2 metric(s) within the rules" in out

    (candidate / "accuracy.samples.csv.gz").unlink()
    code, out, err = cli(*compare(reference / "accuracy.csv", candidate / "accuracy.csv"))
    assert (code, err) == (0, "")
    warning = (
        f"warning: resnet18_aa ({candidate}): {candidate / 'accuracy.csv'} has no samples file "
        "beside it, so its values are not recomputed"
    )
    assert "".join(warning.split()) in "".join(out.split())  # rich wraps and folds lines


# --- 1. a table its provenance or its samples contradict -----------------------------------


def _recorded(directory: Path, suite: str, row: int) -> float:
    return float(pd.read_csv(directory / f"{suite}.csv")["value"].iloc[row])


def _edited_to_99(directory: Path) -> str:
    recorded = _recorded(directory, "accuracy", 0)
    edit_table(directory, "accuracy", lambda lines: [lines[0], set_cell(lines[1], VALUE, "99")])
    return (
        f"{directory / 'accuracy.csv'}, row 1 (top1): the table says 99 (n=2), its samples "
        f"{directory / 'accuracy.samples.csv.gz'} give {recorded:.10g} (n=2)"
    )


def _all_nan(directory: Path) -> str:
    recorded = _recorded(directory, "accuracy", 0)
    edit_table(
        directory,
        "accuracy",
        lambda lines: [lines[0], *(set_cell(x, VALUE, "") for x in lines[1:])],
    )
    return (
        f"{directory / 'accuracy.csv'}, row 1 (top1): the table says no value (n=2), its "
        f"samples {directory / 'accuracy.samples.csv.gz'} give {recorded:.10g} (n=2)"
    )


def _row_removed(directory: Path) -> str:
    recorded = _recorded(directory, "accuracy", 1)
    edit_table(directory, "accuracy", lambda lines: lines[:2])
    return (
        f"{directory / 'accuracy.csv'} lacks the row top5 that its samples "
        f"{directory / 'accuracy.samples.csv.gz'} give ({recorded:.10g})"
    )


def _image_dropped_from_samples(directory: Path) -> str:
    samples = directory / "accuracy.samples.csv.gz"
    frame = pd.read_csv(samples)
    frame.iloc[:1].to_csv(samples, index=False)
    return f"{directory / 'accuracy.csv'}, row 1 (top1): the table says"


def _provenance_of_another_run(directory: Path) -> str:
    path = directory / "accuracy.json"
    document = json.loads(path.read_text())
    run_id, document["run_id"] = document["run_id"], "0123456789ab"
    path.write_text(json.dumps(document))
    return (
        f"{directory / 'accuracy.csv'} and its provenance {path} are of different runs: the "
        f"table's run_id is {run_id}, the provenance's 0123456789ab"
    )


def _direction_flipped(directory: Path) -> str:
    edit_table(
        directory,
        "accuracy",
        lambda lines: [lines[0], set_cell(lines[1], HIGHER, "False"), *lines[2:]],
    )
    return (
        f"{directory / 'accuracy.csv'}, row 1: higher_is_better is False but top1 is "
        "higher-is-better in suite accuracy: the table was edited"
    )


@pytest.mark.parametrize("command", ["gate", "compare"])
@pytest.mark.parametrize(
    "tamper",
    [
        _edited_to_99,
        _all_nan,
        _row_removed,
        _image_dropped_from_samples,
        _provenance_of_another_run,
        _direction_flipped,
    ],
    ids=["edited-to-99", "all-nan", "row-removed", "samples-of-fewer-images", "provenance",
         "direction"],
)  # fmt: skip
def test_15_a_table_its_provenance_or_samples_contradict_is_refused(
    cli, tmp_path, runs, command, tamper
):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    candidate = copy_run(runs.accuracy, tmp_path / "cand")
    expected = tamper(reference)
    before = snapshot(tmp_path)
    build = gate if command == "gate" else compare
    for allow in ((), ("--allow-mismatch",)):  # no option accepts a contradicted table
        args = build(reference, candidate, *output_flag(command, tmp_path), *allow)
        line = user_error(cli(*args), expected, RERUN)
        assert line.startswith(f"aabench: error: {expected}")
    assert snapshot(tmp_path) == before  # no summary, no report, the runs untouched


# --- 2. rules whose numbers would disable the gate -------------------------------------------


@pytest.mark.parametrize(
    ("limit", "problem"),
    [
        ("nan", "must be a finite number, got nan"),
        ("inf", "must be a finite number, got inf"),
        ("-inf", "must be a finite number, got -inf"),
        ("-0.5", "must be 0 or more, got -0.5"),
    ],
    ids=["nan", "inf", "minus-inf", "negative"],
)
def test_15_rules_numbers_are_finite_and_not_negative(cli, tmp_path, runs, limit, problem):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[[rule]]\nmetric = "top1"\nmax_regression = {limit}\n')
    before = snapshot(tmp_path)
    args = gate(reference, reference, "--rules", str(rules), *output_flag("gate", tmp_path))
    line = user_error(cli(*args))
    assert line == f"aabench: error: rules file {rules}, rule 1: max_regression {problem}"
    assert snapshot(tmp_path) == before


# --- 3. cells that are not what `aabench run` writes ------------------------------------------


@pytest.mark.parametrize(
    ("row", "column", "cell", "problem"),
    [
        (1, HIGHER, "maybe", "higher_is_better is 'maybe', not True or False"),
        (2, HIGHER, "1", "higher_is_better is '1', not True or False"),
        (1, HIGHER, "", "higher_is_better is blank, not True or False"),
        (2, VALUE, "abc", "value 'abc' is not a number"),
        (1, VALUE, "inf", "value inf is not finite; aabench writes finite values or none"),
        (1, N, "-1", "n -1 is not a count of images"),
        (2, N, "2.5", "n 2.5 is not a count of images"),
        (1, 4, "", "no metric; every row of a table written by `aabench run` names its metric"),
    ],
    ids=["maybe", "one", "blank-boolean", "text-value", "inf", "negative-n", "fraction-n",
         "no-metric"],
)  # fmt: skip
def test_15_table_cells_must_be_what_run_writes(cli, tmp_path, runs, row, column, cell, problem):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    candidate = copy_run(runs.accuracy, tmp_path / "cand")
    edit_table(
        candidate,
        "accuracy",
        lambda lines: [set_cell(x, column, cell) if i == row else x for i, x in enumerate(lines)],
    )
    before = snapshot(tmp_path)
    line = user_error(cli(*compare(reference, candidate, *output_flag("compare", tmp_path))))
    table = candidate / "accuracy.csv"
    assert line == f"aabench: error: {table}, row {row}: {problem}: {RERUN}"
    assert snapshot(tmp_path) == before


# --- 4. duplicated rows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duplicate", "rows", "key"),
    [
        (lambda lines: [*lines, lines[1]], "row 1 and row 3", "top1"),
        (lambda lines: [*lines, set_cell(lines[2], VALUE, "12.5")], "row 2 and row 3", "top5"),
    ],
    ids=["same-row-twice", "same-key-other-value"],
)
def test_15_duplicated_rows_are_refused_naming_the_key(cli, tmp_path, runs, duplicate, rows, key):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    edit_table(reference, "accuracy", duplicate)
    (reference / "accuracy.samples.csv.gz").unlink()  # refused without samples too
    before = snapshot(tmp_path)
    line = user_error(cli(*gate(reference, reference, *output_flag("gate", tmp_path))))
    assert line == (
        f"aabench: error: {reference / 'accuracy.csv'}: {rows} are both {key}; a table holds "
        f"one row per metric and dimension: {RERUN}"
    )
    assert snapshot(tmp_path) == before


# --- 5. malformed provenance and samples (were tracebacks) ------------------------------------


def _provenance_a_list(directory: Path) -> str:
    (directory / "accuracy.json").write_text("[1, 2]\n")
    return (
        f"provenance {directory / 'accuracy.json'} is not a JSON object (it holds a list): it "
        f"is not what `aabench run` wrote; {RERUN}"
    )


def _provenance_data_a_string(directory: Path) -> str:
    path = directory / "accuracy.json"
    document = json.loads(path.read_text())
    document["data"] = "somewhere"
    path.write_text(json.dumps(document))
    return f"provenance {path}: data is a string, not an object; {RERUN}"


def _provenance_not_json(directory: Path) -> str:
    (directory / "accuracy.json").write_text("{truncated")
    return f"cannot read provenance {directory / 'accuracy.json'} ("


def _samples_missing_a_column(directory: Path) -> str:
    samples = directory / "accuracy.samples.csv.gz"
    pd.read_csv(samples).drop(columns=["correct"]).to_csv(samples, index=False)
    return f"samples file {samples} lacks the column 'correct' that suite accuracy records: {RERUN}"


def _samples_not_gzip(directory: Path) -> str:
    (directory / "accuracy.samples.csv.gz").write_bytes(b"sample,view\n")
    return f"cannot read samples file {directory / 'accuracy.samples.csv.gz'} ("


def _samples_binary(directory: Path) -> str:
    (directory / "accuracy.samples.csv.gz").write_bytes(gzip.compress(bytes(range(256)) * 8))
    return f"cannot read samples file {directory / 'accuracy.samples.csv.gz'} ("


@pytest.mark.parametrize(
    "make",
    [
        _provenance_a_list,
        _provenance_data_a_string,
        _provenance_not_json,
        _samples_missing_a_column,
        _samples_not_gzip,
        _samples_binary,
    ],
    ids=["provenance-list", "provenance-data-string", "provenance-not-json",
         "samples-missing-column", "samples-not-gzip", "samples-binary"],
)  # fmt: skip
def test_15_malformed_provenance_or_samples_is_one_line(cli, tmp_path, runs, make):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    candidate = copy_run(runs.accuracy, tmp_path / "cand")
    expected = make(candidate)
    before = snapshot(tmp_path)
    line = user_error(cli(*compare(reference, candidate, *output_flag("compare", tmp_path))))
    assert line.startswith(f"aabench: error: {expected}")
    assert snapshot(tmp_path) == before


# --- 6. labels matplotlib would read as mathtext ------------------------------------------------


@pytest.mark.parametrize("name", ["a$b^", "$\\foo$", "x$^{2}$ y$"])
def test_15_labels_with_dollars_are_drawn_literally(cli, tmp_path, runs, name):
    """The runs' labels carry their directories (same model): a directory named like
    mathtext made the report's plots fail with a traceback."""
    reference = copy_run(runs.shift, tmp_path / name)
    candidate = copy_run(runs.shift, tmp_path / "plain")
    report = tmp_path / "report.html"
    code, _, err = cli(*compare(reference, candidate, "--out", str(report)))
    assert (code, err) == (0, ""), err
    page = report.read_text()
    assert html.escape(f"resnet18_aa ({reference})") in page
    assert page.count('src="data:image/png;base64,') == 1  # the shift bars, drawn
    assert files_under(tmp_path / "report_files") == []


# --- 7. unreadable tables, provenance, samples, directories and rules ---------------------------


@pytest.mark.parametrize(
    ("target", "what"),
    [
        ("accuracy.csv", "table"),
        ("accuracy.json", "provenance"),
        ("accuracy.samples.csv.gz", "samples file"),
        (".", "run directory"),
    ],
    ids=["table", "provenance", "samples", "directory"],
)
def test_15_unreadable_inputs_are_one_line(tmp_path, runs, target, what):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    candidate = copy_run(runs.accuracy, tmp_path / "cand")
    locked = (candidate / target).resolve()
    locked.chmod(0)
    try:
        before = files_under(tmp_path / "ref")
        result = unprivileged(*compare(reference, candidate, *output_flag("compare", tmp_path)))
    finally:
        locked.chmod(0o755 if locked.is_dir() else 0o644)
    shown = candidate if target == "." else locked
    user_error(result, f"cannot read {what} {shown}: permission denied", "chmod")
    assert files_under(tmp_path / "ref") == before
    assert not (tmp_path / "report.md").exists()


def test_15_unreadable_rules_file_is_one_line(tmp_path, runs):
    reference = copy_run(runs.accuracy, tmp_path / "ref")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nmetric = "top1"\nmax_regression = 1\n')
    rules.chmod(0)
    try:
        result = unprivileged(*gate(reference, reference, "--rules", str(rules)))
    finally:
        rules.chmod(0o644)
    # click checks --rules before the command runs: its one line, exit 2.
    user_error(result, f"Invalid value for '--rules': path '{rules}' is not readable")
