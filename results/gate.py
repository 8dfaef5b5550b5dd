"""The CI gate: does a candidate regress against a reference beyond what the rules allow?

A rule names a metric (optionally a suite) and the largest regression allowed: in the
metric's own unit (percentage points for %), or as a fraction of the reference value
when ``relative = true``. ``only_if_significant = true`` fails only regressions whose
paired test says they are real; without samples files the value alone decides. Rules
apply to a suite's overall rows (blank dimension columns) unless ``per_dimension``; a
per-dimension row's significance is its Holm-adjusted one (see `results.compare`).

Every checked row gets a ``status``: "regressed" (fails), "not significant" (beyond the
limit, but the paired test found no real difference: passes) or "ok".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from aabench.checks import finite, printable
from aabench.errors import UserError
from aabench.results.compare import Comparison
from aabench.results.verdict import dimension_label, verdict
from aabench.suites.registry import available_suites

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass(frozen=True)
class Rule:
    metric: str
    max_regression: float
    suite: str | None = None  # None: this metric in every suite that has it
    relative: bool = False
    only_if_significant: bool = False
    per_dimension: bool = False

    def describe(self) -> str:
        limit = (
            f"{self.max_regression:.1%} relative"
            if self.relative
            else f"{self.max_regression:g} absolute"
        )
        where = f"{self.suite}." if self.suite else ""
        extra = ", only if significant" if self.only_if_significant else ""
        return f"{where}{self.metric}: at most {limit}{extra}"


# The headline metrics of the built-in suites; see the README.
_SIGNIFICANT = {"only_if_significant": True}
DEFAULT_RULES = (
    Rule("top1", 0.5, suite="accuracy", **_SIGNIFICANT),
    Rule("top5", 0.5, suite="accuracy", **_SIGNIFICANT),
    Rule("consistency", 0.5, suite="shift", **_SIGNIFICANT),
    Rule("accuracy", 0.5, suite="shift", **_SIGNIFICANT),
    Rule("accuracy", 0.5, suite="diagonal", **_SIGNIFICANT),
    Rule("wobble", 0.10, suite="diagonal", relative=True, **_SIGNIFICANT),
    Rule("flips", 0.10, suite="diagonal", relative=True, **_SIGNIFICANT),
)


def load_rules(path: str | Path) -> list[Rule]:
    """Rules from a TOML file: one ``[[rule]]`` table per rule."""
    path = Path(path)
    shown = printable(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(
            f"rules file {shown} does not exist: fix the --rules path, or leave --rules out "
            "for the default rules"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise UserError(
            f"rules file {shown} is not valid TOML: {printable(reason)}; fix it (each rule is "
            'a [[rule]] table, e.g. [[rule]] metric = "consistency" max_regression = 0.5)'
        ) from error
    except OSError as error:
        raise UserError(
            f"cannot read rules file {shown} ({error.strerror or error}): pass a TOML file to "
            "--rules"
        ) from error
    entries = document.get("rule")
    unknown_top = sorted(set(document) - {"rule"})
    if unknown_top or not isinstance(entries, list) or not entries:
        raise UserError(
            f"rules file {shown} must hold one or more [[rule]] tables"
            + (f" (unknown keys: {printable(', '.join(unknown_top))})" if unknown_top else "")
            + '; e.g. [[rule]] metric = "consistency" max_regression = 0.5'
        )
    suites = available_suites()
    known_metrics = {metric for cls in suites.values() for metric in cls.metrics}
    allowed = {f.name for f in fields(Rule)}
    rules = []
    for number, entry in enumerate(entries, start=1):
        where = f"rules file {shown}, rule {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: a rule is a [[rule]] table of key = value lines")
        extra = sorted(set(entry) - allowed)
        if extra:
            raise UserError(
                f"{where}: unknown keys {printable(', '.join(extra))}; valid keys are "
                f"{', '.join(sorted(allowed))}"
            )
        if "metric" not in entry or "max_regression" not in entry:
            raise UserError(f"{where}: needs both metric and max_regression")
        metric, suite = entry["metric"], entry.get("suite")
        if not isinstance(metric, str) or not (suite is None or isinstance(suite, str)):
            raise UserError(f'{where}: metric and suite must be strings, e.g. metric = "top1"')
        if suite is not None and suite not in suites:
            raise UserError(f"{where}: unknown suite {suite!r}; suites are {', '.join(suites)}")
        valid = suites[suite].metrics if suite else known_metrics
        if metric not in valid:
            raise UserError(
                f"{where}: unknown metric {metric!r}"
                + (f" for suite {suite}" if suite else "")
                + f"; valid metrics are {', '.join(sorted(valid))}"
            )
        limit = entry["max_regression"]
        if isinstance(limit, bool) or not isinstance(limit, int | float):
            raise UserError(f"{where}: max_regression must be a number >= 0, got {limit!r}")
        # TOML has nan and inf: a NaN limit compares false with every regression, so the
        # gate could never fail; an infinite one allows any regression at all.
        limit = finite(limit, f"{where}: max_regression", minimum=0)
        for flag in ("relative", "only_if_significant", "per_dimension"):
            if not isinstance(entry.get(flag, False), bool):
                raise UserError(f"{where}: {flag} must be true or false")
        rules.append(Rule(**{**entry, "max_regression": limit}))
    return rules


@dataclass
class GateResult:
    checked: pd.DataFrame  # every gated row, with its rule, regression, status, dimension
    failures: pd.DataFrame

    @property
    def passed(self) -> bool:
        return self.failures.empty

    @property
    def not_significant(self) -> pd.DataFrame:
        """Rows beyond their limit that pass because their paired test found no real
        difference."""
        return self.checked[self.checked["status"] == NOT_SIGNIFICANT].reset_index(drop=True)


REGRESSED, NOT_SIGNIFICANT, OK = "regressed", "not significant", "ok"


def regression(row: pd.Series, rule: Rule) -> float:
    """How much worse the candidate is (positive = worse), in the rule's terms."""
    worse = -row["delta"] if row["higher_is_better"] else row["delta"]
    if rule.relative:
        reference = abs(row["reference_value"])
        return worse / reference if reference else (0.0 if worse <= 0 else float("inf"))
    return worse


def _known_not_significant(row: pd.Series) -> bool:
    """A paired test ran and found no real difference (no test: not known)."""
    value = row.get("significant")
    return value is not None and not pd.isna(value) and not bool(value)


def apply_rules(comparison: Comparison, rules: list[Rule], dimensions: list[str]) -> GateResult:
    rows = comparison.rows
    overall = (
        rows[dimensions].isna().all(axis=1) if dimensions else pd.Series(True, index=rows.index)
    )
    checked = []
    for rule in rules:
        selected = rows["metric"] == rule.metric
        if rule.suite:
            selected &= rows["suite"] == rule.suite
        if not rule.per_dimension:
            selected &= overall
        for _, row in rows[selected].iterrows():
            if pd.isna(row["reference_value"]):
                continue  # not computed in the reference either: nothing to hold to
            amount = regression(row, rule)
            # A value the candidate lacks cannot be shown not to regress: it fails.
            beyond = pd.isna(row["candidate_value"]) or amount > rule.max_regression
            excused = beyond and rule.only_if_significant and _known_not_significant(row)
            regressed = beyond and not excused
            checked.append(
                {
                    **row.to_dict(),
                    "rule": rule.describe(),
                    "regression": amount,
                    "failed": bool(regressed),
                    "status": REGRESSED if regressed else (NOT_SIGNIFICANT if excused else OK),
                    "dimension": dimension_label(row, dimensions),
                }
            )
    if not checked:
        raise UserError(
            "no gate rule applies to these tables: their metrics are "
            f"{', '.join(sorted(rows['metric'].unique()))}; write a rules file (--rules) "
            "naming at least one of them"
        )
    table = pd.DataFrame(checked)
    return GateResult(checked=table, failures=table[table["failed"]].reset_index(drop=True))


def row_line(row, arrow: str = "->") -> str:
    """``imagenet-p.top5_dist [perturbation=rotate]: 0.05 -> 0.23 (+0.18)``, then why."""
    where = f" [{row['dimension']}]" if row.get("dimension") else ""
    line = (
        f"{row['suite']}.{row['metric']}{where}: {_number(row['reference_value'])} {arrow} "
        f"{_number(row['candidate_value'])}"
    )
    if not pd.isna(row["delta"]):
        line += f" ({row['delta']:+.2f})"
    if row["status"] == NOT_SIGNIFICANT or pd.isna(row["candidate_value"]):
        line += f"; {verdict(row)}"
    return line


def _number(value) -> str:
    return "-" if pd.isna(value) else f"{value:.2f}"


def summary_markdown(result: GateResult, dimensions: list[str]) -> str:
    verdict_line = "PASSED" if result.passed else f"FAILED: {len(result.failures)} regression(s)"
    lines = [f"## aabench gate: {verdict_line}", ""]
    for title, frame in (
        ("Regressions", result.failures),
        ("Beyond the limit but not significant (passed)", result.not_significant),
    ):
        if len(frame):
            lines += [f"**{title}:**", ""]
            lines += [
                f"- `{row_line(row, '→')}`; rule {row['rule']}" for _, row in frame.iterrows()
            ]
            lines.append("")
    header = ["suite", "metric", *dimensions, "reference", "candidate", "delta", "rule", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    labels = {REGRESSED: "**regressed**", NOT_SIGNIFICANT: "ok (not significant)", OK: "ok"}
    for _, row in result.checked.iterrows():
        dims = [_dimension_cell(row.get(d)) for d in dimensions]
        cells = [
            row["suite"],
            row["metric"],
            *dims,
            _number(row["reference_value"]),
            _number(row["candidate_value"]),
            "-" if pd.isna(row["delta"]) else f"{row['delta']:+.2f}",
            row["rule"],
            labels[row["status"]],
        ]
        lines.append("| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _dimension_cell(value) -> str:
    if value is None or pd.isna(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
