"""ImageNet-C's released decode path on a GPU: nvJPEG against PIL, end to end.

Makes a released-layout set of the embedded sample images (`aabench make-imagenet-c`),
cycles it to ``--copies`` copies of each image (links: the same files under new names),
runs the imagenet-c suite once per decoder, and prints as JSON: each run's rate (from
its provenance, and its wall time), the top-1 agreement of the two runs' records, the
refusal `aabench compare` gives them, and how nvJPEG's pixels differ from PIL's over
every distinct cell file.

    python tools/imagenet_c_decoders.py --copies 100 --json figures.json

The weights are random (the machine has no network): agreement counts how often the
decoders' differences flip a prediction of that model, not of a trained one.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from aabench.data.folder import sample_root

DECODERS = ("pil", "nvjpeg")


def aabench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aabench", *args], capture_output=True, text=True, check=False
    )


def checked(*args: str) -> None:
    done = aabench(*args)
    if done.returncode:
        sys.exit(f"aabench {args[0]} failed ({done.returncode}): {done.stderr.strip()}")


def cycled(sample: Path, tree: Path, work: Path, copies: int) -> tuple[Path, Path]:
    """``copies`` links to each val image and to each of its cell files, under new names."""
    val, released = work / "val", work / "released"
    for image in sorted(p for p in sample.glob("*/*") if p.suffix != ".md"):
        for k in range(copies):
            link = val / image.parent.name / f"{image.stem}_{k}{image.suffix}"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image.resolve())
    for cell_file in sorted(tree.glob("*/*/*/*.JPEG")):
        relative = cell_file.relative_to(tree)
        for k in range(copies):
            link = released / relative.parent / f"{cell_file.stem}_{k}.JPEG"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(cell_file.resolve())
    return val, released


def run(args, val: Path, released: Path, out: Path, decoder: str) -> dict:
    start = time.perf_counter()
    checked(
        "run", "--model", args.model, "--weights", "none", "--suite", "imagenet-c",
        "--data", str(val), "--imagenet-c", str(released), "--out", str(out),
        "--device", "cuda", "--amp", args.amp, "--batch-size", str(args.batch_size),
        "--set", f"decoder={decoder}", "--quiet",
    )  # fmt: skip
    wall = time.perf_counter() - start
    provenance = json.loads((out / args.model / "imagenet-c.json").read_text())
    return {
        "decoder": provenance["parameters"]["decoder"],
        "images": provenance["n"],
        "views": provenance["views"],
        "seconds": provenance["seconds"],
        "images_per_second": provenance["images_per_second"],
        "views_per_second": provenance["views_per_second"],
        "wall_seconds_with_start": wall,
    }


def records(out: Path, model: str) -> pd.DataFrame:
    data = gzip.decompress((out / model / "imagenet-c.samples.csv.gz").read_bytes())
    return pd.read_csv(io.BytesIO(data)).set_index(["sample", "view"]).sort_index()


def agreement(pil: pd.DataFrame, nvjpeg: pd.DataFrame) -> dict:
    same = pil["pred"] == nvjpeg["pred"]
    clean = pil["corruption"] == "clean"
    return {
        "top1_agreement_cells": float(same[~clean].mean()),
        "top1_agreement_clean": float(same[clean].mean()),  # PIL in both: 1.0
        "top1_error_pil": float(1 - pil["correct"][~clean].mean()),
        "top1_error_nvjpeg": float(1 - nvjpeg["correct"][~clean].mean()),
    }


def pixel_difference(tree: Path) -> dict:
    """nvJPEG (one batched call) against PIL over every distinct cell file."""
    files = sorted(tree.glob("*/*/*/*.JPEG"))
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    torch.cuda.synchronize()
    start = time.perf_counter()
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    levels = []
    for path, tensor in zip(files, decoded, strict=True):
        pil = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
        levels.append(np.abs(tensor.permute(1, 2, 0).cpu().numpy().astype(np.int16) - pil))
    levels = np.stack(levels)
    counts = np.bincount(levels.ravel())
    return {
        "files": len(files),
        "mean_levels": float(levels.mean()),
        "max_levels": int(levels.max()),
        "fraction_differing": float((levels > 0).mean()),
        "levels_histogram": {int(d): int(n) for d, n in enumerate(counts) if n},
        "files_per_second_one_call": len(files) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=100, help="copies of each sample image")
    parser.add_argument("--model", default="resnet50_aa")
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes of make-imagenet-c (the runs keep run's default workers)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imagenet-c-decoders-"))
    tree = work / "tree"
    start = time.perf_counter()
    checked(
        "make-imagenet-c", "--data", str(sample_root()), "--out", str(tree),
        "--workers", str(args.workers), "--quiet",
    )  # fmt: skip
    figures = {"make_imagenet_c_seconds": time.perf_counter() - start, "copies": args.copies}
    val, released = cycled(sample_root(), tree, work, args.copies)
    outs = {decoder: work / f"runs-{decoder}" for decoder in DECODERS}
    figures["runs"] = {d: run(args, val, released, outs[d], d) for d in DECODERS}
    figures.update(agreement(*(records(outs[d], args.model) for d in DECODERS)))
    tables = [str(outs[d] / args.model / "imagenet-c.csv") for d in DECODERS]
    refusal = aabench("compare", *tables)
    figures["compare_without_allow_mismatch"] = {
        "exit": refusal.returncode,
        "stderr": refusal.stderr.strip(),
    }
    figures["pixels"] = pixel_difference(tree)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
