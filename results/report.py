"""A comparison as a report a person reads: self-contained HTML, or Markdown plus PNGs.

``write_report(comparison, path)`` picks the format from the suffix:

- ``.html``: one file, inline CSS, plots embedded as ``data:image/png;base64`` images;
  it loads nothing from anywhere and needs no JavaScript.
- ``.md``: a Markdown file; its plots are PNG files in the sibling folder
  ``<stem>_files/``, linked relatively, so the two move together.

The order is the reader's: what the runs warn about (provenance warnings, mismatches,
suites that could not be paired), then the headline -- one row per suite's headline
metrics (``Suite.headline``) with reference, candidate, delta and a verdict in words --
then the runs, the plots, and last the full table of every suite, folded when long, each
with how many per-dimension tests it holds and how they were corrected. A row without a
value says why (the tables' ``note``). Every file is written atomically; all
user-supplied text is escaped.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from aabench.errors import UserError
from aabench.results.files import write_atomic, write_together
from aabench.results.plots import Plot, all_plots
from aabench.results.stats import format_interval
from aabench.results.verdict import verdict as row_verdict

SUFFIXES = (".html", ".md")
NO_STATISTICS = "no paired statistics"
MISSING = "—"
FOLD_AFTER = 10  # a suite's full table longer than this is folded (<details>)
SIGNIFICANCE_PERCENT = 5

# Columns of Comparison.rows that are never dimensions of the aligned key.
_ROW_COLUMNS = frozenset(
    (
        "suite",
        "metric",
        "unit",
        "higher_is_better",
        "reference",
        "candidate",
        "reference_value",
        "candidate_value",
        "delta",
        "improved",
        "test",
        "p_value",
        "p_adjusted",
        "family_size",
        "correction",
        "ci_low",
        "ci_high",
        "significant",
        "n",
        "reference_n",
        "candidate_n",
        "note",
        "no_statistics",
        "source",
        "run_id",
        "model",
        "weights",
        "value",
        "verdict",
    )
)
_PLOT_FILE = re.compile(r"^\d\d-[a-z0-9-]+\.png$")
_TEST_NAMES = {"mcnemar": "McNemar", "bootstrap": "bootstrap"}


def write_report(comparison, path: Path) -> None:
    """Render ``comparison`` to ``path`` (``.html`` or ``.md``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"cannot write a report to {str(path)!r}: unknown format "
            f"{path.suffix or '(no suffix)'}; use .html or .md"
        )
    plots = all_plots(comparison)
    if suffix == ".html":
        _write_text(path, render_html(comparison, plots))
        return
    folder = path.parent / f"{path.stem}_files"
    names = [_plot_file_name(number, title) for number, (title, _) in enumerate(plots, 1)]
    links = [
        (title, f"{quote(folder.name)}/{quote(name)}")
        for name, (title, _) in zip(names, plots, strict=True)
    ]
    text = render_markdown(comparison, links)
    # The plots and the page as one: a failure part way (disk full) leaves the earlier
    # report as it was, not a new page linking to plots that were never written.
    pngs = [
        (folder / name, _bytes_writer(png)) for name, (_, png) in zip(names, plots, strict=True)
    ]
    write_together([*pngs, (path, _bytes_writer(text.encode("utf-8")))])
    _remove_stale_plots(folder, keep=set(names))


# --- the content, independent of the format --------------------------------------------


@dataclass
class RunInfo:
    label: str
    reference: bool
    models: str
    weights: str
    run_ids: str
    suites: str


@dataclass
class Verdict:
    text: str  # "better (McNemar p=0.003, n=500)"
    kind: str  # better | worse | same | different | none | missing


@dataclass
class HeadlineRow:
    suite: str
    metric: str
    unit: str
    direction: str
    candidate: str
    reference: str
    value: str
    delta: str
    verdict: Verdict


@dataclass
class CandidateCell:
    value: str
    delta: str
    improved: bool | None  # None: no direction (delta 0 or missing)
    statistics: str
    significant: bool


@dataclass
class Line:
    key: list[str]  # metric, dimensions..., unit, direction
    reference: str
    candidates: dict[str, CandidateCell] = field(default_factory=dict)


@dataclass
class Section:
    suite: str
    key_headers: list[str]
    lines: list[Line]
    tests: str  # "33 per-offset tests of accuracy, ..., Holm-corrected at 5 %; n = 5 images"

    @property
    def folded(self) -> bool:
        return len(self.lines) > FOLD_AFTER


@dataclass
class Content:
    reference: str
    candidates: list[str]
    runs: list[RunInfo]
    warnings: list[str]
    unpaired: list[str]
    headline: list[HeadlineRow]
    sections: list[Section]
    any_statistics: bool


def content(comparison) -> Content:
    runs = list(comparison.runs)
    reference = str(runs[0].label) if runs else ""
    rows = comparison.rows if comparison.rows is not None else pd.DataFrame()
    candidates = [str(run.label) for run in runs[1:]]
    if "candidate" in rows.columns:
        for label in rows["candidate"].dropna().astype(str):
            if label not in candidates:
                candidates.append(label)
    if not reference and "reference" in rows.columns and rows["reference"].notna().any():
        reference = str(rows["reference"].dropna().iloc[0])
    records = rows.to_dict("records")
    suites = _suite_order(list(dict.fromkeys(_text(r.get("suite")) for r in records)))
    dimensions = {suite: _dimensions(rows, suite) for suite in suites}
    sections = [
        _section(suite, [r for r in records if _text(r.get("suite")) == suite], dimensions[suite])
        for suite in suites
    ]
    return Content(
        reference=reference,
        candidates=candidates,
        runs=[_run_info(run, index == 0) for index, run in enumerate(runs)],
        warnings=_warnings(comparison),
        unpaired=[str(line) for line in (getattr(comparison, "unpaired", None) or [])],
        headline=[
            row
            for suite in suites
            for row in _headline(
                suite, [r for r in records if _text(r.get("suite")) == suite], dimensions[suite]
            )
        ],
        sections=sections,
        any_statistics=any(not _missing(r.get("test")) for r in records),
    )


def _suite_order(suites: list[str]) -> list[str]:
    """Built-in suites in the registry's order (accuracy, shift, diagonal, imagenet-c,
    imagenet-p), then the others as they came."""
    from aabench.suites.registry import BUILTIN

    known = [s for s in BUILTIN if s in suites]
    return known + [s for s in suites if s not in known]


def _warnings(comparison) -> list[str]:
    """The comparison's warnings and every run's provenance warnings, each once."""
    found = [str(w) for w in (comparison.warnings or [])]
    for run in comparison.runs:
        for provenance in _provenances(getattr(run, "provenance", None)):
            found += [f"{run.label}: {w}" for w in provenance.get("warnings") or []]
    # The same warning of several runs ("random weights: ...") is one line naming them.
    labels = sorted((str(run.label) for run in comparison.runs), key=len, reverse=True)
    grouped: dict[str, list[str]] = {}
    for line in dict.fromkeys(found):
        label = next((lb for lb in labels if line.startswith(f"{lb}: ")), None)
        text = line[len(label) + 2 :] if label is not None else line
        grouped.setdefault(text, [])
        if label is not None:
            grouped[text].append(label)
    return [f"{', '.join(names)}: {text}" if names else text for text, names in grouped.items()]


def _provenances(value) -> list[dict]:
    """One provenance, a list of them, or a mapping suite -> provenance."""
    if isinstance(value, dict):
        if "warnings" in value or not all(isinstance(v, dict) for v in value.values()):
            return [value]
        return list(value.values())
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, dict)]
    return []


def _dimensions(rows: pd.DataFrame, suite: str) -> list[str]:
    """The dimension columns some row of ``suite`` sets, in the suite's declared order."""
    declared = []
    suite_class = _suite_class(suite)
    if suite_class is not None:
        declared = list(suite_class.dimensions)
    candidates = [c for c in rows.columns if c not in _ROW_COLUMNS]
    ordered = [d for d in declared if d in candidates]
    ordered += [c for c in candidates if c not in ordered]
    mine = rows[rows["suite"].astype(str) == suite] if "suite" in rows.columns else rows
    return [d for d in ordered if mine[d].notna().any()]


def _suite_class(suite: str):
    from aabench.suites.registry import available_suites

    try:
        return available_suites().get(suite)
    except UserError:  # a broken plugin must not stop a report of built-in suites
        return None


def _overall(record: dict, dimensions: list[str]) -> bool:
    return all(_missing(record.get(d)) for d in dimensions)


def _headline(suite: str, records: list[dict], dimensions: list[str]) -> list[HeadlineRow]:
    """The suite's headline metrics (its undimensioned rows as the fallback)."""
    overall = [r for r in records if _overall(r, dimensions)]
    suite_class = _suite_class(suite)
    declared = list(getattr(suite_class, "headline", ()) or ())
    metrics: list[str] = []
    for entry in declared:
        alternatives = [entry] if isinstance(entry, str) else list(entry)
        present = [m for m in alternatives if any(r.get("metric") == m for r in overall)]
        valued = [
            m
            for m in present
            if any(r.get("metric") == m and not _missing(r.get("candidate_value")) for r in overall)
        ]
        if valued or present:
            metrics.append((valued or present)[0])
    if not metrics:
        metrics = list(dict.fromkeys(_text(r.get("metric")) for r in overall))
    chosen = [r for m in metrics for r in overall if _text(r.get("metric")) == m]
    return [
        HeadlineRow(
            suite=suite,
            metric=_text(r.get("metric")),
            unit=_text(r.get("unit")),
            direction=_direction(r.get("higher_is_better")),
            candidate=_text(r.get("candidate")),
            reference=_number(r.get("reference_value")),
            value=_number(r.get("candidate_value")),
            delta=_delta(r.get("delta")),
            verdict=verdict(r),
        )
        for r in chosen
    ]


def verdict(record: dict) -> Verdict:
    """The row's verdict in words, and its kind (for colour)."""
    text = row_verdict(record)
    kinds = (
        ("better", "better"),
        ("worse", "worse"),
        ("no significant", "same"),
        ("different", "different"),
        ("not compared", "missing"),
    )
    kind = next((k for prefix, k in kinds if text.startswith(prefix)), "none")
    return Verdict(text=text, kind=kind)


def _section(suite: str, records: list[dict], dimensions: list[str]) -> Section:
    """The suite's every row: its overall rows first, then each metric's per-dimension
    rows together (the table order within each)."""
    metrics = list(dict.fromkeys(_text(r.get("metric")) for r in records))
    ordered = [r for r in records if _overall(r, dimensions)]
    ordered += sorted(
        (r for r in records if not _overall(r, dimensions)),
        key=lambda r: metrics.index(_text(r.get("metric"))),
    )
    lines: dict[tuple, Line] = {}
    for row in ordered:
        key = [
            _text(row.get("metric")),
            *(_text(row.get(d)) for d in dimensions),
            _text(row.get("unit")),
            _direction(row.get("higher_is_better")),
        ]
        line = lines.setdefault(
            tuple(key), Line(key=key, reference=_number(row.get("reference_value")))
        )
        if line.reference == MISSING:
            line.reference = _number(row.get("reference_value"))
        statistics, significant = _statistics(row)
        delta = row.get("delta")
        improved = (
            None if _missing(delta) or float(delta) == 0 else bool(_true(row.get("improved")))
        )
        line.candidates[_text(row.get("candidate"))] = CandidateCell(
            value=_number(row.get("candidate_value")),
            delta=_delta(delta),
            improved=improved,
            statistics=statistics,
            significant=significant,
        )
    return Section(
        suite=suite,
        key_headers=["metric", *dimensions, "unit", "better"],
        lines=list(lines.values()),
        tests=_tests_note(records, dimensions),
    )


def _tests_note(records: list[dict], dimensions: list[str]) -> str:
    """How many per-dimension tests the suite's table holds and how they were corrected,
    and over how many images: "33 per-offset tests of accuracy, Holm-corrected at 5 %
    within each metric; n = 5 images"."""
    first = next((_text(r.get("candidate")) for r in records), "")
    families: dict[str, tuple[int, str, bool]] = {}
    for r in records:
        if _text(r.get("candidate")) != first or _overall(r, dimensions) or _missing(r.get("test")):
            continue
        metric = _text(r.get("metric"))
        size = r.get("family_size")
        per = "/".join(d for d in dimensions if not _missing(r.get(d)))
        count, _, holm = families.get(metric, (0, per, False))
        holm = holm or _text(r.get("correction")) == "holm"
        if _missing(size):
            families[metric] = (count + 1, per, holm)
        else:
            families[metric] = (max(count, int(size)), per, holm)
    parts = []
    if families:
        counts = [
            f"{count} per-{per} tests of {metric}" for metric, (count, per, _) in families.items()
        ]
        if all(holm for _, _, holm in families.values()):
            correction = (
                f"Holm-corrected at {SIGNIFICANCE_PERCENT} % within each metric "
                "(* = significant after correction)"
            )
        else:
            correction = f"each at {SIGNIFICANCE_PERCENT} %, not corrected for multiple testing"
        parts.append(f"{_join(counts)}, {correction}")
    # Not-computed rows say n = 0: they count no images.
    images = sorted({int(r["n"]) for r in records if not _missing(r.get("n")) and r["n"] > 0})
    if images:
        parts.append(f"n = {', '.join(str(n) for n in images)} images")
    return "; ".join(parts)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _run_info(run, reference: bool) -> RunInfo:
    table = run.table if run.table is not None else pd.DataFrame()

    def distinct(column: str) -> str:
        if column not in table.columns:
            return MISSING
        values = list(dict.fromkeys(table[column].dropna().astype(str)))
        return ", ".join(values) or MISSING

    suites = MISSING
    if "suite" in table.columns:
        parts = []
        groups = dict(list(table.groupby("suite", sort=False)))
        for suite in _suite_order([str(s) for s in groups]):
            rows = groups[suite]
            counts = sorted({int(n) for n in rows["n"].dropna()}) if "n" in rows.columns else []
            counts = [n for n in counts if n > 0]  # not-computed rows say n = 0
            counts_text = f" (n = {', '.join(str(n) for n in counts)})" if counts else ""
            parts.append(f"{suite}{counts_text}")
        suites = "; ".join(parts) or MISSING
    return RunInfo(
        label=str(run.label),
        reference=reference,
        models=distinct("model"),
        weights=distinct("weights"),
        run_ids=distinct("run_id"),
        suites=suites,
    )


def _statistics(row: dict) -> tuple[str, bool]:
    """(cell text, significant): the test, its p-value (Holm-adjusted where the row is one
    of a family), the 95 % CI of the delta; or why there is no value or no test."""
    if _missing(row.get("reference_value")) or _missing(row.get("candidate_value")):
        note = _text(row.get("note"))
        return (f"not computed: {note}" if note else "no value"), False
    test = row.get("test")
    p_value, low, high = row.get("p_value"), row.get("ci_low"), row.get("ci_high")
    if _missing(test) and _missing(p_value) and (_missing(low) or _missing(high)):
        reason = _text(row.get("no_statistics"))
        return (f"{NO_STATISTICS} ({reason})" if reason else NO_STATISTICS), False
    parts = []
    if not _missing(p_value):
        parts.append(_p_text(p_value))
        family = row.get("family_size")
        if not _missing(family) and int(family) > 1 and not _missing(row.get("p_adjusted")):
            parts[-1] += f" (Holm {_p_text(row.get('p_adjusted'), prefix='')})"
    if not (_missing(low) or _missing(high)):
        parts.append(f"95% CI {format_interval(float(low), float(high))}")
    significant = _true(row.get("significant"))
    text = ", ".join(parts) or "n/a"
    if not _missing(test):
        text = f"{_TEST_NAMES.get(str(test), str(test))}: {text}"
    return (f"{text} *" if significant else text), significant


def _p_text(p, prefix: str = "p ") -> str:
    p = float(p)
    if p < 0.001:
        return f"{prefix}< 0.001" if prefix else "< 0.001"
    return f"{prefix}= {p:.3f}" if prefix else f"{p:.3f}"


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _true(value) -> bool:
    return not _missing(value) and bool(value)


def _text(value) -> str:
    if _missing(value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _number(value) -> str:
    if _missing(value):
        return MISSING
    value = float(value)
    return MISSING if math.isnan(value) else f"{value:.2f}"


def _delta(value) -> str:
    """Signed, to 2 decimals; a non-zero delta that would print as 0.00 gets two
    significant digits instead (+0.0042), so a difference never hides in the rounding."""
    if _missing(value):
        return MISSING
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return "0.00" if value == 0 else str(value)
    if round(value, 2) == 0:
        decimals = min(8, 1 - math.floor(math.log10(abs(value))))
        return f"{value:+.{decimals}f}"
    return f"{value:+.2f}"


def _direction(higher_is_better) -> str:
    if _missing(higher_is_better):
        return ""
    return "higher" if _true(higher_is_better) else "lower"


# --- HTML ------------------------------------------------------------------------------

# Nothing may widen the page past the window: tables take the body's width and wrap
# their text (statistics, notes), numbers alone stay on one line, and a table that
# still cannot fit scrolls inside its own wrapper instead of the page.
_CSS = """
html { font-size: 14px; }
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 0.8rem auto; max-width: 82rem; padding: 0 1rem; color: #222;
       line-height: 1.35; box-sizing: border-box; }
h1 { font-size: 1.35rem; margin: 0 0 0.2rem 0; }
h2 { font-size: 1.15rem; margin: 1.2rem 0 0.4rem 0; }
h3 { font-size: 1rem; margin: 1rem 0 0.3rem 0; }
p { margin: 0.3rem 0; }
.table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 0.3rem 0; width: 100%;
        max-width: 100%; table-layout: auto; }
th, td { border: 1px solid #ccc; padding: 0.15rem 0.45rem; text-align: left;
         vertical-align: top; overflow-wrap: break-word; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.suite { white-space: nowrap; }
td.stat { font-variant-numeric: tabular-nums; min-width: 12rem; }
td.better, span.better { color: #1a7f37; } td.worse, span.worse { color: #c62828; }
td.significant { font-weight: bold; }
td.verdict.better, td.verdict.worse { font-weight: bold; }
td.verdict.same, td.verdict.none, td.verdict.missing { color: #555; }
.warnings { border: 2px solid #d9822b; background: #fff4e5; padding: 0.3rem 0.8rem;
            margin: 0.5rem 0; border-radius: 4px; }
.warnings h2 { margin: 0 0 0.1rem 0; font-size: 1rem; color: #a35200; }
.warnings ul { margin: 0.1rem 0; padding-left: 1.2rem; }
.unpaired { border-color: #8250df; background: #f6f0ff; }
.unpaired h2 { color: #5a32a3; }
.note { color: #555; font-size: 0.85rem; }
.tag { background: #1f6feb; color: white; border-radius: 3px; padding: 0 0.4em;
       font-size: 0.8em; }
.plots { display: flex; flex-wrap: wrap; gap: 0.8rem; }
figure { margin: 0.3rem 0; flex: 1 1 30rem; max-width: 100%; }
figcaption { color: #555; font-size: 0.9rem; }
img { max-width: 100%; height: auto; }
details { margin: 0.3rem 0; } summary { cursor: pointer; color: #0b57d0; }
"""


def render_html(comparison, plots: list[Plot]) -> str:
    c = content(comparison)
    e = _escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>aabench comparison: {e(_title(c))}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>aabench comparison: {e(_title(c))}</h1>",
        f'<p class="note">{e(_subtitle(c))}</p>',
    ]
    if c.warnings:
        out.append('<div class="warnings" role="alert">')
        out.append(f"<h2>&#9888; Warnings ({len(c.warnings)})</h2>")
        out.append("<ul>" + "".join(f"<li>{e(w)}</li>" for w in c.warnings) + "</ul>")
        out.append("</div>")
    if c.unpaired:
        out.append('<div class="warnings unpaired" role="note">')
        out.append(f"<h2>Not compared ({len(c.unpaired)})</h2>")
        out.append("<ul>" + "".join(f"<li>{e(u)}</li>" for u in c.unpaired) + "</ul>")
        out.append("</div>")

    out.append('<h2 id="headline">Headline</h2>')
    if not c.headline:
        out.append("<p>No values to compare: the runs share no suite and metric.</p>")
    else:
        several = len(c.candidates) > 1
        headers = ["suite", "metric", "better", f"{c.reference} (reference)"]
        headers += ["candidate", "value"] if several else [c.candidates[0] if c.candidates else ""]
        headers += ["Δ", "verdict"]
        out.append('<div class="table-wrap"><table class="headline">')
        out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
        spans = {s: sum(r.suite == s for r in c.headline) for s in {r.suite for r in c.headline}}
        previous = None
        for row in c.headline:
            kind = row.verdict.kind
            direction = {"better": " better", "worse": " worse"}.get(kind, "")
            first = row.suite != previous
            previous = row.suite
            suite_cell = f'<td class="suite" rowspan="{spans[row.suite]}">{e(row.suite)}</td>'
            cells = [
                *([suite_cell] if first else []),
                f"<td>{e(_metric_label(row.metric, row.unit))}</td>",
                f"<td>{e(row.direction)}</td>",
                f'<td class="num">{e(row.reference)}</td>',
                *([f"<td>{e(row.candidate)}</td>"] if several else []),
                f'<td class="num">{e(row.value)}</td>',
                f'<td class="num{direction}">{e(row.delta)}</td>',
                f'<td class="verdict {kind}">{e(row.verdict.text)}</td>',
            ]
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table></div>")
        out.append(f'<p class="note">{e(_legend(c))}</p>')
        if not c.any_statistics:
            out.append(f'<p class="note">{e(_no_statistics_note())}</p>')

    out.append("<h2>Runs</h2>")
    out.append('<div class="table-wrap"><table>')
    out.append(
        "<tr><th>run</th><th>role</th><th>model</th><th>weights</th>"
        "<th>run id</th><th>suites</th></tr>"
    )
    for run in c.runs:
        role = '<span class="tag">reference</span>' if run.reference else "candidate"
        out.append(
            f"<tr><td>{e(run.label)}</td><td>{role}</td><td>{e(run.models)}</td>"
            f"<td>{e(run.weights)}</td><td>{e(run.run_ids)}</td><td>{e(run.suites)}</td></tr>"
        )
    out.append("</table></div>")

    if plots:
        out.append('<h2 id="plots">Plots</h2>')
        out.append('<div class="plots">')
        for title, png in plots:
            data = base64.b64encode(png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(title)}">'
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
        out.append("</div>")

    if c.sections:
        out.append('<h2 id="tables">Full tables</h2>')
    for section in c.sections:
        out.append(f"<h3>{e(section.suite)}</h3>")
        if section.tests:
            out.append(f'<p class="note">{e(section.tests)}</p>')
        table = _html_table(c, section)
        if section.folded:
            out.append(
                f"<details><summary>all {len(section.lines)} rows of {e(section.suite)}</summary>"
            )
            out += table
            out.append("</details>")
        else:
            out += table
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _html_table(c: Content, section: Section) -> list[str]:
    e = _escape
    keys = len(section.key_headers)
    several = len(c.candidates) > 1
    out = ['<div class="table-wrap"><table>']
    top = "".join(f'<th rowspan="2">{e(h)}</th>' for h in section.key_headers)
    top += f'<th rowspan="2">{e(c.reference)}<br><span class="tag">reference</span></th>'
    if several:
        top += "".join(f'<th colspan="3">{e(label)}</th>' for label in c.candidates)
        out.append(f"<tr>{top}</tr>")
        out.append(
            "<tr>"
            + "<th>value</th><th>&Delta;</th><th>statistics</th>" * len(c.candidates)
            + "</tr>"
        )
    else:
        label = c.candidates[0] if c.candidates else ""
        top = top.replace(' rowspan="2"', "")
        top += f"<th>{e(label)}</th><th>&Delta;</th><th>statistics</th>"
        out.append(f"<tr>{top}</tr>")
    for line in section.lines:
        cells = [f"<td>{e(k)}</td>" for k in line.key[:keys]]
        cells.append(f'<td class="num">{e(line.reference)}</td>')
        for label in c.candidates:
            cell = line.candidates.get(label)
            if cell is None:
                cells.append(f'<td class="num">{MISSING}</td>' * 2)
                cells.append(f'<td class="stat">{e(label)} has no such row</td>')
                continue
            direction = {True: " better", False: " worse", None: ""}[cell.improved]
            strong = " significant" if cell.significant else ""
            cells.append(f'<td class="num">{e(cell.value)}</td>')
            cells.append(f'<td class="num{direction}{strong}">{e(cell.delta)}</td>')
            cells.append(f'<td class="stat{strong}">{e(cell.statistics)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    return out


def _escape(text) -> str:
    return html.escape(str(text), quote=True)


# --- Markdown --------------------------------------------------------------------------


def render_markdown(comparison, links: list[tuple[str, str]]) -> str:
    """``links``: (title, relative path of its PNG) per plot."""
    c = content(comparison)
    m = _md
    out = [f"# aabench comparison: {m(_title(c))}", "", m(_subtitle(c)), ""]
    if c.warnings:
        out.append(f"> **⚠ Warnings ({len(c.warnings)})**")
        out.append(">")
        out += [f"> - {m(warning)}" for warning in c.warnings]
        out.append("")
    if c.unpaired:
        out.append(f"> **Not compared ({len(c.unpaired)})**")
        out.append(">")
        out += [f"> - {m(line)}" for line in c.unpaired]
        out.append("")

    out += ["## Headline", ""]
    if not c.headline:
        out.append("No values to compare: the runs share no suite and metric.")
    else:
        several = len(c.candidates) > 1
        headers = ["suite", "metric", "better", f"{c.reference} (reference)"]
        headers += ["candidate", "value"] if several else [c.candidates[0] if c.candidates else ""]
        headers += ["Δ", "verdict"]
        body = []
        for row in c.headline:
            text = m(row.verdict.text)
            if row.verdict.kind in ("better", "worse"):
                text = f"**{text}**"
            cells = [m(row.suite), m(_metric_label(row.metric, row.unit)), m(row.direction)]
            cells += [m(row.reference), *([m(row.candidate)] if several else [])]
            cells += [m(row.value), m(row.delta), text]
            body.append(cells)
        numeric = {3, 5, 6} if several else {3, 4, 5}
        out += _md_table(headers, body, numeric=numeric, escaped=True)
        out += ["", m(_legend(c))]
        if not c.any_statistics:
            out += ["", m(_no_statistics_note())]

    out += ["", "## Runs", ""]
    out += _md_table(
        ["run", "role", "model", "weights", "run id", "suites"],
        [
            [
                m(run.label),
                "**reference**" if run.reference else "candidate",
                m(run.models),
                m(run.weights),
                m(run.run_ids),
                m(run.suites),
            ]
            for run in c.runs
        ],
        escaped=True,
    )
    if links:
        out += ["", "## Plots", ""]
        for title, link in links:
            out += [f"![{m(title)}]({link})", ""]
    if c.sections:
        out += ["", "## Full tables"]
    for section in c.sections:
        out += ["", f"### {m(section.suite)}", ""]
        if section.tests:
            out += [m(section.tests), ""]
        headers = [*section.key_headers, f"{c.reference} (reference)"]
        for label in c.candidates:
            headers += [label, f"Δ {label}", f"statistics {label}"]
        body = []
        for line in section.lines:
            cells = [*line.key, line.reference]
            for label in c.candidates:
                cell = line.candidates.get(label)
                if cell is None:
                    cells += [MISSING, MISSING, f"{label} has no such row"]
                else:
                    cells += [cell.value, cell.delta, cell.statistics]
            body.append([m(cell) for cell in cells])
        keys = len(section.key_headers)
        numeric = {i for i in range(keys, len(headers)) if not headers[i].startswith("statistics")}
        table = _md_table(headers, body, numeric=numeric, escaped=True)
        if section.folded:
            # GitHub renders Markdown inside <details> when blank lines surround it.
            out += [
                "<details>",
                f"<summary>all {len(section.lines)} rows of {_escape(section.suite)}</summary>",
                "",
                *table,
                "",
                "</details>",
            ]
        else:
            out += table
    return "\n".join(out).rstrip("\n") + "\n"


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#!])")


def _md(text) -> str:
    """User text safe inside Markdown (and table cells): punctuation that Markdown or
    inline HTML would interpret is backslash-escaped; newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def _md_table(
    headers: list[str],
    rows: list[list[str]],
    numeric: set[int] = frozenset(),
    escaped: bool = False,
) -> list[str]:
    """``escaped``: the cells are Markdown already (headers are always escaped here)."""
    align = ["---:" if index in numeric else "---" for index in range(len(headers))]
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += [
        "| " + " | ".join(cell if escaped else _md(cell) for cell in row) + " |" for row in rows
    ]
    return lines


# --- shared wording and files ----------------------------------------------------------


def _title(c: Content) -> str:
    if not c.candidates:
        return c.reference
    return f"{', '.join(c.candidates)} against {c.reference}"


def _subtitle(c: Content) -> str:
    candidates = ", ".join(c.candidates) or MISSING
    return f"reference: {c.reference}; candidate: {candidates}; Δ = candidate - reference"


def _metric_label(metric: str, unit: str) -> str:
    return f"{metric} ({unit})" if unit else metric


def _legend(c: Content) -> str:
    return (
        f"Values to 2 decimals in each metric's unit; Δ = candidate - {c.reference}, to 2 "
        'decimals or 2 significant digits when smaller; "better": whether higher or lower '
        f"values are better; the verdict is the paired test at {SIGNIFICANCE_PERCENT} % "
        "(McNemar for right/wrong outcomes, else the paired bootstrap) over n images. "
        "Per-dimension rows are in the full tables below."
    )


def _no_statistics_note() -> str:
    return (
        "No paired statistics for any row: the deltas are differences of summary values, "
        "with no test of whether they are real."
    )


def _plot_file_name(number: int, title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "plot"
    return f"{number:02d}-{slug}.png"


def _remove_stale_plots(folder: Path, keep: set[str]) -> None:
    """Drop plots an earlier report wrote into this folder and this one did not."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.is_file() and _PLOT_FILE.match(entry.name) and entry.name not in keep:
            entry.unlink()


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def _bytes_writer(data: bytes):
    return lambda temporary: Path(temporary).write_bytes(data)
