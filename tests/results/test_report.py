"""Reports: self-contained HTML, Markdown with PNGs beside it, user text escaped."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

import pytest

from aabench.errors import UserError
from aabench.results.plots import all_plots
from aabench.results.report import NO_STATISTICS, write_report
from tests.results.test_plots import PNG_SIGNATURE, compare, imagenet_c, run

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
    assert text.index('class="warnings"') < text.index(escaped) < text.index("<h2>Results</h2>")
    # Values to 2 decimals, signed deltas, statistics with the significance marker.
    assert ">76.16<" in text and ">77.41<" in text
    assert ">+1.25<" in text  # top1 77.41 - 76.16
    assert ">+2.12<" in text  # consistency 91.32 - 89.20
    assert "mcnemar: p &lt; 0.001, 95% CI [+0.75, +1.75] *" in text
    assert NO_STATISTICS in text  # rows without a test (wobble, p_true, ...)


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
    assert "| accuracy | top1 |" in text
    assert "76.16 | 77.41 | +1.25 | mcnemar: p \\< 0.001, 95% CI \\[+0.75, +1.75\\] \\* |" in text
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
