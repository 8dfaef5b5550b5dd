"""The CPU benchmark figures of the README ("Performance"), each a ratio from one run.

    python tools/cpu_figures.py --json cpu-figures.json

1. The shift suite end to end against forward-only, and each anti-aliased model's
   forward against its baseline's beside the FLOP ratio F (`aabench bench`, resnet18_aa
   and resnet50_aa, batch 16, random weights, the embedded images cycled).
2. `aabench run --suite shift` against the reference repository's loop
   (tools/reference_loop.py, --passes 5: the same 10 views per image) on the same
   images, in interleaved rounds; each side's rate is its own evaluation loop's views
   per second (model building and start-up excluded on both).
3. ImageNet-C end to end against forward-only, reading a released-layout tree written
   by `aabench make-imagenet-c` from the embedded images (the decoding path of the
   released set; noise and digital corruptions only, which are quick to generate).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "benchmark" / "data" / "sample"


def cycled_folder(root: Path, images: int) -> Path:
    """An ImageFolder of ``images`` files: the embedded images copied in turn."""
    sources = sorted(p for p in SAMPLE.glob("n*/*") if p.is_file())  # <wnid>/<image>
    for i in range(images):
        source = sources[i % len(sources)]
        target = root / source.parent.name / f"{i:04d}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return root


def aabench(*args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "aabench", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"aabench {' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def bench(model: str, suite: str, data: Path, args, *extra: str) -> dict:
    return aabench(
        "bench", "--model", model, "--weights", "none", "--suite", suite, "--data", str(data),
        "--batch-size", "16", "--images", str(args.images), "--seconds", str(args.seconds),
        "--json", *extra,
    )  # fmt: skip


def shift_run_rate(data: Path, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    aabench(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "shift",
        "--data", str(data), "--batch-size", "16", "--out", str(out), "--quiet", "--json",
    )  # fmt: skip
    provenance = json.loads((out / "resnet18_aa" / "shift.json").read_text())
    return provenance["views_per_second"]


def reference_rate(data: Path) -> float:
    tool = Path(__file__).with_name("reference_loop.py")
    result = subprocess.run(
        [sys.executable, str(tool), "--data", str(data), "--batch-size", "16", "--passes", "5"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)["views_per_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="budget of each bench")
    parser.add_argument("--images", type=int, default=64, help="the sample images cycled")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    figures: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        data = cycled_folder(root / "val", args.images)
        for model in ("resnet18_aa", "resnet50_aa"):
            report = bench(model, "shift", data, args)
            figures[f"bench shift {model}"] = report
            print(
                f"{model}: shift e2e/forward {report['end_to_end_over_forward']:.3f}, "
                f"forward/baseline {report['forward_over_baseline']:.3f} "
                f"(F {report['flop_ratio']:.3f}: "
                f"{report['forward_over_baseline_of_flop_ratio']:.3f} F), "
                f"bottleneck {report['end_to_end_bottleneck']}",
                flush=True,
            )
        rounds = []
        for _ in range(args.rounds):
            ours = shift_run_rate(data, root / "runs")
            theirs = reference_rate(data)
            rounds.append({"aabench": ours, "reference": theirs, "ratio": ours / theirs})
            print(f"shift run {ours:.2f} views/s, reference loop {theirs:.2f}", flush=True)
        figures["shift against the reference loop"] = {
            "rounds": rounds,
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
        }
        print(f"aabench / reference loop: {figures['shift against the reference loop']}")
        # 16 images corrupted (the bench cycles them to 64).
        small, tree = cycled_folder(root / "val16", min(16, args.images)), root / "imagenet-c"
        subprocess.run(
            [sys.executable, "-m", "aabench", "make-imagenet-c", "--data", str(small),
             "--out", str(tree), "--corruptions", "noise,digital", "--quiet"],
            check=True, capture_output=True,
        )  # fmt: skip
        report = bench(
            "resnet18_aa", "imagenet-c", small, args, "--imagenet-c", str(tree),
            "--set", "corruptions=noise,digital", "--baseline", "none",
        )  # fmt: skip
        figures["bench imagenet-c resnet18_aa"] = report
        print(
            f"imagenet-c e2e/forward {report['end_to_end_over_forward']:.3f}, "
            f"bottleneck {report['end_to_end_bottleneck']}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
