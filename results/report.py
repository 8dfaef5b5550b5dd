"""A comparison as a report a person reads: self-contained HTML, or Markdown plus PNGs.

``write_report(comparison, path)`` picks the format from the suffix:

- ``.html``: one file, inline CSS, plots embedded as ``data:image/png;base64`` images;
  it loads nothing from anywhere and needs no JavaScript.
- ``.md``: a Markdown file; its plots are PNG files in the sibling folder
  ``<stem>_files/``, linked relatively, so the two move together.

The report names the runs (the reference marked), shows the comparison's warnings
first, then one row per aligned key: the value of every run, each candidate's delta
(candidate - reference, signed) and its paired statistics (p-value and/or 95 % CI of
the delta, ``*`` when significant) or "no paired statistics". Every file is written
atomically; all user-supplied text is escaped.
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
from aabench.results.files import write_atomic
from aabench.results.plots import Plot, all_plots

SUFFIXES = (".html", ".md")
NO_STATISTICS = "no paired statistics"
MISSING = "—"

# Columns of Comparison.rows that are not dimensions of the aligned key.
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
        "ci_low",
        "ci_high",
        "significant",
    )
)
_PLOT_FILE = re.compile(r"^\d\d-[a-z0-9-]+\.png$")


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
    for name, (_, png) in zip(names, plots, strict=True):
        _write_bytes(folder / name, png)
    _remove_stale_plots(folder, keep=set(names))
    links = [
        (title, f"{quote(folder.name)}/{quote(name)}")
        for name, (title, _) in zip(names, plots, strict=True)
    ]
    _write_text(path, render_markdown(comparison, links))


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
class CandidateCell:
    value: str
    delta: str
    improved: bool | None  # None: no direction (delta 0 or missing)
    statistics: str
    significant: bool


@dataclass
class Line:
    key: list[str]  # suite, metric, dimensions..., unit, direction
    reference: str
    candidates: dict[str, CandidateCell] = field(default_factory=dict)


@dataclass
class Content:
    reference: str
    candidates: list[str]
    runs: list[RunInfo]
    warnings: list[str]
    key_headers: list[str]
    lines: list[Line]
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
    dimensions = [column for column in rows.columns if column not in _ROW_COLUMNS]
    key_headers = ["suite", "metric", *dimensions, "unit", "better"]

    lines: dict[tuple, Line] = {}
    any_statistics = False
    for row in rows.to_dict("records"):
        key = [
            _text(row.get("suite")),
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
        statistics, significant, has = _statistics(row)
        any_statistics = any_statistics or has
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
    return Content(
        reference=reference,
        candidates=candidates,
        runs=[_run_info(run, index == 0) for index, run in enumerate(runs)],
        warnings=[str(w) for w in (comparison.warnings or [])],
        key_headers=key_headers,
        lines=list(lines.values()),
        any_statistics=any_statistics,
    )


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
        for suite, rows in table.groupby("suite", sort=False):
            counts = sorted({int(n) for n in rows["n"].dropna()}) if "n" in rows.columns else []
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


def _statistics(row: dict) -> tuple[str, bool, bool]:
    """(cell text, significant, whether the row has statistics)."""
    test = row.get("test")
    p_value, low, high = row.get("p_value"), row.get("ci_low"), row.get("ci_high")
    if _missing(test) and _missing(p_value) and (_missing(low) or _missing(high)):
        return NO_STATISTICS, False, False
    parts = []
    if not _missing(p_value):
        p_value = float(p_value)
        parts.append("p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}")
    if not (_missing(low) or _missing(high)):
        parts.append(f"95% CI [{_delta(low)}, {_delta(high)}]")
    significant = _true(row.get("significant"))
    text = ", ".join(parts) or "n/a"
    if not _missing(test):
        text = f"{test}: {text}"
    return (f"{text} *" if significant else text), significant, True


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
    if _missing(value):
        return MISSING
    value = float(value)
    if round(value, 2) == 0:
        return "0.00"
    return f"{value:+.2f}"


def _direction(higher_is_better) -> str:
    if _missing(higher_is_better):
        return ""
    return "higher" if _true(higher_is_better) else "lower"


# --- HTML ------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better { color: #1a7f37; } td.worse { color: #c62828; }
td.significant { font-weight: bold; }
.warnings { border: 2px solid #d9822b; background: #fff4e5; padding: 0.6em 1em;
            margin: 1em 0; border-radius: 4px; }
.warnings h2 { margin: 0 0 0.3em 0; color: #a35200; }
.note { color: #555; font-size: 0.85em; }
.tag { background: #1f6feb; color: white; border-radius: 3px; padding: 0 0.4em;
       font-size: 0.8em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; }
"""


def render_html(comparison, plots: list[Plot]) -> str:
    c = content(comparison)
    e = _escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>aabench comparison: {e(_title(c))}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>aabench comparison: {e(_title(c))}</h1>",
    ]
    if c.warnings:
        out.append('<div class="warnings" role="alert">')
        out.append(f"<h2>&#9888; Warnings ({len(c.warnings)})</h2>")
        out.append("<ul>")
        out += [f"<li>{e(warning)}</li>" for warning in c.warnings]
        out.append("</ul>")
        out.append("</div>")

    out.append("<h2>Runs</h2>")
    out.append("<table>")
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
    out.append("</table>")

    out.append("<h2>Results</h2>")
    if not c.lines:
        out.append("<p>No values to compare: the runs share no suite and metric.</p>")
    else:
        out.append(f'<p class="note">{e(_legend(c))}</p>')
        out.append("<table>")
        keys = len(c.key_headers)
        out.append(
            "<tr>"
            + "".join(f'<th rowspan="2">{e(h)}</th>' for h in c.key_headers)
            + f'<th rowspan="2">{e(c.reference)}<br><span class="tag">reference</span></th>'
            + "".join(f'<th colspan="3">{e(label)}</th>' for label in c.candidates)
            + "</tr>"
        )
        out.append(
            "<tr>"
            + "<th>value</th><th>&Delta;</th><th>statistics</th>" * len(c.candidates)
            + "</tr>"
        )
        for line in c.lines:
            cells = [f"<td>{e(k)}</td>" for k in line.key[:keys]]
            cells.append(f'<td class="num">{e(line.reference)}</td>')
            for label in c.candidates:
                cell = line.candidates.get(label)
                if cell is None:
                    cells.append(f'<td class="num">{MISSING}</td>' * 3)
                    continue
                direction = {True: " better", False: " worse", None: ""}[cell.improved]
                strong = " significant" if cell.significant else ""
                cells.append(f'<td class="num">{e(cell.value)}</td>')
                cells.append(f'<td class="num{direction}{strong}">{e(cell.delta)}</td>')
                cells.append(f'<td class="num{strong}">{e(cell.statistics)}</td>')
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
        if not c.any_statistics:
            out.append(f'<p class="note">{e(_no_statistics_note())}</p>')

    if plots:
        out.append("<h2>Plots</h2>")
        for title, png in plots:
            data = base64.b64encode(png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(title)}">'
                f"<figcaption>{e(title)}</figcaption></figure>"
            )
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _escape(text) -> str:
    return html.escape(str(text), quote=True)


# --- Markdown --------------------------------------------------------------------------


def render_markdown(comparison, links: list[tuple[str, str]]) -> str:
    """``links``: (title, relative path of its PNG) per plot."""
    c = content(comparison)
    m = _md
    out = [f"# aabench comparison: {m(_title(c))}", ""]
    if c.warnings:
        out.append(f"> **⚠ Warnings ({len(c.warnings)})**")
        out.append(">")
        out += [f"> - {m(warning)}" for warning in c.warnings]
        out.append("")

    out += ["## Runs", ""]
    out += _md_table(
        ["run", "role", "model", "weights", "run id", "suites"],
        [
            [
                run.label,
                "**reference**" if run.reference else "candidate",
                run.models,
                run.weights,
                run.run_ids,
                run.suites,
            ]
            for run in c.runs
        ],
        raw_columns={1},
    )
    out += ["", "## Results", ""]
    if not c.lines:
        out.append("No values to compare: the runs share no suite and metric.")
    else:
        out += [m(_legend(c)), ""]
        headers = [*c.key_headers, f"{c.reference} (reference)"]
        for label in c.candidates:
            headers += [label, f"Δ {label}", f"statistics {label}"]
        body = []
        for line in c.lines:
            cells = [*line.key, line.reference]
            for label in c.candidates:
                cell = line.candidates.get(label)
                if cell is None:
                    cells += [MISSING] * 3
                else:
                    cells += [cell.value, cell.delta, cell.statistics]
            body.append(cells)
        out += _md_table(headers, body, numeric_from=len(c.key_headers))
        if not c.any_statistics:
            out += ["", m(_no_statistics_note())]
    if links:
        out += ["", "## Plots", ""]
        for title, link in links:
            out += [f"![{m(title)}]({link})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#!])")


def _md(text) -> str:
    """User text safe inside Markdown (and table cells): punctuation that Markdown or
    inline HTML would interpret is backslash-escaped; newlines become spaces."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).splitlines()))


def _md_table(
    headers: list[str],
    rows: list[list[str]],
    numeric_from: int | None = None,
    raw_columns: set[int] = frozenset(),
) -> list[str]:
    def cell(index: int, text: str) -> str:
        return text if index in raw_columns else _md(text)

    align = [
        "---:" if numeric_from is not None and index >= numeric_from else "---"
        for index in range(len(headers))
    ]
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(i, t) for i, t in enumerate(row)) + " |" for row in rows]
    return lines


# --- shared wording and files ----------------------------------------------------------


def _title(c: Content) -> str:
    if not c.candidates:
        return c.reference
    return f"{', '.join(c.candidates)} against {c.reference}"


def _legend(c: Content) -> str:
    return (
        f"Values to 2 decimals in each metric's unit; Δ = candidate - reference "
        f'({c.reference}); "better" says whether higher or lower values are better; '
        "statistics: paired test p-value and/or 95% CI of Δ, * = significant at the 5% level."
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


def _write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda temporary: Path(temporary).write_bytes(data))
