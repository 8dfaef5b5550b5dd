"""Issue 15, the error catalogue continued: `run`'s arguments and the image data.

One test per defect class (its cases parametrized). Each runs the CLI as a user would
and checks the exit code, the one line (what is wrong, what to do), that there is no
traceback, and what is left on disk: nothing under --out after a refusal, the data set
untouched.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import aabench
from aabench.data.folder import file_path, open_image_folder
from aabench.engine import decode
from aabench.errors import UserError
from tests.catalogue import (
    TINY,
    files_under,
    snapshot,
    tiny_folder,
    unprivileged,
    user_error,
)
from tests.helpers import GOLDFISH, TENCH, Constant

OUTPUTS = ["resnet18_aa/accuracy.csv", "resnet18_aa/accuracy.json"]
OUTPUTS.append("resnet18_aa/accuracy.samples.csv.gz")


def run_args(data: Path, out: Path, *more: str) -> tuple[str, ...]:
    return ("run", *TINY, "--data", str(data), "--out", str(out), *more)


def sample_paths(out: Path) -> list[str]:
    """The ``sample`` column of a run's samples file, as written (first CSV field)."""
    with gzip.open(out / "resnet18_aa" / "accuracy.samples.csv.gz", "rt", encoding="utf-8") as f:
        return [line.split(",", 1)[0] for line in f.read().splitlines()[1:]]


# 1. File names that are not UTF-8 (or hold a backslash) are evaluated and recorded as
# text: an undecodable byte as \xNN, a backslash doubled; the text leads back to the file.


def test_15_file_names_not_utf8_are_evaluated_and_recorded_escaped(cli, tmp_path):
    data = tiny_folder(tmp_path / "val")
    image = (data / TENCH / "img0.png").read_bytes()
    for raw in (b"img\xff.png", b"back\\slash.png", b"lit\\xff.png"):
        Path(os.fsdecode(os.fsencode(data / TENCH) + b"/" + raw)).write_bytes(image)
    out = tmp_path / "runs"

    code, stdout, err = cli(*run_args(data, out, "--suite", "accuracy", "--json"))
    assert code == 0, err
    assert "Traceback" not in err
    recorded = [
        f"{TENCH}/back\\\\slash.png",
        f"{TENCH}/img0.png",
        f"{TENCH}/img\\xff.png",
        f"{TENCH}/lit\\\\xff.png",
        f"{GOLDFISH}/img0.png",
    ]
    assert sample_paths(out) == recorded
    assert json.loads(stdout)[0]["n"] == 5
    # Round trip: each recorded path opens exactly its own file.
    names = {os.fsencode(file_path(text)) for text in recorded}
    assert names == {
        f"{TENCH}/back\\slash.png".encode(),
        f"{TENCH}/img0.png".encode(),
        f"{TENCH}/img".encode() + b"\xff.png",
        f"{TENCH}/lit\\xff.png".encode(),
        f"{GOLDFISH}/img0.png".encode(),
    }
    assert all((data / file_path(text)).is_file() for text in recorded)
    assert files_under(out) == OUTPUTS


# 2. Seeds outside what numpy's and torch's generators take, in run and in the library.


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64)], ids=["negative", "2**63", "2**64"])
def test_15_seed_out_of_range(cli, tmp_path, seed):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "runs"
    user_error(
        cli(*run_args(data, out, "--suite", "shift", "--seed", seed)),
        f"--seed must be in 0 .. 2**63-1, got {seed}",
    )
    assert files_under(out) == []
    with pytest.raises(UserError, match=rf"^seed must be in 0 \.\. 2\*\*63-1, got {seed}$"):
        aabench.evaluate(Constant(), "shift", data, seed=int(seed))
    with pytest.raises(UserError, match=rf"^seed must be in 0 \.\. 2\*\*63-1, got {seed}$"):
        aabench.ShiftConsistency(data=data, seed=int(seed))


# 3. A crop too small for the model's downsampling: refused before the run, naming the
# crop and a size the model was seen to take.


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ("--crop", "16"),
            "--crop 16 is too small for resnet18_aa: its downsampling leaves no pixels of "
            "16 x 16 px views (BlurPool(k=4, reflect) needs feature maps larger than 2 "
            "pixels, got (2, 2)); 64 px views work: give --crop 64",
        ),
        (
            ("--set", "crop_size=8"),
            "--set crop_size=8 is too small for resnet18_aa: its downsampling leaves no "
            "pixels of 8 x 8 px views (BlurPool(k=4, reflect) needs feature maps larger than "
            "2 pixels, got (2, 2)); 64 px views work: give --set crop_size=64",
        ),
    ],
    ids=["crop", "accuracy-crop-size"],
)
def test_15_crop_too_small_for_the_model(cli, tmp_path, args, line):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "runs"
    got = user_error(cli(*run_args(data, out, "--suite", "accuracy", *args)))
    assert got == f"aabench: error: {line}"
    assert files_under(out) == []


# 4. Size-like suite parameters bounded by the suite's geometry (circular shifts fit the
# crop, the image views are cut from at most 4096 px), counts positive and sane (views
# per image, their bytes), floats finite: one line before any image is read.


@pytest.mark.parametrize(
    "suite, assignment, line",
    [
        (
            "shift",
            "max_shift=100000",
            "shift max_shift=100000 makes the image the views are cut from 100224 px "
            "square, more than the 4096 px allowed: give max_shift at most 3872",
        ),
        ("shift", "max_shift=-3", "shift max_shift must be at least 1, got -3"),
        (
            "shift",
            "epochs=100000",
            "shift: these parameters make 200000 views per image, more than the 100000 "
            "allowed: use smaller counts or shifts",
        ),
        (
            "diagonal",
            "max_offset=5000",
            "diagonal max_offset=5000 makes the image the views are cut from 5224 px "
            "square, more than the 4096 px allowed: give max_offset at most 3872",
        ),
        (
            "equivariance",
            "max_shift=200",
            "equivariance: these parameters make 40000 views of 224 x 224 px per image "
            "(5.6 GiB), more than the 2 GiB an image's views may take: use smaller counts "
            "or shifts",
        ),
        (
            "fractional-shift",
            "fraction=nan",
            "fractional-shift fraction must be a finite number, got nan",
        ),
        ("pixel-shift", "scale=inf", "pixel-shift scale must be a finite number, got inf"),
        ("worst-shift", "max_angle=nan", "worst-shift max_angle must be a finite number, got nan"),
        ("worst-shift", "translations=0", "worst-shift translations must be at least 1, got 0"),
        (
            "worst-shift",
            "max_shift=300",
            "worst-shift max_shift=300 is larger than the model's crop (224 px): shifts "
            "must fit in the crop; give at most 224",
        ),
        ("accuracy", "crop_size=100000", "accuracy crop_size must be at most 4096, got 100000"),
    ],
)
def test_15_suite_parameters_bounded(cli, tmp_path, suite, assignment, line):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "runs"
    got = user_error(cli(*run_args(data, out, "--suite", suite, "--set", assignment)))
    assert got == f"aabench: error: {line}"
    assert files_under(out) == []


# 5. Unreadable data roots and class folders (as a user, not root): one line; an
# unreadable image is a bad image (stops the run unless --skip-bad-images).


def _unreadable_root(data: Path) -> tuple[Path, str]:
    return data, f"cannot read data directory {data}: permission denied"


def _unreadable_class(data: Path) -> tuple[Path, str]:
    return data / TENCH, f"cannot read class folder {data / TENCH}: permission denied"


def _unlistable_class(data: Path) -> tuple[Path, str]:
    # Readable but not searchable: its names list, its files cannot be looked at.
    return data / GOLDFISH, f"cannot read class folder {data / GOLDFISH}: permission denied"


@pytest.mark.parametrize(
    "make, mode",
    [(_unreadable_root, 0o000), (_unreadable_class, 0o000), (_unlistable_class, 0o600)],
    ids=["data-root", "class-folder", "class-folder-not-searchable"],
)
def test_15_unreadable_data_folder(tmp_path, make, mode):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "runs"
    target, words = make(data)
    target.chmod(mode)
    try:
        line = user_error(unprivileged(*run_args(data, out, "--suite", "accuracy")), words)
    finally:
        target.chmod(0o755)
    assert line.endswith("make it readable (chmod) or point at a copy you can read")
    assert files_under(out) == []


def test_15_unreadable_image_is_a_bad_image(tmp_path):
    data = tiny_folder(tmp_path / "val")
    image = data / GOLDFISH / "img0.png"
    out = tmp_path / "runs"
    args = run_args(data, out, "--suite", "accuracy")
    image.chmod(0o000)
    try:
        user_error(
            unprivileged(*args),
            f"cannot decode image {image} (permission denied: make it readable (chmod))",
            "--skip-bad-images",
        )
        assert files_under(out) == []
        code, _, err = unprivileged(*args, "--skip-bad-images")
    finally:
        image.chmod(0o644)
    assert code == 0, err
    assert "Traceback" not in err
    provenance = json.loads((out / "resnet18_aa" / "accuracy.json").read_text())
    assert provenance["data"]["skipped_images"] == [
        f"{GOLDFISH}/img0.png: permission denied: make it readable (chmod)"
    ]
    assert files_under(out) == OUTPUTS


# 6. 16-bit PNGs keep their range: a level v becomes v >> 8, whatever the colour type.

LEVELS_16 = np.array([0, 255, 256, 257, 32767, 32768, 0x80FF, 65280, 65535], dtype=np.uint16)
LEVELS_8 = [0, 0, 1, 1, 127, 128, 128, 255, 255]


def png16(path: Path, pixels: np.ndarray) -> Path:
    """A 16-bit PNG of ``pixels`` (H x W x C uint16, C = 1 grey, 2 grey+alpha, 3 RGB,
    4 RGBA), written byte by byte: Pillow cannot write 16-bit colour."""
    height, width, channels = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_15_sixteen_bit_png_keeps_its_range(cli, tmp_path, channels):
    # Channel k holds the levels rotated by k: each channel's own values come through.
    planes = [np.roll(LEVELS_16, k) for k in range(channels)]
    path = png16(tmp_path / "deep.png", np.stack(planes, axis=-1)[None])
    decoded = np.asarray(decode(path))
    assert decoded.shape == (1, 9, 3) and decoded.dtype == np.uint8
    colours = 1 if channels <= 2 else 3  # grey is copied to R, G and B; alpha dropped
    expected = [np.roll(LEVELS_8, k if colours == 3 else 0) for k in range(3)]
    assert decoded[0].T.tolist() == [list(map(int, e)) for e in expected]

    # And a run over a folder of them evaluates them (no clipping, no error).
    data = tmp_path / "val"
    (data / TENCH).mkdir(parents=True)
    png16(data / TENCH / "deep.png", np.full((40, 40, channels), 40000, np.uint16))
    code, _, err = cli(*run_args(data, tmp_path / "runs", "--suite", "accuracy"))
    assert code == 0, err
    assert files_under(tmp_path / "runs") == OUTPUTS


# 7. Names with newlines and escape sequences reach the terminal escaped: the skipped
# images line, the error line, the summary.


def test_15_control_characters_in_names_are_escaped_on_the_terminal(cli, tmp_path):
    data = tiny_folder(tmp_path / "val")
    evil = "evil\n\x1b[2J.png"
    (data / TENCH / evil).write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    out = tmp_path / "runs\x1b[31m"

    line = user_error(cli(*run_args(data, out, "--suite", "accuracy")), "cannot decode image")
    assert "evil\\n\\x1b[2J.png" in line and "\x1b" not in line
    assert files_under(out) == []

    code, stdout, err = cli(*run_args(data, out, "--suite", "accuracy", "--skip-bad-images"))
    assert code == 0, err
    skipped = [text for text in err.splitlines() if text.startswith("aabench: skipped")]
    assert len(skipped) == 1
    assert skipped[0].startswith(
        f'aabench: skipped 1 bad image(s): ["{TENCH}/evil\\n\\x1b[2J.png: '
        "UnidentifiedImageError: cannot identify image file '"
    )
    assert "\x1b" not in err and "\x1b" not in stdout
    # The summary's table path names --out, escaped (rich may wrap the long line).
    assert "runs\\x1b[31m" in stdout.replace("\n", "")
    assert files_under(out) == OUTPUTS


# 8, 9. A suite named twice, a --set key given twice: refused, not run twice or won by
# the last.


@pytest.mark.parametrize(
    "args, line",
    [
        (("--suite", "shift,shift"), "--suite names shift more than once: name each suite once"),
        (
            ("--suite", "accuracy, shift,accuracy"),
            "--suite names accuracy more than once: name each suite once",
        ),
        (
            ("--suite", "shift", "--set", "epochs=1", "--set", "epochs=2"),
            "--set epochs is given twice ('1' and '2'): give each key once",
        ),
        (
            (
                "--suite",
                "shift",
                "--set",
                "max_shift=8",
                "--set",
                "epochs=1",
                "--set",
                "max_shift= 8",
            ),
            "--set max_shift is given twice ('8' and '8'): give each key once",
        ),
    ],
    ids=["suite-twice", "suite-twice-apart", "set-key-twice", "set-key-twice-same-value"],
)
def test_15_named_twice(cli, tmp_path, args, line):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "runs"
    assert user_error(cli(*run_args(data, out, *args))) == f"aabench: error: {line}"
    assert files_under(out) == []


# 10. --out must not be --data, nor lie inside it; the data set must not lie where the
# outputs go.


@pytest.mark.parametrize(
    "where, problem",
    [
        (lambda data: data, "--out {out} is the --data directory"),
        (lambda data: data / "runs", "--out {out} is inside --data {data}"),
        (lambda data: data / TENCH, "--out {out} is inside --data {data}"),
        (
            lambda data: data.parent.parent,
            "--data {data} is inside {out}/resnet18_aa, where the outputs go",
        ),
    ],
    ids=["same", "out-inside-data", "out-inside-a-class", "data-inside-the-model-folder"],
)
def test_15_out_and_data_overlap(cli, tmp_path, where, problem):
    data = tiny_folder(tmp_path / "resnet18_aa" / "val")
    before = snapshot(tmp_path)
    out = where(data)
    line = user_error(cli(*run_args(data, out, "--suite", "accuracy")))
    assert line == (
        f"aabench: error: {problem.format(out=out, data=data)}: outputs must not mix with "
        "the images; choose another --out"
    )
    assert snapshot(tmp_path) == before


def test_15_out_beside_data_is_fine(cli, tmp_path):
    data = tiny_folder(tmp_path / "val")
    out = tmp_path / "val-runs"  # a sibling whose name starts with the data's
    code, _, err = cli(*run_args(data, out, "--suite", "accuracy"))
    assert code == 0, err
    assert files_under(out) == OUTPUTS
    assert len(open_image_folder(data)) == 2
