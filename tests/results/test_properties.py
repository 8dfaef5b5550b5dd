"""Property-based: whatever tables, provenance, samples and rules files `compare` and
`gate` are given, they answer with exit 0, 1 (gate only) or 2, never a traceback, one
line on exit 2, and never a half-written file.

Each example starts from a consistent pair of hand-made accuracy runs (tests.results.
test_load's builders) and breaks them the ways files get broken: a cell replaced by
generated text (numbers, NaN, inf, booleans that are not, odd unicode), a row duplicated
or dropped, a column dropped, the provenance replaced by generated JSON, the samples cut
or garbled; the gate also gets generated rules. Seeded (derandomised) and bounded.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.results.test_load import write_accuracy

SETTINGS = settings(
    max_examples=60,
    deadline=5000,  # ms per example: a hang shows as a failure, not a stuck test run
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

COLUMNS = ("run_id", "model", "weights", "suite", "metric", "value", "unit", "higher_is_better")
ODD_CELLS = [
    "", "nan", "NaN", "inf", "-inf", "1e400", "-1", "2.5", "0", "100", "99", "True", "false",
    "maybe", "1", "top1", "top5", "accuracy", "shift", "a$b^", "$\\foo$", '"quoted, comma"',
    "\u202eevil", "日本", "\x1b[31m",
]  # fmt: skip
CELLS = st.one_of(
    st.sampled_from(ODD_CELLS),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=8),
)
PROVENANCE_KEYS = [
    "run_id", "model", "suite", "data", "dimensions", "parameters", "protocol",
    "preprocessing", "warnings", "fingerprint", "x",
]  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(PROVENANCE_KEYS), children, max_size=4)
    ),
    max_leaves=8,
)
# Intact runs come up often enough that the gate also passes and fails.
DAMAGE = [
    *["none"] * 8, "cell", "duplicate", "drop-row", "drop-column", "provenance", "provenance-key",
    "samples-column", "samples-bytes", "samples-rows",
]  # fmt: skip


@st.composite
def damage(draw):
    """One way (or none) of breaking one file of a run: (kind, details)."""
    kind = draw(st.sampled_from(DAMAGE))
    if kind == "cell":
        return kind, (draw(st.integers(0, 1)), draw(st.sampled_from(COLUMNS)), draw(CELLS))
    if kind in ("duplicate", "drop-row"):
        return kind, draw(st.integers(0, 1))
    if kind == "drop-column":
        return kind, draw(st.sampled_from(COLUMNS))
    if kind == "provenance":
        return kind, draw(JSON)
    if kind == "provenance-key":
        key = draw(st.sampled_from(PROVENANCE_KEYS))
        return kind, (key, draw(JSON))
    if kind == "samples-column":
        return kind, draw(st.sampled_from(["sample", "correct", "top5_correct", "label"]))
    if kind == "samples-bytes":
        return kind, draw(st.binary(max_size=40))
    if kind == "samples-rows":
        return kind, draw(st.integers(0, 4))
    return kind, None


def apply(directory: Path, kind: str, details) -> None:
    table_path = directory / "accuracy.csv"
    samples_path = directory / "accuracy.samples.csv.gz"
    provenance_path = directory / "accuracy.json"
    if kind in ("cell", "duplicate", "drop-row", "drop-column"):
        table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
        if kind == "cell":
            row, column, text = details
            table.loc[row, column] = text
        elif kind == "duplicate":
            table = pd.concat([table, table.iloc[[details]]], ignore_index=True)
        elif kind == "drop-row":
            table = table.drop(index=details)
        else:
            table = table.drop(columns=[details])
        table.to_csv(table_path, index=False)
    elif kind == "provenance":
        provenance_path.write_text(json.dumps(details))
    elif kind == "provenance-key":
        key, value = details
        document = json.loads(provenance_path.read_text())
        document[key] = value
        provenance_path.write_text(json.dumps(document))
    elif kind == "samples-column":
        pd.read_csv(samples_path).drop(columns=[details]).to_csv(samples_path, index=False)
    elif kind == "samples-bytes":
        samples_path.write_bytes(details)
    elif kind == "samples-rows":
        pd.read_csv(samples_path).iloc[:details].to_csv(samples_path, index=False)


RULE_NUMBERS = st.one_of(
    st.sampled_from(["0", "0.5", "5", "50", "1e-9"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "-1", "true", '"1"', "[1]", "1e999"]),
)
RULE_WORDS = st.sampled_from(["true", "false", "true", "false", "maybe", '"yes"', "1", "nan"])
RULE_METRICS = st.sampled_from(['"top1"', '"top5"', '"top1"', '"top_1"', "1"])
RULE_SUITES = st.sampled_from(['"accuracy"', '"shfit"', "3"])


@st.composite
def rules_text(draw) -> str:
    lines = [
        "[[rule]]",
        f"metric = {draw(RULE_METRICS)}",
        f"max_regression = {draw(RULE_NUMBERS)}",
    ]
    for flag in ("relative", "only_if_significant", "per_dimension"):
        if draw(st.booleans()):
            lines.append(f"{flag} = {draw(RULE_WORDS)}")
    if draw(st.booleans()):
        lines.append(f"suite = {draw(RULE_SUITES)}")
    return "\n".join(lines) + "\n"


def make_pair(root: Path, reference_damage, candidate_damage) -> tuple[Path, Path]:
    reference = write_accuracy(root / "ref" / "net", [1] * 8 + [0] * 2)
    candidate = write_accuracy(root / "cand" / "net", [1] + [0] * 9)  # 7 images worse
    apply(reference.parent, *reference_damage)
    apply(candidate.parent, *candidate_damage)
    return reference, candidate


def check_answer(code: int, out: str, err: str, allowed: tuple[int, ...]) -> None:
    assert code in allowed, err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("aabench: error: "), err
        assert out == ""
    else:
        assert "aabench: error" not in err


def leftovers(root: Path) -> list[str]:
    """Temporary files a write would leave if it stopped half way."""
    return [p.name for p in root.rglob("*") if p.name.endswith(".tmp")]


@SETTINGS
@given(reference_damage=damage(), candidate_damage=damage())
def test_compare_answers_every_input_with_0_or_one_line_and_writes_whole_reports(
    cli, reference_damage, candidate_damage
):
    root = Path(tempfile.mkdtemp(prefix="aabench-compare-"))
    try:
        reference, candidate = make_pair(root, reference_damage, candidate_damage)
        report = root / "report.md"
        code, out, err = cli(
            "compare", str(reference), str(candidate), "--bootstrap", "5", "--out", str(report)
        )
        check_answer(code, out, err, (0, 2))
        assert leftovers(root) == []
        if code == 0:
            text = report.read_text(encoding="utf-8")
            assert text.startswith("# aabench comparison") and text.endswith("\n")
        else:
            assert not report.exists()
    finally:
        shutil.rmtree(root)


@SETTINGS
@given(reference_damage=damage(), candidate_damage=damage(), rules=st.none() | rules_text())
def test_gate_answers_every_input_with_0_1_or_one_line_and_writes_whole_summaries(
    cli, reference_damage, candidate_damage, rules
):
    root = Path(tempfile.mkdtemp(prefix="aabench-gate-"))
    try:
        reference, candidate = make_pair(root, reference_damage, candidate_damage)
        summary = root / "summary.md"
        args = ["gate", "--reference", str(reference), "--candidate", str(candidate)]
        if rules is not None:
            (root / "rules.toml").write_text(rules, encoding="utf-8")
            args += ["--rules", str(root / "rules.toml")]
        code, out, err = cli(*args, "--bootstrap", "5", "--summary", str(summary))
        check_answer(code, out, err, (0, 1, 2))
        assert leftovers(root) == []
        if code == 2:
            assert not summary.exists()
        else:
            text = summary.read_text(encoding="utf-8")
            verdict = "PASSED" if code == 0 else "FAILED"
            assert text.startswith(f"## aabench gate: {verdict}") and text.endswith("\n")
    finally:
        shutil.rmtree(root)
