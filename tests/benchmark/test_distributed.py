"""Runs under torchrun: shards, stopping together, and byte-identical outputs (gloo, CPU)."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from aabench.cli import main
from aabench.distributed import PeerFailed, World

ROOT = Path(__file__).resolve().parents[2]  # the repository: subprocesses import from it
TIMEOUT = 240  # seconds: a hang fails the test instead of the whole suite
MODEL = ("--model", "resnet18", "--weights", "none", "--device", "cpu", "--workers", "0")
# Batches of 4 views: 2-image blocks for the shift suite (2 views each), 4-image blocks
# for imagenet-c (5 views each), 2-image blocks for worst-shift (14 views each, folded to
# one row per image on each rank), so both ranks get work and the shards are uneven.
SUITES = ("shift", "imagenet-c", "worst-shift")
RUN = (
    *MODEL, "--suite", ",".join(SUITES), "--generate", "--set", "epochs=1",
    "--set", "corruptions=gaussian_noise,brightness", "--set", "severities=1,2",
    "--set", "grid=fraction", "--batch-size", "4", "--quiet",
)  # fmt: skip
FILES = [f"{s}{e}" for s in SUITES for e in (".csv", ".samples.csv.gz")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize("ranks", [1, 2, 3, 7])
@pytest.mark.parametrize("block", [1, 2, 4])
def test_shards_are_disjoint_runs_of_whole_blocks_covering_everything(ranks, block):
    todo = np.array([0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 12])  # gaps: finished earlier
    shards = [World(rank, ranks).shard(todo, block) for rank in range(ranks)]
    assert np.array_equal(np.concatenate(shards), todo)  # disjoint, in order, complete
    blocks = [set(shard // block) for shard in shards]
    for one, other in itertools.pairwise(blocks):
        assert not one & other  # a block is never split between ranks
    sizes = [len(b) for b in blocks]
    assert max(sizes) - min(sizes) <= 1


@pytest.fixture
def two_worlds(monkeypatch) -> list[World]:
    """Two ranks sharing one store, as torchrun's processes do (no process group)."""
    monkeypatch.setattr("aabench.distributed.POLL_SECONDS", 0.0)
    store = dist.HashStore()
    worlds = [World(rank, 2) for rank in range(2)]
    for world in worlds:
        world.store = dist.PrefixStore("aabench", store)
    return worlds


def test_a_failed_rank_stops_the_others_at_their_next_poll_or_meeting(two_worlds):
    first, second = two_worlds
    first.poll()  # nothing failed: no error
    second.stop(2, "cannot decode image x.png: fix or remove it")
    first.stop(2, "a later failure is not the one reported")
    with pytest.raises(PeerFailed, match="cannot decode image x") as raised:
        first.poll()
    assert raised.value.exit_code == 2
    with pytest.raises(PeerFailed):
        first._meet()  # waiting for a rank that failed would hang: it raises instead


def test_ctrl_c_on_one_rank_stops_the_others_as_ctrl_c(two_worlds):
    first, second = two_worlds
    second.stop(130, "interrupted")
    with pytest.raises(KeyboardInterrupt):
        first.poll()


def test_torchrun_with_two_ranks_writes_exactly_what_one_process_writes(tmp_path):
    single, distributed = tmp_path / "single", tmp_path / "distributed"
    with pytest.raises(SystemExit) as exited:
        main(["run", *RUN, "--out", str(single)])
    assert exited.value.code in (0, None)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "aabench.cli", "run", *RUN, "--out", str(distributed),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    for name in FILES:  # the gzip files too: no time stamp in them
        ours = (distributed / "resnet18" / name).read_bytes()
        assert ours == (single / "resnet18" / name).read_bytes(), name
    provenance = json.loads((distributed / "resnet18" / "shift.json").read_text())
    assert provenance["world_size"] == 2 and provenance["n"] == 5
    assert provenance["resumed_images"] == 0
    assert sorted(p.name for p in (distributed / "resnet18").iterdir()) == sorted(
        [*FILES, *(f"{suite}.json" for suite in SUITES)]
    )  # no checkpoints left behind
    assert done.stdout.count("table:") == 3  # rank 0's summaries only
    worst = json.loads((distributed / "resnet18" / "worst-shift.json").read_text())
    assert worst["views"] == 5 * 14 and worst["n"] == 5


def test_an_error_on_one_rank_ends_every_rank_with_one_line_from_rank_0(tmp_path):
    """Rank 1 cannot open its data: rank 0, waiting to share out the work, stops too and
    prints rank 1's error once; no rank hangs and nothing is written."""
    port = free_port()
    processes = []
    for rank, data in ((0, "sample"), (1, str(tmp_path / "missing"))):
        variables = environment(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        command = [
            sys.executable, "-m", "aabench.cli", "run", *MODEL, "--suite", "shift",
            "--data", data, "--out", str(tmp_path / "runs"), "--quiet",
        ]  # fmt: skip
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        processes.append(subprocess.Popen(command, cwd=tmp_path, env=variables, text=True, **pipes))
    try:
        results = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            process.kill()
    (out0, err0), (out1, err1) = results
    assert [process.returncode for process in processes] == [2, 2], (err0, err1)
    assert err0.startswith("aabench: error: data directory") and "missing" in err0
    assert err0.count("\n") == 1 and "Traceback" not in err0
    assert out0 == out1 == err1 == ""  # rank 1 says nothing
    assert not (tmp_path / "runs").exists()
