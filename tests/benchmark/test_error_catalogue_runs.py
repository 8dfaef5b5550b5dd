"""Issue 15, the error catalogue continued: interrupted runs and their checkpoints.

One test per defect class: a suite another run is evaluating, checkpoint chunks that do
not check (another run's, edited, damaged), a malformed checkpoint manifest, and a
``--checkpoint-every`` that would turn checkpoints off. Each asserts the exit code, the
one line, no traceback, and that the unfinished run on disk is exactly as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from aabench.checkpoint import PartialRun, SuiteLock, _checksum
from aabench.cli import main
from tests.catalogue import TINY, snapshot, tiny_folder, user_error

MODEL = "resnet18_aa"


def run_args(root: Path, *extra: str, suites: str = "accuracy") -> tuple[str, ...]:
    return (
        "run", *TINY, "--suite", suites, "--data", str(root / "data"), "--batch-size", "1",
        "--checkpoint-every", "0", "--out", str(root / "runs"), *extra,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A data folder of two images and an --out whose accuracy run was stopped by Ctrl-C
    right after its first image was checkpointed."""
    root = tmp_path_factory.mktemp("stopped")
    tiny_folder(root / "data")
    real_save = PartialRun.save

    def save_then_ctrl_c(self, part):
        real_save(self, part)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exited:
        patch.setattr(PartialRun, "save", save_then_ctrl_c)
        main(list(run_args(root)))
    assert exited.value.code == 130
    return root


@pytest.fixture
def unfinished(stopped, tmp_path) -> Path:
    """A copy of ``stopped`` for one test to spoil."""
    return Path(shutil.copytree(stopped, tmp_path / "copy"))


def partial_of(root: Path, suite: str = "accuracy") -> Path:
    return root / "runs" / MODEL / ".partial" / suite


def test_the_stopped_run_left_one_chunk_and_its_manifest(unfinished):
    partial = partial_of(unfinished)
    assert sorted(p.name for p in partial.iterdir()) == [
        "000000000-000000000.r0.npz",
        "manifest.json",
    ]
    assert sorted(p.name for p in partial.parent.iterdir()) == ["accuracy"]  # no lock left


# Defect 1: two runs on one --out shared a suite's checkpoints.


@pytest.mark.parametrize(
    "locked, extra, suites",
    [
        ("accuracy", (), "accuracy"),
        ("accuracy", ("--resume",), "accuracy"),
        ("accuracy", ("--restart",), "accuracy"),
        ("shift", ("--resume",), "accuracy,shift"),  # refused before accuracy runs
    ],
    ids=["fresh", "resume", "restart", "a-later-suite"],
)
def test_a_suite_another_run_is_evaluating_is_refused_naming_that_run(
    cli, unfinished, locked, extra, suites
):
    lock = SuiteLock(partial_of(unfinished, locked))
    lock.acquire()  # as the other run does: its pid, host, start and command
    try:
        holder = json.loads(lock.path.read_text())
        before = snapshot(unfinished / "runs")
        line = user_error(
            cli(*run_args(unfinished, *extra, suites=suites)),
            f"suite {locked} in {unfinished / 'runs' / MODEL} is being run by another aabench",
            f"pid {os.getpid()} on {socket.gethostname()}, started {holder['started']}: aabench",
            f"which holds {lock.path}",
            "wait for it to finish, or stop it",
            "--resume continues it",
            "or pass another --out",
        )
        assert "\\n" not in line  # the holder's command is one short, escaped line
        assert snapshot(unfinished / "runs") == before  # --restart discarded nothing
        with pytest.raises(Exception, match="is being run by another aabench"):
            SuiteLock(lock.directory).refuse_if_held()  # the other run still holds it
    finally:
        lock.release()
    assert not lock.path.exists()


# Defect 2: hand-edited chunks (and chunks of another run) joined the result.


def _rewrite(chunk: Path, edit, checksum: bool = False) -> None:
    with np.load(chunk) as data:
        arrays = {name: data[name] for name in data.files}
    edit(arrays)
    if checksum:  # a forger who also recomputes the checksum
        arrays["checksum"] = np.array(_checksum(arrays))
    with open(chunk, "wb") as out:
        np.savez(out, **arrays)


def _shift_positions(arrays):
    arrays["positions"] = arrays["positions"] + 1
    arrays["record_positions"] = arrays["record_positions"] + 1


def _drop_a_column(arrays):
    columns = list(arrays["columns"])
    last = len(columns) - 1
    del arrays[f"column_{last}"]
    arrays["columns"] = np.array(columns[:last])


def _another_run(arrays):
    # What a run of another seed writes: its own identity, a valid checksum.
    arrays["identity_sha256"] = np.array("0" * 64)


@pytest.mark.parametrize(
    "spoil, words",
    [
        (
            lambda chunk: _rewrite(chunk, _shift_positions),
            "it was changed after it was written (its checksum does not match)",
        ),
        (
            lambda chunk: _rewrite(chunk, _drop_a_column),
            "it was changed after it was written (its checksum does not match)",
        ),
        (
            lambda chunk: _rewrite(chunk, _shift_positions, checksum=True),
            "its records' image paths do not match their positions in this run's data",
        ),
        (
            lambda chunk: _rewrite(chunk, _another_run, checksum=True),
            "it belongs to another run (its identity, e.g. the seed, differs from this run's)",
        ),
        (
            lambda chunk: chunk.write_bytes(chunk.read_bytes()[:100]),
            "is damaged (",
        ),
    ],
    ids=["shifted-positions", "dropped-column", "forged-positions", "another-seed", "truncated"],
)
def test_a_chunk_that_does_not_check_is_refused_on_resume(cli, unfinished, spoil, words):
    (chunk,) = partial_of(unfinished).glob("*.npz")
    spoil(chunk)
    before = snapshot(unfinished / "runs")
    user_error(
        cli(*run_args(unfinished, "--resume")),
        f"checkpoint {chunk} ",
        words,
        "pass --restart to discard the unfinished run",
    )
    assert snapshot(unfinished / "runs") == before


# Defect 3: a malformed manifest was a traceback.


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda m: "[1, 2]", "(a JSON list, not an object)"),
        (lambda m: json.dumps({**m, "identity": "seed 0"}), "its identity is 'seed 0', not"),
        (lambda m: json.dumps({**m, "sessions": 5}), "its sessions are 5, not a list of objects"),
        (lambda m: json.dumps({**m, "format": "2"}), "(format '2'; this aabench reads format 2)"),
        (lambda m: json.dumps({**m, "format": 1}), "(format 1; this aabench reads format 2)"),
        (lambda m: json.dumps(m)[:40], "(not valid JSON: "),
    ],
    ids=["list", "identity-text", "sessions-number", "format-text", "format-1", "truncated"],
)
def test_a_malformed_manifest_is_one_line(cli, unfinished, edit, problem):
    manifest = partial_of(unfinished) / "manifest.json"
    manifest.write_text(edit(json.loads(manifest.read_text())))
    before = snapshot(unfinished / "runs")
    user_error(
        cli(*run_args(unfinished, "--resume")),
        f"checkpoint manifest {manifest} is unreadable ",
        problem,
        "pass --restart to discard the unfinished run",
    )
    assert snapshot(unfinished / "runs") == before


# Defect 4: --checkpoint-every nan (or inf) turned checkpoints off.


@pytest.mark.parametrize(
    "every, words",
    [
        ("nan", "--checkpoint-every must be a finite number, got nan"),
        ("inf", "--checkpoint-every must be a finite number, got inf"),
        ("-1", "--checkpoint-every must be 0 or more, got -1.0"),
    ],
)
def test_a_checkpoint_interval_that_is_not_a_finite_number_of_seconds_is_refused(
    cli, unfinished, every, words
):
    before = snapshot(unfinished / "runs")
    user_error(cli(*run_args(unfinished, "--resume", "--checkpoint-every", every)), words)
    assert snapshot(unfinished / "runs") == before
