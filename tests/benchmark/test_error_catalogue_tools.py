"""Issue 15, the error catalogue continued: `bench` and `make-imagenet-c`.

One test per defect class (its cases parametrized). Each runs the command as a user
would and checks the exit code, the one line (what is wrong, what to do), that there is
no traceback, and what is left on disk: no partial or temporary file, every file
finished earlier intact, and the same command, rerun, finishing the set byte for byte as
an uninterrupted run does.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aabench.cli.app import Terminated
from aabench.data import make_imagenet_c as module
from aabench.data.make_imagenet_c import MANIFEST
from tests.catalogue import files_under, tiny_folder, unprivileged, user_error

CORRUPTIONS = "gaussian_noise,impulse_noise,brightness"
CELLS = ("gaussian_noise/1", "gaussian_noise/3", "impulse_noise/1", "impulse_noise/3")
CELLS += ("brightness/1", "brightness/3")
FILES = 12  # 2 images x 6 cells
RERUN = "rerun the same command to continue (finished files are checked and skipped)"
BENCH = ("bench", "--model", "resnet18_aa", "--weights", "none", "--device", "cpu")
BENCH += ("--workers", "0", "--images", "1", "--seconds", "0.01", "--set", "epochs=1")


def generate_args(data: Path, out: Path, workers: int = 0) -> list[str]:
    return [
        "make-imagenet-c",
        "--data",
        str(data),
        "--out",
        str(out),
        "--corruptions",
        CORRUPTIONS,
        "--severities",
        "1,3",
        "--workers",
        str(workers),
        "--quiet",
    ]


def cell_hashes(out: Path) -> dict[str, str]:
    """Every generated file (temporaries included) by its SHA-256; not the manifest."""
    return {
        name: hashlib.sha256((out / name).read_bytes()).hexdigest()
        for name in files_under(out)
        if name != MANIFEST
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_folder(tmp_path_factory.mktemp("val"))


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict[str, str]:
    """The files of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "c"
    module.make_imagenet_c(
        data,
        out,
        corruptions=tuple(CORRUPTIONS.split(",")),
        severities=(1, 3),
        workers=0,
        quiet=True,
    )
    hashes = cell_hashes(out)
    assert len(hashes) == FILES
    return hashes


def assert_rerun_finishes(cli, data: Path, out: Path, reference: dict[str, str]) -> None:
    """Whatever a stopped run left is a part of the reference, and the same command
    keeps it untouched (not rewritten) and writes exactly the rest."""
    left = cell_hashes(out)
    assert all(reference.get(name) == digest for name, digest in left.items()), left
    times = {name: (out / name).stat().st_mtime_ns for name in left}
    code, stdout, err = cli(*generate_args(data, out))
    assert code == 0, err
    assert f"{FILES - len(left)} file(s) written, {len(left)} kept" in stdout
    assert cell_hashes(out) == reference
    assert {name: (out / name).stat().st_mtime_ns for name in left} == times


# 1. bench: a number that measures nothing, or that the machine cannot hold.

BENCH_CASES = [
    (("--seconds", "0"), ("--seconds must be more than 0, got 0.0", "time budget")),
    (("--seconds", "-1"), ("--seconds must be more than 0, got -1.0",)),
    (("--seconds", "nan"), ("--seconds must be a finite number, got nan",)),
    (("--seconds", "inf"), ("--seconds must be a finite number, got inf",)),
    (("--images", "0"), ("--images must be 1 or more, got 0", "caps the images")),
    (("--images", "-3"), ("--images must be 1 or more, got -3",)),
    (("--images", "10000000000"), ("--images must be at most 1000000, got 10000000000",)),
    (("--batch-size", "0"), ("--batch-size must be 1 or more, got 0",)),
    (("--workers", "-1"), ("--workers must be 0 or more, got -1",)),
    (("--workers", "100000"), ("--workers must be at most", "got 100000", "a process")),
    (
        ("--batch-size", "100000000000"),
        ("--batch-size 100000000000 is too large for cpu", "choose a smaller --batch-size"),
    ),
]


@pytest.mark.parametrize("args, words", BENCH_CASES, ids=["=".join(a) for a, _ in BENCH_CASES])
def test_15_bench_refuses_numbers_that_measure_nothing(cli, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    user_error(cli(*BENCH, *args), *words)
    assert files_under(tmp_path) == []


# 2. make-imagenet-c on a full disk or a destination it may not write: one line naming
# the file and what to do; no partial file; what was finished before is intact.


def test_15_make_imagenet_c_disk_full(cli, data, reference, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real, calls = module._write_bytes, []

    def fill_the_disk_at_the_fifth(path: Path, payload: bytes) -> None:
        calls.append(path)
        if len(calls) == 5:
            path.write_bytes(payload[: len(payload) // 2])  # the disk fills mid-file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, payload)

    monkeypatch.setattr(module, "_write_bytes", fill_the_disk_at_the_fifth)
    line = user_error(
        cli(*generate_args(data, out)),
        f"cannot write {out}/",
        ".JPEG: no space left on device; free space there or choose --out on another disk",
        f"the files already written are whole and kept: {RERUN}",
    )
    assert len(calls) == 5
    assert line.count(str(out)) == 1
    assert len(cell_hashes(out)) == 4  # the four finished; no temporary, no half file
    monkeypatch.setattr(module, "_write_bytes", real)
    assert_rerun_finishes(cli, data, out, reference)


@pytest.mark.parametrize("where", ["out", "cell"])
def test_15_make_imagenet_c_unwritable_destination(cli, data, reference, tmp_path, where):
    out = tmp_path / "c"
    if where == "cell":  # an earlier run finished every file but one; its folder is read-only
        code, _, err = cli(*generate_args(data, out))
        assert code == 0, err
        victim = out / "impulse_noise" / "3" / files_under(out / "impulse_noise" / "3")[0]
        victim.unlink()
        locked, failed = victim.parent, victim
    else:  # an empty --out the user may not write in
        out.mkdir()
        locked, failed = out, out / MANIFEST
    before = cell_hashes(out)
    locked.chmod(0o555)
    try:
        result = unprivileged(*generate_args(data, out))
    finally:
        locked.chmod(0o755)
    line = user_error(result, f"cannot write {failed}", "ermission denied")
    assert ("chmod" in line or "writable" in line) and "--out" in line
    assert cell_hashes(out) == before
    assert_rerun_finishes(cli, data, out, reference)


def test_15_make_imagenet_c_read_only_file_system(cli, data, tmp_path, monkeypatch):
    out = tmp_path / "mounted" / "c"

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    user_error(
        cli(*generate_args(data, out)),
        f"cannot write {out}: read-only file system; choose --out on a writable disk",
    )
    monkeypatch.undo()
    assert not (tmp_path / "mounted").exists()


# 3. make-imagenet-c stopped by Ctrl-C or SIGTERM: one line of its own (it has no
# --resume: the same command continues), no worker output, no partial file.

# Loaded by every Python process of the subprocess (main, fork server, workers): each
# cell then takes a while (so a signal lands mid-run) or a worker dies outright.
SITECUSTOMIZE = """
import multiprocessing, os, signal, time
fault = os.environ.get("AABENCH_TEST_CELLS")
if fault:
    from aabench.data import make_imagenet_c as module

    real = module.corrupt

    def corrupt(image, corruption, severity, seed):
        if fault == "slow":
            time.sleep(0.25)
        elif fault == "kill" and multiprocessing.parent_process() and corruption == "brightness":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(image, corruption, severity, seed)

    module.corrupt = corrupt
"""


def start_faulty(data: Path, out: Path, workers: int, fault: str, tmp_path: Path):
    hooks = tmp_path / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "aabench", *generate_args(data, out, workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path, "AABENCH_TEST_CELLS": fault},
        start_new_session=True,  # its own process group, as a terminal's job
    )


def wait_for_a_file(process: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(name.endswith(".JPEG") for name in files_under(out)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no file written"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "signum, workers, code, word",
    [
        (signal.SIGINT, 2, 130, "interrupted"),
        (signal.SIGTERM, 2, 143, "terminated (SIGTERM)"),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_15_make_imagenet_c_workers_stopped_say_how_to_continue(
    cli, data, reference, tmp_path, signum, workers, code, word
):
    out = tmp_path / "c"
    process = start_faulty(data, out, workers, "slow", tmp_path)
    wait_for_a_file(process, out)
    os.killpg(process.pid, signum)  # the whole group, as Ctrl-C in a terminal, or Slurm
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr
    assert stderr == (
        f"aabench: {word}: make-imagenet-c stopped; the files already written under {out} "
        f"are whole and kept: {RERUN}\n"
    )
    assert stdout == ""
    assert 1 <= len(cell_hashes(out)) < FILES
    assert_rerun_finishes(cli, data, out, reference)


@pytest.mark.parametrize(
    "stop, code, word",
    [(KeyboardInterrupt, 130, "interrupted"), (Terminated, 143, "terminated (SIGTERM)")],
    ids=["ctrl-c", "sigterm"],
)
def test_15_make_imagenet_c_stopped_in_process(
    cli, data, reference, tmp_path, monkeypatch, stop, code, word
):
    # Without workers the signal lands in the main process, mid-cell: Ctrl-C raises
    # KeyboardInterrupt there, SIGTERM the CLI's Terminated.
    out = tmp_path / "c"
    real, calls = module.corrupt, []

    def stopped_at_the_third(*args):
        calls.append(args)
        if len(calls) == 3:
            raise stop
        return real(*args)

    monkeypatch.setattr(module, "corrupt", stopped_at_the_third)
    assert cli(*generate_args(data, out)) == (
        code,
        "",
        f"aabench: {word}: make-imagenet-c stopped; the files already written under {out} "
        f"are whole and kept: {RERUN}\n",
    )
    assert len(cell_hashes(out)) == 2
    monkeypatch.setattr(module, "corrupt", real)
    assert_rerun_finishes(cli, data, out, reference)


# 4. A worker that dies (killed, out of memory) breaks the pool at once: one line, exit 3
# (not the user's input), no hang where multiprocessing.Pool waited forever.


def test_15_make_imagenet_c_dead_worker_is_one_line_not_a_hang(cli, data, reference, tmp_path):
    out = tmp_path / "c"
    process = start_faulty(data, out, 2, "kill", tmp_path)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    # The killed worker, or a sibling that the broken pool ended first (exit code 255):
    # which death the pool reports first is a race; either is named, in one line.
    assert re.fullmatch(
        r"aabench: error: a make-imagenet-c worker process died \((killed by SIGKILL|exit "
        r"code \d+): out of memory, or killed from outside\); the files already written are "
        rf"whole and kept: {re.escape(RERUN)}\n",
        stderr,
    ), stderr
    assert stdout == ""
    left = cell_hashes(out)
    assert left and not any(name.startswith("brightness/") for name in left)
    assert_rerun_finishes(cli, data, out, reference)
