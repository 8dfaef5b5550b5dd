"""Fault injection: a real `aabench run` on two decoding workers, stopped by SIGTERM,
SIGINT and SIGKILL at seeded random points and resumed until it finishes, writes exactly
the files of an uninterrupted run; and a second run on the same --out, while the first
holds the suite's lock, is refused with the first named, and the first still finishes.

The model sleeps in every forward pass, so a run lasts a few seconds without using the
CPU, and a signal can land anywhere in it: between batches, in a forward pass, while a
chunk or the final outputs are written.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aabench.cli import main
from aabench.distributed import _stop_once
from aabench.runner import TIMING_FIELDS
from tests.catalogue import snapshot, user_error
from tests.helpers import GOLDFISH, TENCH, noise_folder

SEED = 15
IMAGES_PER_CLASS = 32
SLOW_MODEL = """
import time

import torch
from torch import nn


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.head = nn.Linear(4 * 8 * 8, 1000)

    def forward(self, x):
        time.sleep(0.04)
        return self.head(torch.relu(self.conv(x)).flatten(1))


def slow():
    return Slow(), {"resize": 40, "crop": 32}
"""
MODEL = "slow"
OUTPUTS = ("shift.csv", "shift.samples.csv.gz")
# Provenance entries that say how this session ran, not what was measured.
SESSION_FIELDS = (*TIMING_FIELDS, "command", "resumed_images", "earlier_sessions")
# (signal, sent to the main process alone or to its whole process group, as Slurm and
# a terminal's Ctrl-C do); the run is resumed after each.
KILLS = [
    (signal.SIGTERM, "main"),
    (signal.SIGINT, "group"),
    (signal.SIGKILL, "group"),
    (signal.SIGTERM, "group"),
    (signal.SIGINT, "main"),
]
LAST_LINES = {
    signal.SIGTERM: (143, "aabench: terminated (SIGTERM): "),
    signal.SIGINT: (130, "aabench: interrupted: "),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """The slow model's file, 64 noise images, and an uninterrupted run of them."""
    root = tmp_path_factory.mktemp("faults")
    (root / "slow_model.py").write_text(SLOW_MODEL)
    shapes = [(48, 48)] * IMAGES_PER_CLASS
    noise_folder(root / "data", {TENCH: shapes, GOLDFISH: shapes})
    with pytest.raises(SystemExit) as exited:
        main(list(arguments(root, root / "reference")))
    assert exited.value.code in (0, None)
    return root


def arguments(root: Path, out: Path, *extra: str) -> tuple[str, ...]:
    return (
        "run", "--model", f"python:{root / 'slow_model.py'}:slow", "--suite", "shift",
        "--set", "mode=circular", "--set", "epochs=1", "--data", str(root / "data"),
        "--workers", "2", "--batch-size", "4", "--checkpoint-every", "0", "--device", "cpu",
        "--quiet", "--out", str(out), *extra,
    )  # fmt: skip


# Forks runs on request, from a process that has imported torch and aabench once and
# runs nothing else: its runs start evaluating at once (a fresh interpreter spends
# seconds importing, each time), and, being single-threaded, it forks safely (a fork of
# the test process, with its threads, can deadlock in the child).
FORK_SERVER = """
import json, os, sys, traceback
from aabench.cli import main
import aabench.runner  # torch, the engine, the suites

for line in sys.stdin:
    argv, logs = json.loads(line)
    pid = os.fork()
    if pid == 0:  # what `python -m aabench` runs, leading its own process group
        code = 70
        try:
            os.setpgid(0, 0)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, suffix in ((1, ".out"), (2, ".err")):
                os.dup2(os.open(logs + suffix, os.O_WRONLY | os.O_CREAT, 0o644), fd)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            sys.argv = ["aabench", *argv]
            main(argv)
            code = 0
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else int(exited.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class ForkServer:
    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def start(self, argv: tuple[str, ...], logs: Path) -> int:
        self.process.stdin.write(json.dumps([list(argv), str(logs)]) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def status(self) -> int | None:
        """The exit code of the run it forked last, once it has ended."""
        ready, _, _ = select.select([self.process.stdout], [], [], 0)
        return int(self.process.stdout.readline()) if ready else None

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


class Run:
    """`aabench run` in a process of its own, leading a process group (it and its
    decoding workers): started as ``python -m aabench``, or by the fork server."""

    def __init__(self, root: Path, out: Path, *extra: str, server: ForkServer | None = None):
        argv = arguments(root, out, *extra)
        self.logs = out.parent / f"log{time.monotonic_ns()}"
        self.server = server
        self.process = None if server else _interpreter(root, argv)
        self.pid = server.start(argv, self.logs) if server else self.process.pid
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            self.status = self.server.status() if self.server else self.process.poll()
        return self.status

    def send(self, number: int, target: str = "main") -> None:
        (os.killpg if target == "group" else os.kill)(self.pid, number)

    def wait(self, seconds: float) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); a run still going after ``seconds`` is killed."""
        deadline = time.monotonic() + seconds
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.poll() is None:
            self.send(signal.SIGKILL, "group")
            while self.poll() is None:
                time.sleep(0.01)
        if self.server is None:
            stdout, stderr = self.process.communicate()
        else:
            stdout, stderr = (Path(f"{self.logs}{s}").read_text() for s in (".out", ".err"))
        return self.status, stdout, stderr

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        if self.poll() is None:  # the test failed part way: leave no run behind
            self.wait(0)


def _interpreter(root: Path, argv: tuple[str, ...]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aabench", *argv],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def server():
    server = ForkServer()
    yield server
    server.close()


def chunks(out: Path) -> set[str]:
    partial = out / MODEL / ".partial" / "shift"
    return {path.name for path in partial.glob("*.npz")}


def checkpointed(out: Path) -> set[int]:
    partial = out / MODEL / ".partial" / "shift"
    return {int(p) for name in chunks(out) for p in np.load(partial / name)["positions"]}


def wait_for_a_new_chunk(process: Run, out: Path, before: set[str]) -> None:
    deadline = time.monotonic() + 120
    while not chunks(out) - before and process.poll() is None:
        assert time.monotonic() < deadline, "the run wrote no checkpoint"
        time.sleep(0.005)


def group_gone(process: Run, seconds: float = 15) -> bool:
    """Whether every process of the run's group (its workers) has ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def outputs(out: Path) -> dict[str, bytes]:
    return {name: (out / MODEL / name).read_bytes() for name in OUTPUTS}


def measurement(out: Path) -> dict:
    provenance = json.loads((out / MODEL / "shift.json").read_text())
    return {key: value for key, value in provenance.items() if key not in SESSION_FIELDS}


def test_signals_at_random_points_then_resume_give_the_uninterrupted_files(setup, server, tmp_path):
    rng = random.Random(SEED)
    out = tmp_path / "runs"
    done: set[int] = set()
    for number, (kill, target) in enumerate(KILLS):
        # The first run is a real interpreter (`python -m aabench`); the resumed ones come
        # from the fork server: the same entry point, without seconds of imports each.
        resume = ("--resume",) if number else ()
        with Run(setup, out, *resume, server=server if number else None) as process:
            wait_for_a_new_chunk(process, out, chunks(out))
            time.sleep(rng.uniform(0, 0.4))
            process.send(kill, target)
            code, stdout, stderr = process.wait(120)
        where = f"kill {number} ({kill.name} to the {target})"
        assert code != 0, f"{where}: the run finished before it"
        if kill == signal.SIGKILL:
            assert code == -signal.SIGKILL, where
        else:
            expected, line = LAST_LINES[kill]
            assert code == expected, f"{where}: {stderr}"
            assert stderr.startswith(line) and stderr.count("\n") == 1, f"{where}: {stderr}"
            assert "Traceback" not in stderr and stdout == "", where
            assert group_gone(process), f"{where}: a worker outlived the run"
        now = checkpointed(out)
        assert done <= now, f"{where}: finished images were lost"
        done = now

    with Run(setup, out, "--resume", server=server) as process:
        code, _, stderr = process.wait(300)
    assert code == 0, stderr
    assert outputs(out) == outputs(setup / "reference")  # byte for byte
    assert measurement(out) == measurement(setup / "reference")
    assert not (out / MODEL / ".partial").exists()
    provenance = json.loads((out / MODEL / "shift.json").read_text())
    assert provenance["resumed_images"] == len(done) > 0
    assert 1 <= len(provenance["earlier_sessions"]) <= len(KILLS)


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_the_lock(
    setup, server, tmp_path, cli
):
    out = tmp_path / "runs"
    with Run(setup, out, server=server) as first:
        try:
            wait_for_a_new_chunk(first, out, set())
            first.send(signal.SIGSTOP)  # holding the lock, for as long as this takes
            assert first.poll() is None, "the first run finished before the second started"
            before = snapshot(out)
            line = user_error(
                cli(*arguments(setup, out, "--seed", "1", "--resume")),
                f"suite shift in {out / MODEL} is being run by another aabench process",
                f"(pid {first.pid} on ",
                "aabench run --model python:",
                "wait for it to finish, or stop it",
            )
            assert "started 20" in line
            assert snapshot(out) == before  # the first run's checkpoints are untouched
        finally:
            first.send(signal.SIGCONT)
        code, _, stderr = first.wait(300)
    assert code == 0, stderr
    assert outputs(out) == outputs(setup / "reference")
    assert measurement(out) == measurement(setup / "reference")
    assert not (out / MODEL / ".partial").exists()


def test_sigterm_under_torchrun_keeps_every_ranks_images_and_any_world_resumes_them(
    setup, server, tmp_path
):
    """Slurm signals the whole job: torchrun, which forwards SIGTERM to each rank again,
    and the ranks and their workers. Every rank stops, keeping its checkpoints; rank 0
    alone says so, in one line; a single process resumes the run to the uninterrupted
    bytes."""
    rng = random.Random(SEED + 1)
    out = tmp_path / "runs"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={port}",
        "-m", "aabench", *arguments(setup, out),
    ]  # fmt: skip
    torchrun = subprocess.Popen(
        command,
        cwd=setup,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while {"r0", "r1"} - {name.split(".")[1] for name in chunks(out)}:  # every rank's
            assert torchrun.poll() is None and time.monotonic() < deadline, "no checkpoints"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        os.killpg(torchrun.pid, signal.SIGTERM)
        _, stderr = torchrun.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(torchrun.pid, signal.SIGKILL)
        torchrun.wait()
    assert stderr.count("aabench: terminated (SIGTERM): ") == 1, stderr  # rank 0's line
    assert "aabench: error" not in stderr and "internal error" not in stderr, stderr
    # torchrun's own report of the signal is its only traceback.
    assert stderr.count("Traceback") == stderr.count("SignalException: Process"), stderr
    done = checkpointed(out)
    half = IMAGES_PER_CLASS  # rank 0 evaluates the first half, rank 1 the second
    assert min(done) < half <= max(done), done

    with Run(setup, out, "--resume", server=server) as process:
        code, _, stderr = process.wait(300)
    assert code == 0, stderr
    assert outputs(out) == outputs(setup / "reference")
    assert measurement(out) == measurement(setup / "reference")
    provenance = json.loads((out / MODEL / "shift.json").read_text())
    assert provenance["resumed_images"] == len(done)
    assert [session["world_size"] for session in provenance["earlier_sessions"]] == [2]


def test_a_rank_acts_on_the_first_stop_signal_only():
    """torchrun forwards the signal a rank already had from the terminal or Slurm: the
    second must not interrupt the saving the first one started."""

    class Stop(KeyboardInterrupt):
        pass

    def stop(signum, frame):
        raise Stop

    before = signal.getsignal(signal.SIGUSR1)
    try:
        signal.signal(signal.SIGUSR1, _stop_once(stop))
        with pytest.raises(Stop):
            signal.raise_signal(signal.SIGUSR1)
        signal.raise_signal(signal.SIGUSR1)  # ignored
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
        signal.signal(signal.SIGUSR1, _stop_once(signal.SIG_DFL))  # no handler of its own
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)
