"""Reports: self-contained HTML, Markdown with PNGs beside it, user text escaped."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.compare import RunTables
from aabench.results.plots import IMAGENET_P_FLIP, IMAGENET_P_TOP5, all_plots
from aabench.results.report import NO_STATISTICS, write_report
from tests.results.test_plots import PNG_SIGNATURE, compare, imagenet_c, imagenet_p, run

WARNING = "weights differ in hash: resnet50_aa.pth <allowed by --allow-mismatch>"


def resnets(statistics: bool = True, warnings=(WARNING,)):
    runs = [
        run("resnet50", top1=76.16, consistency=89.20),
        run("resnet50_aa", top1=77.41, consistency=91.32, p_true_at_0=74.0),
    ]
    return compare(runs, warnings=list(warnings), statistics=statistics)


def embedded_pngs(text: str) -> list[bytes]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    return [base64.b64decode(data) for data in found]


def test_html_report_is_one_self_contained_file(tmp_path):
    comparison = resnets()
    path = tmp_path / "report.html"
    write_report(comparison, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]  # nothing beside it
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    pngs = embedded_pngs(text)
    assert len(pngs) == len(all_plots(comparison)) == 3
    assert text.count('<img src="data:image/png;base64,') == 3
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()  # CSS is inline


def test_html_report_names_runs_warnings_and_values(tmp_path):
    path = tmp_path / "report.html"
    write_report(resnets(), path)
    text = path.read_text(encoding="utf-8")
    assert "resnet50_aa" in text and "resnet50" in text
    assert ">reference<" in text  # the reference run is marked
    # The warning is shown (escaped), in the warnings box, before the results.
    escaped = "weights differ in hash: resnet50_aa.pth &lt;allowed by --allow-mismatch&gt;"
    assert escaped in text
    assert text.index('class="warnings"') < text.index(escaped) < text.index('id="headline"')
    # Values to 2 decimals, signed deltas, statistics with the significance marker.
    assert ">76.16<" in text and ">77.41<" in text
    assert ">+1.25<" in text  # top1 77.41 - 76.16
    assert ">+2.12<" in text  # consistency 91.32 - 89.20
    assert "McNemar: p &lt; 0.001, 95% CI [+0.75, +1.75] *" in text
    assert NO_STATISTICS in text  # rows without a test (wobble, p_true, ...)
    assert "better (McNemar p=0.0004, n=500)" in text  # the headline's verdict


def test_html_report_escapes_user_text(tmp_path):
    runs = [run("<b>base</b>"), run('cand"><img src=x onerror=alert(1)>&co')]
    comparison = compare(runs, warnings=["<script>alert('warned')</script>"])
    path = tmp_path / "report.html"
    write_report(comparison, path)
    text = path.read_text(encoding="utf-8")
    assert "<b>base</b>" not in text
    assert "&lt;b&gt;base&lt;/b&gt;" in text
    assert "<img src=x" not in text
    assert "cand&quot;&gt;&lt;img src=x onerror=alert(1)&gt;&amp;co" in text
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#x27;warned&#x27;)&lt;/script&gt;" in text


def test_report_without_statistics_says_so(tmp_path):
    path = tmp_path / "report.html"
    write_report(resnets(statistics=False, warnings=()), path)
    text = path.read_text(encoding="utf-8")
    assert NO_STATISTICS in text
    assert "No paired statistics for any row" in text
    assert 'class="warnings"' not in text  # no warnings, no box
    assert " *<" not in text


def test_html_report_with_several_candidates(tmp_path):
    runs = [run("base"), run("aa", top1=77.0), run("aa5", top1=75.5)]
    path = tmp_path / "three.html"
    write_report(compare(runs), path)
    text = path.read_text(encoding="utf-8")
    assert '<th colspan="3">aa</th>' in text and '<th colspan="3">aa5</th>' in text
    assert ">-0.50<" in text  # aa5 top1 75.5 - 76.0
    assert ">+1.00<" in text


def test_html_report_with_imagenet_c_plots(tmp_path):
    comparison = compare([imagenet_c("alexnet"), imagenet_c("resnet50", scale=0.8)])
    path = tmp_path / "c.html"
    write_report(comparison, path)
    text = path.read_text(encoding="utf-8")
    assert len(embedded_pngs(text)) == 2  # error curves and CE bars


def test_markdown_report_writes_pngs_beside_it_and_links_them(tmp_path):
    comparison = resnets()
    path = tmp_path / "out" / "my report.md"
    write_report(comparison, path)
    folder = tmp_path / "out" / "my report_files"
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 3
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in pngs)
    text = path.read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 3
    for link in links:
        assert not link.startswith(("/", "http"))
        assert (path.parent / unquote(link)).is_file()
    assert "resnet50 (reference)" in text
    assert "| accuracy | top1 (%) | higher | 76.16 | 77.41 | +1.25 | **better (McNemar" in text
    assert "| top1 | % | higher | 76.16 | 77.41 | +1.25 | McNemar: p \\< 0.001, 95% CI" in text
    assert "95% CI \\[+0.75, +1.75\\] \\* |" in text
    assert "> **⚠ Warnings (1)**" in text
    assert "resnet50_aa.pth \\<allowed by --allow-mismatch\\>" in text
    assert sorted(p.name for p in path.parent.iterdir()) == ["my report.md", "my report_files"]


def test_markdown_report_escapes_table_breaking_text(tmp_path):
    runs = [run("a|b"), run("<i>c</i>")]
    path = tmp_path / "r.md"
    write_report(compare(runs, warnings=["line one\nline | two"]), path)
    text = path.read_text(encoding="utf-8")
    assert "a\\|b" in text and "a|b" not in text.replace("a\\|b", "")
    assert "<i>" not in text and "\\<i\\>c\\</i\\>" in text
    assert "> - line one line \\| two" in text


def test_markdown_report_without_plots_writes_no_folder(tmp_path):
    runs = [run("a", suites=("accuracy",)), run("b", suites=("accuracy",))]
    path = tmp_path / "acc.md"
    write_report(compare(runs), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.md"]
    assert "## Plots" not in path.read_text(encoding="utf-8")


def test_markdown_report_rewrite_drops_its_stale_plots(tmp_path):
    path = tmp_path / "r.md"
    write_report(resnets(), path)
    folder = tmp_path / "r_files"
    mine = folder / "notes.png"  # not a name the report writes: left alone
    mine.write_bytes(b"x")
    shift_only = [run("a", suites=("shift",)), run("b", suites=("shift",))]
    write_report(compare(shift_only), path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "01-random-shift-consistency-and-accuracy.png",
        "notes.png",
    ]


@pytest.mark.parametrize("name", ["report.pdf", "report.txt", "report", "report.html.bak"])
def test_unknown_suffix_is_a_user_error(tmp_path, name):
    with pytest.raises(UserError, match=r"use \.html or \.md"):
        write_report(resnets(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_suffix_is_case_insensitive(tmp_path):
    path = tmp_path / "REPORT.HTML"
    write_report(resnets(), path)
    assert embedded_pngs(path.read_text(encoding="utf-8"))


# --- the reader's order and wording ------------------------------------------------------


def five_suites(**changes):
    """resnet18 against resnet18_aa over accuracy, shift, diagonal, imagenet-c, imagenet-p."""

    def tables(label: str, scale: float) -> RunTables:
        base = run(label, top1=76.0 * scale, consistency=89.0 * scale)
        extra = [imagenet_c(label, scale).table, imagenet_p(label, scale).table]
        return RunTables(label, pd.concat([base.table, *extra], ignore_index=True))

    return compare([tables("resnet18", 1.0), tables("resnet18_aa", 1.01)], **changes)


def section(text: str, suite: str) -> str:
    """The HTML of one suite's full-table section."""
    start = text.index(f"<h3>{suite}</h3>")
    end = text.find("<h3>", start + 1)
    return text[start : end if end > 0 else len(text)]


def headline_rows(text: str) -> list[str]:
    table = text[text.index('<table class="headline">') :]
    return re.findall(r"<tr>.*?</tr>", table[: table.index("</table>")])[1:]


def test_headline_comes_before_the_plots_and_the_full_tables(tmp_path):
    html_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    write_report(five_suites(), html_path)
    write_report(five_suites(), md_path)
    text = html_path.read_text(encoding="utf-8")
    headline, plots, tables = (
        text.index('id="headline"'),
        text.index('id="plots"'),
        text.index('id="tables"'),
    )
    assert headline < text.index('<table class="headline">') < plots < tables
    assert text.index("<img") > plots and text.index("<h3>diagonal</h3>") > tables
    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.index("## Headline") < markdown.index("## Plots") < markdown.index("## Full")
    assert markdown.index("## Plots") < markdown.index("![") < markdown.index("## Full")


def test_headline_holds_each_suites_declared_metrics_in_suite_order(tmp_path):
    path = tmp_path / "r.html"
    write_report(five_suites(), path)
    rows = headline_rows(path.read_text(encoding="utf-8"))
    metrics = [re.findall(r"<td>([a-z0-9_]+) \(", row)[0] for row in rows]
    # accuracy, shift, diagonal, imagenet-c, imagenet-p; imagenet-p unnormalised: its means
    assert metrics == [
        "top1", "top5", "consistency", "accuracy", "accuracy", "wobble", "flips",
        "mce", "mean_flip_prob", "mean_top5_dist",
    ]  # fmt: skip
    assert sum(row.count("rowspan") for row in rows) == 5  # each suite named once


def test_normalised_imagenet_p_leads_with_mfr_and_mt5d(tmp_path):
    runs = [imagenet_p("a"), imagenet_p("b", scale=0.9)]
    for index, one in enumerate(runs):
        extra = pd.DataFrame(
            {
                "suite": "imagenet-p",
                "metric": ["mfr", "mt5d"],
                "value": [80.0 - index, 70.0 - index],
                "unit": "%",
                "higher_is_better": False,
            }
        )
        one.table = pd.concat([one.table, extra], ignore_index=True)
    path = tmp_path / "p.html"
    write_report(compare(runs), path)
    rows = headline_rows(path.read_text(encoding="utf-8"))
    assert [re.findall(r"<td>([a-z0-9_]+) \(", row)[0] for row in rows] == ["mfr", "mt5d"]


def test_every_declared_headline_metric_is_one_of_the_suites_metrics():
    from aabench.suites.registry import BUILTIN

    for suite in BUILTIN.values():
        assert suite.headline, suite.name
        for entry in suite.headline:
            for metric in (entry,) if isinstance(entry, str) else entry:
                assert metric in suite.metrics, (suite.name, metric)


def test_a_suite_without_a_declared_headline_shows_its_overall_rows(tmp_path):
    table = pd.DataFrame(
        {
            "suite": "plugin-suite",
            "metric": ["score", "score", "speed"],
            "level": [None, "hard", None],
            "value": [1.0, 2.0, 3.0],
            "unit": "%",
            "higher_is_better": True,
        }
    )
    comparison = compare([RunTables("a", table), RunTables("b", table.assign(value=[2, 3, 4]))])
    path = tmp_path / "r.html"
    write_report(comparison, path)
    rows = headline_rows(path.read_text(encoding="utf-8"))
    assert [re.findall(r"<td>([a-z]+) \(", row)[0] for row in rows] == ["score", "speed"]


def test_verdicts_in_words_for_better_worse_and_no_significant_difference(tmp_path):
    comparison = resnets(warnings=())
    rows = comparison.rows
    overall = rows["offset"].isna()
    consistency = overall & (rows["metric"] == "consistency")
    rows.loc[consistency, ["p_value", "p_adjusted"]] = 0.41
    rows.loc[consistency, "significant"] = False
    shift_accuracy = overall & (rows["suite"] == "shift") & (rows["metric"] == "accuracy")
    rows.loc[shift_accuracy, ["candidate_value", "delta", "improved"]] = [74.0, -1.16, False]
    path = tmp_path / "v.html"
    write_report(comparison, path)
    rows_html = headline_rows(path.read_text(encoding="utf-8"))
    by_metric = {
        re.findall(r"<td>([a-z0-9_]+) \(", r)[0] + str(i): r for i, r in enumerate(rows_html)
    }
    assert '<td class="verdict better">better (McNemar p=0.0004, n=500)</td>' in by_metric["top10"]
    assert (
        '<td class="verdict same">no significant difference (McNemar p=0.41, n=500)</td>'
        in by_metric["consistency2"]
    )
    assert (
        '<td class="verdict worse">worse (McNemar p=0.0004, n=500)</td>' in by_metric["accuracy3"]
    )
    assert '<td class="num worse">-1.16</td>' in by_metric["accuracy3"]


def test_a_row_without_a_value_says_why(tmp_path):
    note = "needs all 15 corruptions; this run has 4"
    runs = [imagenet_c("alexnet"), imagenet_c("resnet50", scale=0.8)]
    for one in runs:
        mce = one.table["metric"] == "mce"
        one.table.loc[mce, "value"] = float("nan")
        one.table["note"] = None
        one.table.loc[mce, "note"] = note
    html_path, md_path = tmp_path / "c.html", tmp_path / "c.md"
    write_report(compare(runs), html_path)
    write_report(compare(runs), md_path)
    text = html_path.read_text(encoding="utf-8")
    (mce_row,) = [r for r in headline_rows(text) if "<td>mce (%)</td>" in r]
    assert f"not compared ({note})" in mce_row
    assert f"not computed: {note}" in section(text, "imagenet-c")
    markdown = md_path.read_text(encoding="utf-8")
    assert f"not compared ({note})" in markdown and f"not computed: {note}" in markdown


def test_long_tables_are_folded_short_ones_are_not(tmp_path):
    html_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    write_report(resnets(), html_path)
    write_report(resnets(), md_path)
    text = html_path.read_text(encoding="utf-8")
    diagonal = section(text, "diagonal")  # 3 overall + 66 per-offset rows
    assert "<details><summary>all 69 rows of diagonal</summary>" in diagonal
    assert diagonal.index("<details>") < diagonal.index("<table>") < diagonal.index("</details>")
    assert diagonal.count("<tr>") == 1 + 69
    assert "<details>" not in section(text, "accuracy")  # 2 rows
    assert "<details>" not in section(text, "shift")  # 3 rows
    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.count("<details>") == 1
    assert (
        "<details>\n<summary>all 69 rows of diagonal</summary>\n\n| metric | offset |" in markdown
    )


def test_full_tables_say_how_many_tests_and_that_holm_corrects_them(tmp_path):
    comparison = resnets(warnings=())
    rows = comparison.rows
    offset_5 = (rows["metric"] == "accuracy") & (rows["offset"] == 5)
    # Significant alone, not after the correction: no star.
    rows.loc[offset_5, ["p_value", "p_adjusted", "significant"]] = [0.01, 0.33, False]
    path = tmp_path / "r.html"
    write_report(comparison, path)
    diagonal = section(path.read_text(encoding="utf-8"), "diagonal")
    assert (
        "33 per-offset tests of accuracy, Holm-corrected at 5 % within each metric "
        "(* = significant after correction); n = 500 images" in diagonal
    )
    (row,) = [
        r for r in re.findall(r"<tr>.*?</tr>", diagonal) if "<td>accuracy</td><td>5</td>" in r
    ]
    assert "McNemar: p = 0.010 (Holm 0.330)" in row and " *<" not in row
    (row,) = [
        r for r in re.findall(r"<tr>.*?</tr>", diagonal) if "<td>accuracy</td><td>6</td>" in r
    ]
    assert "(Holm 0.013)" in row and " *<" in row
    assert "tests" not in section(path.read_text(encoding="utf-8"), "accuracy").split("</p>")[0]


def test_intervals_print_bounds_that_differ_from_zero(tmp_path):
    comparison = resnets(warnings=())
    top1 = (comparison.rows["metric"] == "top1") & (comparison.rows["suite"] == "accuracy")
    comparison.rows.loc[top1, ["ci_low", "ci_high"]] = [0.004, 0.012]
    path = tmp_path / "r.html"
    write_report(comparison, path)
    text = path.read_text(encoding="utf-8")
    assert "95% CI [+0.0040, +0.0120]" in text
    assert "[0.00, +0.01]" not in text


def test_delta_smaller_than_the_rounding_keeps_its_digits(tmp_path):
    comparison = resnets(warnings=())
    wobble = comparison.rows["metric"] == "wobble"
    comparison.rows.loc[wobble, ["candidate_value", "delta", "improved"]] = [12.5042, 0.0042, False]
    path = tmp_path / "r.html"
    write_report(comparison, path)
    assert '<td class="num worse">+0.0042</td>' in path.read_text(encoding="utf-8")


def test_imagenet_p_report_has_flip_and_top5_distance_plots(tmp_path):
    path = tmp_path / "p.html"
    write_report(compare([imagenet_p("a"), imagenet_p("b", scale=0.9)]), path)
    text = path.read_text(encoding="utf-8")
    assert len(embedded_pngs(text)) == 2
    assert f'alt="{IMAGENET_P_FLIP}"' in text and f'alt="{IMAGENET_P_TOP5}"' in text


def test_css_keeps_tables_inside_the_window(tmp_path):
    path = tmp_path / "r.html"
    write_report(five_suites(), path)
    text = path.read_text(encoding="utf-8")
    css = text[text.index("<style>") : text.index("</style>")]
    rule = {
        name.strip(): body
        for name, body in re.findall(r"([^{}]+)\{([^}]*)\}", css.replace("\n", " "))
    }
    assert "max-width: 100%" in rule[".table-wrap"] and "overflow-x: auto" in rule[".table-wrap"]
    assert "width: 100%" in rule["table"] and "table-layout: auto" in rule["table"]
    assert "overflow-wrap: break-word" in rule["th, td"]
    assert "white-space: nowrap" not in rule["td.stat"]  # statistics and notes wrap
    assert "max-width: 100%" in rule["img"]
    # Every table is in a wrapper that scrolls alone, and statistics cells may wrap.
    assert text.count("<table") == text.count('<div class="table-wrap"><table')
    assert not re.search(r'<td class="num[^"]*">[^<]*(CI|p =|not computed)', text)


def test_unpaired_suites_and_provenance_warnings_come_first(tmp_path):
    runs = [run("resnet18"), run("resnet18_aa")]
    runs[0].provenance = {"warnings": ["random weights: these numbers measure nothing"]}
    runs[1].provenance = {
        "accuracy": {"warnings": ["random weights: these numbers measure nothing"]},
        "shift": {"warnings": ["random weights: these numbers measure nothing"]},
    }
    unpaired = ["imagenet-c: only in runs/resnet18; not compared"]
    already = "resnet18: random weights: these numbers measure nothing"  # compare's own line
    comparison = compare(runs, warnings=[already], unpaired=unpaired)
    html_path, md_path = tmp_path / "r.html", tmp_path / "r.md"
    write_report(comparison, html_path)
    write_report(comparison, md_path)
    text = html_path.read_text(encoding="utf-8")
    headline = text.index('id="headline"')
    # One line for the warning every run has, naming the runs: not one per run and suite.
    both = "resnet18, resnet18_aa: random weights: these numbers measure nothing"
    assert text.count("these numbers measure nothing") == 1
    assert text.index("<h2>&#9888; Warnings (1)</h2>") < text.index(both) < headline
    assert text.index("Not compared (1)") < text.index(unpaired[0]) < headline
    markdown = md_path.read_text(encoding="utf-8")
    assert markdown.index("> **Not compared (1)**") < markdown.index("## Headline")
    assert "> - imagenet-c: only in runs/resnet18; not compared" in markdown
    assert markdown.count("these numbers measure nothing") == 1
