"""The CI gate: rules files, regression thresholds, and `aabench gate`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.compare import Comparison, RunTables
from aabench.results.gate import (
    DEFAULT_RULES,
    GateResult,
    Rule,
    apply_rules,
    load_rules,
    row_line,
    summary_markdown,
)
from tests.results.test_load import write_accuracy, write_shift, write_suite

# --- rules files ---------------------------------------------------------------------------


def write_rules(tmp_path, text: str):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_load_rules_reads_every_key(tmp_path):
    path = write_rules(
        tmp_path,
        """
[[rule]]
metric = "top1"
max_regression = 1

[[rule]]
metric = "wobble"
suite = "diagonal"
max_regression = 0.1
relative = true
only_if_significant = true
per_dimension = false

[[rule]]
metric = "accuracy"
suite = "diagonal"
max_regression = 2.5
per_dimension = true
""",
    )
    rules = load_rules(path)
    assert rules == [
        Rule("top1", 1.0),
        Rule("wobble", 0.1, suite="diagonal", relative=True, only_if_significant=True),
        Rule("accuracy", 2.5, suite="diagonal", per_dimension=True),
    ]
    assert isinstance(rules[0].max_regression, float)


def test_malformed_toml_is_a_user_error(tmp_path):
    path = write_rules(tmp_path, '[[rule]\nmetric = "top1"\n')
    with pytest.raises(UserError, match="not valid TOML"):
        load_rules(path)


def test_unknown_metric_is_a_user_error_naming_the_valid_metrics(tmp_path):
    path = write_rules(tmp_path, '[[rule]]\nmetric = "top3"\nmax_regression = 1\n')
    with pytest.raises(UserError, match="unknown metric 'top3'") as refused:
        load_rules(path)
    message = str(refused.value)
    assert "valid metrics are" in message
    for metric in ("top1", "top5", "consistency", "wobble", "flips"):
        assert metric in message


def test_a_metric_of_another_suite_is_unknown_for_that_suite(tmp_path):
    path = write_rules(tmp_path, '[[rule]]\nmetric = "top1"\nsuite = "shift"\nmax_regression = 1\n')
    with pytest.raises(UserError, match="unknown metric 'top1' for suite shift") as refused:
        load_rules(path)
    assert "accuracy, consistency, consistency_correct" in str(refused.value)


def test_unknown_key_is_a_user_error_listing_the_valid_keys(tmp_path):
    path = write_rules(tmp_path, '[[rule]]\nmetric = "top1"\nmax_regresion = 1\n')
    with pytest.raises(UserError, match="unknown keys max_regresion") as refused:
        load_rules(path)
    assert "max_regression" in str(refused.value).split("valid keys are")[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must hold one or more"),
        (
            'metric = "top1"\n',
            r"must hold one or more \[\[rule\]\] tables \(unknown keys: metric\)",
        ),
        ('[[rule]]\nmetric = "top1"\n', "needs both metric and max_regression"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = -1\n', "must be 0 or more, got -1"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = nan\n', "must be a finite number, got nan"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = inf\n', "must be a finite number, got inf"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = true\n', "must be a number >= 0"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = "1"\n', "must be a number >= 0"),
        ('[[rule]]\nmetric = "top1"\nmax_regression = 1\nrelative = 1\n', "relative must be"),
        ('[[rule]]\nmetric = "top1"\nsuite = "shfit"\nmax_regression = 1\n', "unknown suite"),
    ],
)
def test_invalid_rules_are_user_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_rules(write_rules(tmp_path, text))


def test_a_missing_rules_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rules(tmp_path / "nope.toml")


def test_default_rules_name_real_metrics_of_their_suites():
    from aabench.suites.registry import available_suites

    suites = available_suites()
    for rule in DEFAULT_RULES:
        assert rule.metric in suites[rule.suite].metrics
        assert rule.only_if_significant


# --- apply_rules -------------------------------------------------------------------------


def comparison(*entries: dict) -> Comparison:
    """A comparison whose rows are ``entries`` (suite, metric, reference_value,
    candidate_value, higher_is_better; optionally offset, significant, test)."""
    rows = []
    for entry in entries:
        reference, candidate = entry["reference_value"], entry["candidate_value"]
        higher = entry.get("higher_is_better", True)
        significant = entry.get("significant")
        delta = candidate - reference
        rows.append(
            {
                "suite": entry.get("suite", "accuracy"),
                "metric": entry["metric"],
                "offset": entry.get("offset", np.nan),
                "unit": entry.get("unit", "%"),
                "higher_is_better": higher,
                "reference": "ref",
                "candidate": "cand",
                "reference_value": reference,
                "candidate_value": candidate,
                "delta": delta,
                "improved": delta * (1 if higher else -1) > 0,
                "test": entry.get("test", None if significant is None else "mcnemar"),
                "p_value": np.nan,
                "ci_low": np.nan,
                "ci_high": np.nan,
                "significant": significant,
            }
        )
    frame = pd.DataFrame(rows)
    return Comparison(runs=[RunTables("ref", frame), RunTables("cand", frame)], rows=frame)


def verdicts(result) -> list[bool]:
    return [bool(v) for v in result.checked["failed"]]


@pytest.mark.parametrize(
    ("candidate", "failed", "regression"),
    [
        (75.6, False, 0.4),
        (75.5, False, 0.5),  # exactly at the limit: allowed
        (75.4, True, 0.6),
        (78.0, False, -2.0),  # an improvement
    ],
)
def test_absolute_threshold_for_a_higher_is_better_metric(candidate, failed, regression):
    rows = comparison({"metric": "top1", "reference_value": 76.0, "candidate_value": candidate})
    result = apply_rules(rows, [Rule("top1", 0.5)], ["offset"])
    assert verdicts(result) == [failed]
    assert result.checked["regression"].iloc[0] == pytest.approx(regression)
    assert result.passed is not failed
    assert len(result.failures) == int(failed)


@pytest.mark.parametrize(
    ("candidate", "failed"),
    [(4.0, False), (5.2, False), (5.5, True), (7.0, True)],
)
def test_absolute_threshold_for_a_lower_is_better_metric(candidate, failed):
    # wobble: lower is better, so an increase is the regression.
    rows = comparison(
        {
            "suite": "diagonal",
            "metric": "wobble",
            "reference_value": 5.0,
            "candidate_value": candidate,
            "higher_is_better": False,
        }
    )
    result = apply_rules(rows, [Rule("wobble", 0.25)], ["offset"])
    assert verdicts(result) == [failed]
    assert result.checked["regression"].iloc[0] == pytest.approx(candidate - 5.0)


@pytest.mark.parametrize(
    ("candidate", "failed", "regression"),
    [(10.9, False, 0.09), (11.0, False, 0.10), (11.5, True, 0.15), (9.0, False, -0.1)],
)
def test_relative_threshold_is_a_fraction_of_the_reference(candidate, failed, regression):
    rows = comparison(
        {
            "suite": "diagonal",
            "metric": "flips",
            "unit": "count",
            "reference_value": 10.0,
            "candidate_value": candidate,
            "higher_is_better": False,
        }
    )
    result = apply_rules(rows, [Rule("flips", 0.10, relative=True)], ["offset"])
    assert result.checked["regression"].iloc[0] == pytest.approx(regression)
    assert verdicts(result) == [failed]


def test_relative_threshold_for_a_higher_is_better_metric():
    rows = comparison(
        {"metric": "top1", "reference_value": 80.0, "candidate_value": 76.0},
        {"metric": "top5", "reference_value": 80.0, "candidate_value": 79.0},
    )
    rules = [Rule("top1", 0.02, relative=True), Rule("top5", 0.02, relative=True)]
    result = apply_rules(rows, rules, ["offset"])
    assert result.checked["regression"].tolist() == pytest.approx([0.05, 0.0125])
    assert verdicts(result) == [True, False]


def test_relative_regression_from_a_zero_reference():
    rows = comparison(
        {
            "metric": "flips",
            "reference_value": 0.0,
            "candidate_value": 0.5,
            "higher_is_better": False,
        },
        {
            "metric": "wobble",
            "reference_value": 0.0,
            "candidate_value": 0.0,
            "higher_is_better": False,
        },
    )
    rules = [Rule("flips", 0.1, relative=True), Rule("wobble", 0.1, relative=True)]
    result = apply_rules(rows, rules, ["offset"])
    assert math.isinf(result.checked["regression"].iloc[0])
    assert result.checked["regression"].iloc[1] == 0.0
    assert verdicts(result) == [True, False]


@pytest.mark.parametrize(
    ("significant", "failed"),
    [(False, False), (True, True), (None, True)],
)
def test_only_if_significant_skips_only_regressions_a_test_found_not_real(significant, failed):
    rows = comparison(
        {
            "metric": "top1",
            "reference_value": 76.0,
            "candidate_value": 74.0,
            "significant": significant,
        }
    )
    result = apply_rules(rows, [Rule("top1", 0.5, only_if_significant=True)], ["offset"])
    assert verdicts(result) == [failed]
    # Without only_if_significant the value alone decides.
    assert verdicts(apply_rules(rows, [Rule("top1", 0.5)], ["offset"])) == [True]


def test_per_dimension_rows_are_ignored_unless_per_dimension():
    rows = comparison(
        {
            "suite": "diagonal",
            "metric": "accuracy",
            "reference_value": 70.0,
            "candidate_value": 70.0,
        },
        {
            "suite": "diagonal",
            "metric": "accuracy",
            "offset": 3.0,
            "reference_value": 70.0,
            "candidate_value": 60.0,
        },
    )
    overall = apply_rules(rows, [Rule("accuracy", 0.5, suite="diagonal")], ["offset"])
    assert len(overall.checked) == 1
    assert pd.isna(overall.checked["offset"].iloc[0])
    assert overall.passed
    every = apply_rules(
        rows, [Rule("accuracy", 0.5, suite="diagonal", per_dimension=True)], ["offset"]
    )
    assert len(every.checked) == 2
    assert not every.passed
    assert every.failures["offset"].tolist() == [3.0]


def test_a_rule_with_a_suite_checks_only_that_suite():
    rows = comparison(
        {"suite": "shift", "metric": "accuracy", "reference_value": 70.0, "candidate_value": 60.0},
        {
            "suite": "diagonal",
            "metric": "accuracy",
            "reference_value": 70.0,
            "candidate_value": 70.0,
        },
    )
    scoped = apply_rules(rows, [Rule("accuracy", 0.5, suite="diagonal")], ["offset"])
    assert scoped.checked["suite"].tolist() == ["diagonal"]
    assert scoped.passed
    everywhere = apply_rules(rows, [Rule("accuracy", 0.5)], ["offset"])
    assert everywhere.checked["suite"].tolist() == ["shift", "diagonal"]
    assert everywhere.failures["suite"].tolist() == ["shift"]


def test_without_dimensions_every_row_is_overall():
    rows = comparison({"metric": "top1", "reference_value": 76.0, "candidate_value": 70.0})
    result = apply_rules(rows, [Rule("top1", 0.5)], [])
    assert verdicts(result) == [True]


def test_no_applicable_rule_is_a_user_error():
    rows = comparison({"metric": "top1", "reference_value": 76.0, "candidate_value": 70.0})
    with pytest.raises(UserError, match=r"no gate rule applies.*top1"):
        apply_rules(rows, [Rule("consistency", 0.5)], ["offset"])


def test_summary_markdown_says_passed_or_failed_with_each_row():
    rows = comparison(
        {"metric": "top1", "reference_value": 76.0, "candidate_value": 74.0},
        {"metric": "top5", "reference_value": 93.0, "candidate_value": 93.1},
    )
    failed = apply_rules(rows, [Rule("top1", 0.5), Rule("top5", 0.5)], ["offset"])
    text = summary_markdown(failed, ["offset"])
    assert text.startswith("## aabench gate: FAILED: 1 regression(s)")
    assert "| accuracy | top1 |  | 76.00 | 74.00 | -2.00 | top1: at most 0.5 absolute" in text
    assert "**regressed**" in text and "| ok |" in text
    passed = apply_rules(rows, [Rule("top5", 0.5)], ["offset"])
    assert summary_markdown(passed, ["offset"]).startswith("## aabench gate: PASSED")


def test_rule_descriptions():
    assert Rule("top1", 0.5).describe() == "top1: at most 0.5 absolute"
    assert (
        Rule("wobble", 0.1, suite="diagonal", relative=True, only_if_significant=True).describe()
        == "diagonal.wobble: at most 10.0% relative, only if significant"
    )


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def accuracy_pair(tmp_path):
    """Reference top1 80 %, candidate 70 % (20 images), no samples: no paired test."""
    reference = write_accuracy(tmp_path / "ref" / "net", [1] * 16 + [0] * 4, samples=False)
    candidate = write_accuracy(tmp_path / "cand" / "net", [1] * 14 + [0] * 6, samples=False)
    return reference, candidate


def test_cli_gate_passes_with_exit_0(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1] * 16 + [0] * 4)
    candidate = write_accuracy(tmp_path / "b", [1] * 17 + [0] * 3)
    summary = tmp_path / "summary.md"
    code, out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate),
        "--summary", str(summary), "--bootstrap", "50",
    )  # fmt: skip
    assert code == 0, err
    assert "gate passed" in out
    assert "PASSED" in summary.read_text()


def test_cli_gate_fails_with_exit_1_and_names_the_regression(cli, tmp_path, accuracy_pair):
    reference, candidate = accuracy_pair
    summary = tmp_path / "out" / "summary.md"
    code, out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate),
        "--summary", str(summary),
    )  # fmt: skip
    assert code == 1
    flat = " ".join(out.split())
    assert "gate failed" in flat
    assert "accuracy.top1: 80.00 -> 70.00 (-10.00)" in flat
    assert "top5" in flat  # top5 fell by the same 10 points
    text = summary.read_text()
    assert "FAILED" in text and "top1" in text
    assert "Traceback" not in err


def test_cli_gate_with_a_rules_file_that_allows_the_drop(cli, tmp_path, accuracy_pair):
    reference, candidate = accuracy_pair
    rules = write_rules(tmp_path, '[[rule]]\nmetric = "top1"\nmax_regression = 10\n')
    code, out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate), "--rules", str(rules)
    )
    assert code == 0, err
    assert "gate passed: 1 metric(s)" in out


def test_cli_gate_passes_a_drop_its_paired_test_finds_not_significant(cli, tmp_path):
    # top1 falls 70 -> 65 % (2 images lost, 1 gained of 20): McNemar p = 1 under the
    # default rules' only_if_significant; the same drop fails without samples.
    reference = write_accuracy(tmp_path / "a", [1] * 12 + [1, 1, 0] + [0] * 5)
    candidate = write_accuracy(tmp_path / "b", [1] * 12 + [0, 0, 1] + [0] * 5)
    arguments = ["gate", "--reference", str(reference), "--candidate", str(candidate)]
    code, out, err = cli(*arguments, "--bootstrap", "50")
    assert code == 0, err
    assert "gate passed" in out
    for path in (reference, candidate):
        (path.parent / "accuracy.samples.csv.gz").unlink()
    code, out, _err = cli(*arguments)
    assert code == 1
    assert "accuracy.top1: 70.00 -> 65.00 (-5.00)" in " ".join(out.split())


def test_cli_gate_directories(cli, tmp_path):
    a, b = tmp_path / "a" / "net", tmp_path / "b" / "net"
    write_accuracy(a, [1] * 10)
    write_accuracy(b, [1] * 10)
    write_shift(a, [[[7, 7]]] * 5 + [[[7, 3]]] * 5, samples=False)
    write_shift(b, [[[7, 3]]] * 10, samples=False)
    code, out, _err = cli("gate", "--reference", str(a), "--candidate", str(b))
    assert code == 1
    flat = " ".join(out.split())
    assert "shift.consistency: 50.00 -> 0.00 (-50.00)" in flat
    assert "accuracy.top1" not in flat


def test_cli_gate_malformed_rules_exit_2(cli, tmp_path, accuracy_pair):
    reference, candidate = accuracy_pair
    rules = write_rules(tmp_path, "[[rule]\nmetric = top1\n")
    code, _out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate), "--rules", str(rules)
    )
    assert code == 2
    assert "not valid TOML" in err
    assert "Traceback" not in err


def test_cli_gate_unknown_metric_in_rules_exit_2(cli, tmp_path, accuracy_pair):
    reference, candidate = accuracy_pair
    rules = write_rules(tmp_path, '[[rule]]\nmetric = "top9"\nmax_regression = 1\n')
    code, _out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate), "--rules", str(rules)
    )
    assert code == 2
    assert "top9" in err and "valid metrics are" in err
    assert "Traceback" not in err


def test_cli_gate_non_table_input_exit_2(cli, tmp_path, accuracy_pair):
    reference, _ = accuracy_pair
    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    code, _out, err = cli("gate", "--reference", str(reference), "--candidate", str(other))
    assert code == 2
    assert "not an aabench table" in err
    assert "Traceback" not in err


def test_cli_gate_mismatched_protocols_exit_2_unless_allowed(cli, tmp_path):
    reference = write_suite(tmp_path / "a", "diagonal", [{"metric": "wobble", "value": 5.0}], n=10)
    candidate = write_suite(
        tmp_path / "b",
        "diagonal",
        [{"metric": "wobble", "value": 5.2}],
        n=10,
        parameters={"max_offset": 16},
    )
    arguments = ["gate", "--reference", str(reference), "--candidate", str(candidate)]
    code, out, err = cli(*arguments)
    assert code == 2
    assert "--allow-mismatch" in err and "Traceback" not in err
    code, out, err = cli(*arguments, "--allow-mismatch")
    assert code == 0, err  # 4 % worse, the default rule allows 10 %
    flat = " ".join(out.split())
    assert "warning:" in flat and "protocol parameters differ" in flat


@pytest.mark.parametrize(
    "body",
    [
        "rule = [1]",
        "rule = [[1]]",
        '[[rule]]\nmetric = ["top1"]\nmax_regression = 1',
        '[[rule]]\nmetric = "top1"\nsuite = ["accuracy"]\nmax_regression = 1',
    ],
)
def test_rules_of_the_wrong_shape_are_user_errors(tmp_path, body):
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(UserError, match="rule 1"):
        load_rules(path)


def test_gate_refuses_a_candidate_that_lacks_a_reference_suite(cli, tmp_path):
    reference, candidate = tmp_path / "ref" / "m", tmp_path / "cand" / "m"
    write_accuracy(reference, [1, 0, 1])
    write_shift(reference, [[[1, 1]], [[2, 2]], [[3, 4]]])
    write_accuracy(candidate, [1, 0, 1])
    code, _, err = cli("gate", "--reference", str(reference), "--candidate", str(candidate))
    assert code == 2
    assert "shift" in err and "lacks" in err and "Traceback" not in err


def test_a_metric_missing_from_the_candidate_fails_the_gate():
    rows = pd.DataFrame(
        {
            "suite": ["shift"],
            "metric": ["consistency"],
            "unit": ["%"],
            "higher_is_better": [True],
            "reference": ["ref"],
            "candidate": ["cand"],
            "reference_value": [90.0],
            "candidate_value": [np.nan],
            "delta": [np.nan],
            "improved": [False],
            "test": [None],
            "p_value": [np.nan],
            "ci_low": [np.nan],
            "ci_high": [np.nan],
            "significant": [None],
        }
    )
    comparison = Comparison(runs=[RunTables("ref", rows), RunTables("cand", rows)], rows=rows)
    result = apply_rules(comparison, [Rule("consistency", 0.5, suite="shift")], [])
    assert not result.passed
    assert result.failures["metric"].tolist() == ["consistency"]


@pytest.mark.parametrize("command", ["compare", "gate"])
def test_bootstrap_must_be_positive(cli, tmp_path, command):
    a = write_accuracy(tmp_path / "a" / "m", [1, 0])
    b = write_accuracy(tmp_path / "b" / "m", [1, 1])
    paths = (
        [str(a), str(b)] if command == "compare" else ["--reference", str(a), "--candidate", str(b)]
    )
    code, _, err = cli(command, *paths, "--bootstrap", "0")
    assert code == 2
    assert "--bootstrap" in err and "Traceback" not in err


# --- naming rows: dimension, status, not significant ------------------------------------------


def per_offset() -> GateResult:
    rows = comparison(
        *[
            {
                "suite": "diagonal",
                "metric": "accuracy",
                "offset": offset,
                "reference_value": 80.0,
                "candidate_value": candidate,
                "significant": significant,
            }
            for offset, candidate, significant in ((0, 79.8, False), (8, 75.0, False))
        ],
        {
            "suite": "diagonal",
            "metric": "accuracy",
            "offset": 16,
            "reference_value": 80.0,
            "candidate_value": 70.0,
            "significant": True,
        },
    )
    rows.rows["p_value"] = [0.4, 0.2, 0.001]
    rows.rows["p_adjusted"] = [0.4, 0.4, 0.003]  # Holm over the 3 offsets
    rows.rows["family_size"] = 3
    rule = Rule("accuracy", 0.5, suite="diagonal", only_if_significant=True, per_dimension=True)
    return apply_rules(rows, [rule], ["offset"])


def test_every_checked_row_has_its_dimension_and_status():
    result = per_offset()
    assert result.checked["dimension"].tolist() == ["offset=0", "offset=8", "offset=16"]
    assert result.checked["status"].tolist() == ["ok", "not significant", "regressed"]
    assert result.not_significant["offset"].tolist() == [8]
    assert result.failures["offset"].tolist() == [16]


def test_row_lines_name_the_dimension_and_why_a_row_passed():
    result = per_offset()
    assert row_line(result.failures.iloc[0]) == (
        "diagonal.accuracy [offset=16]: 80.00 -> 70.00 (-10.00)"
    )
    assert row_line(result.not_significant.iloc[0]) == (
        "diagonal.accuracy [offset=8]: 80.00 -> 75.00 (-5.00); no significant difference "
        "(McNemar p=0.4, Holm over 3)"
    )


def test_summary_lists_regressions_and_rows_passed_because_not_significant():
    text = summary_markdown(per_offset(), ["offset"])
    assert text.startswith("## aabench gate: FAILED: 1 regression(s)\n")
    assert "**Regressions:**\n\n- `diagonal.accuracy [offset=16]: 80.00 → 70.00 (-10.00)`" in text
    assert "**Beyond the limit but not significant (passed):**" in text
    assert "- `diagonal.accuracy [offset=8]: 80.00 → 75.00 (-5.00); no significant" in text
    table = [line for line in text.splitlines() if line.startswith("| diagonal")]
    assert [line.split(" | ")[-1] for line in table] == [
        "ok |",
        "ok (not significant) |",
        "**regressed** |",
    ]
    assert table[1].startswith("| diagonal | accuracy | 8 | 80.00 | 75.00 | -5.00 |")


def test_a_missing_candidate_value_prints_a_dash_and_its_note():
    rows = comparison({"metric": "top1", "reference_value": 76.0, "candidate_value": np.nan})
    rows.rows["note"] = ["cand has no such row"]
    result = apply_rules(rows, [Rule("top1", 0.5)], ["offset"])
    assert row_line(result.failures.iloc[0]) == (
        "accuracy.top1: 76.00 -> -; not compared (cand has no such row)"
    )
    assert "| accuracy | top1 |  | 76.00 | - | - |" in summary_markdown(result, ["offset"])


def test_cli_gate_prints_rows_that_passed_because_not_significant(cli, tmp_path):
    reference = write_accuracy(tmp_path / "a", [1] * 12 + [1, 1, 0] + [0] * 5)
    candidate = write_accuracy(tmp_path / "b", [1] * 12 + [0, 0, 1] + [0] * 5)
    summary = tmp_path / "gate.md"
    code, out, err = cli(
        "gate", "--reference", str(reference), "--candidate", str(candidate),
        "--bootstrap", "50", "--summary", str(summary),
    )  # fmt: skip
    assert code == 0, err
    flat = " ".join(out.split())
    assert "passed because not significant: 2 row(s) beyond the limit" in flat  # top1, top5
    # McNemar (2, 1): p = 2 * (1 + 3) / 8 = 1.
    assert (
        "accuracy.top1: 70.00 -> 65.00 (-5.00); no significant difference (McNemar p=1, n=20)"
        in flat
    )
    assert "ok (not significant)" in summary.read_text()
