"""Screenshot a comparison report in headless Chromium and measure whether it overflows.

    python tools/screenshot_report.py runs/resnet18 runs/resnet18_aa --out shots
    python tools/screenshot_report.py --out shots          # synthetic tables
    python tools/screenshot_report.py --report report.html --out shots

Writes ``report.html`` (unless ``--report`` names one), ``report-1280x800.png`` and
``report-1920x1080.png`` into ``--out``, and prints per window size the document's
scroll width against the window's, every element wider than the window, and where the
headline table ends (it must end above the fold). Exit 1 when anything overflows or the
headline is below the fold. Needs a Chromium (``apt-get install chromium``) and nothing
from the network; ``--chromium PATH`` picks another binary.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = ((1280, 800), (1920, 1080))

# Runs in the page after layout and writes its findings into the DOM, where
# --dump-dom reads them: the measurements need no DevTools protocol and no driver.
_PROBE = """
<script id="aabench-probe">
window.addEventListener("load", function () {
  var width = document.documentElement.clientWidth;
  var wide = [];
  document.querySelectorAll("body *").forEach(function (el) {
    var box = el.getBoundingClientRect();
    if (box.right > width + 1 && !el.closest(".table-wrap")) {
      wide.push(el.tagName.toLowerCase() + (el.className ? "." + el.className : "") +
                " right=" + Math.round(box.right));
    }
  });
  var wraps = [];
  document.querySelectorAll(".table-wrap").forEach(function (el) {
    if (el.scrollWidth > el.clientWidth + 1) { wraps.push(el.scrollWidth - el.clientWidth); }
  });
  var headline = document.querySelector("table.headline");
  var result = {
    window: width,
    document: document.documentElement.scrollWidth,
    wide: wide.slice(0, 20),
    scrolling_tables: wraps.length,
    headline_bottom: headline ? Math.round(headline.getBoundingClientRect().bottom) : null
  };
  var out = document.createElement("pre");
  out.id = "aabench-measure";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories; the first is the reference")
    parser.add_argument("--report", type=Path, help="screenshot this report instead")
    parser.add_argument("--out", type=Path, required=True, help="folder for report and PNGs")
    parser.add_argument("--chromium", default=None, help="Chromium binary")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    chromium = args.chromium or next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    if chromium is None:
        print("no Chromium found: apt-get install chromium, or pass --chromium PATH")
        return 2

    report = args.report or args.out / "report.html"
    if args.report is None:
        build_report(args.runs, report)
    failed = False
    for width, height in SIZES:
        png = args.out / f"report-{width}x{height}.png"
        screenshot(chromium, report, png, width, height)
        found = measure(chromium, report, width, height)
        fold = found["headline_bottom"]
        overflow = found["document"] > found["window"] or found["wide"]
        below = fold is None or fold > height
        failed = failed or bool(overflow) or below
        print(
            f"{width}x{height}: document {found['document']} px in a {found['window']} px "
            f"window; {len(found['wide'])} elements wider than the window; "
            f"{found['scrolling_tables']} tables scroll in their wrapper; headline ends at "
            f"{fold} px ({'above' if not below else 'BELOW'} the fold); {png}"
        )
        for element in found["wide"]:
            print(f"  too wide: {element}")
    return 1 if failed else 0


def build_report(runs: list[str], path: Path) -> None:
    """The report of ``runs`` exactly as `aabench compare` writes it, or of synthetic
    tables."""
    if runs:
        command = [sys.executable, "-m", "aabench", "compare", *runs, "--out", str(path)]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return
    from aabench.results.report import write_report

    write_report(synthetic_comparison(), path)


def synthetic_comparison():
    """Five suites of two fake runs, their rows shaped like compare's (for a first look
    without running a model)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pandas as pd

    from tests.results.test_plots import compare, imagenet_c, imagenet_p, run

    def tables(label: str, scale: float):
        base = run(label, top1=76.0 * scale, consistency=89.0 * scale)
        return type(base)(
            label,
            pd.concat(
                [base.table, imagenet_c(label, scale).table, imagenet_p(label, scale).table],
                ignore_index=True,
            ),
        )

    return compare(
        [tables("resnet18", 1.0), tables("resnet18_aa", 1.01)],
        warnings=["resnet18: random weights: these numbers measure nothing"],
    )


def screenshot(chromium: str, report: Path, png: Path, width: int, height: int) -> None:
    _chromium(
        chromium,
        [f"--screenshot={png}", f"--window-size={width},{height}", report.resolve().as_uri()],
    )


def measure(chromium: str, report: Path, width: int, height: int) -> dict:
    """Layout facts of ``report`` in a ``width`` x ``height`` window (see _PROBE)."""
    text = report.read_text(encoding="utf-8")
    probed = text.replace("</body>", _PROBE + "</body>", 1)
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "probe.html"
        page.write_text(probed, encoding="utf-8")
        dom = _chromium(
            chromium,
            [
                f"--window-size={width},{height}",
                "--virtual-time-budget=5000",
                "--dump-dom",
                page.as_uri(),
            ],
        )
    found = re.search(r'<pre id="aabench-measure">(.*?)</pre>', dom, re.DOTALL)
    if found is None:
        raise SystemExit("the measuring script did not run: is JavaScript disabled?")
    return json.loads(html.unescape(found.group(1)))


def _chromium(chromium: str, arguments: list[str]) -> str:
    command = [
        chromium,
        "--headless",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        *arguments,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise SystemExit(f"chromium failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


if __name__ == "__main__":
    sys.exit(main())
