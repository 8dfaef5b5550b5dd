"""Runs under torchrun: which rank this process is, which images it evaluates, and how
the ranks meet, hand their records to rank 0 and stop together.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) starts one process per device. With WORLD_SIZE > 1 the process group is
NCCL for CUDA devices and gloo on the CPU; records travel to rank 0 as pickled objects
through a gloo group either way (CPU memory, no GPU staging). Without those variables,
or with one process, everything here is a no-op.

Stopping together: a rank that fails publishes its error in the rendezvous store; the
others see it between loader batches and at every meeting point, and stop too. Only
rank 0 prints, and no rank leaves before every rank has stopped, because torchrun kills
all workers as soon as one exits (rank 0 could die before printing). A rank never enters
a collective before every rank has arrived at it without an error, so an error on one
rank never leaves another waiting in a collective.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from aabench.errors import UserError

# How long rank 0 waits for a process that has not joined, and a collective may take.
RENDEZVOUS_TIMEOUT = timedelta(minutes=30)
POLL_SECONDS = 0.5  # between checks for a failed rank while evaluating
MEET_SLEEP = 0.05
# Before leaving after an error: rank 0 waits this long for the others to stop; the
# others wait this long for rank 0 to have printed the error (else they print it).
LEAVE_WAIT_MAIN = timedelta(seconds=60)
LEAVE_WAIT_OTHERS = timedelta(minutes=10)
INTERRUPTED = 130


class PeerFailed(UserError):
    """Another rank failed: rank 0 prints its message; the exit code is that rank's."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _environment_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(
            f"environment variable {name}={value!r} is not a number: start distributed "
            "runs with torchrun, which sets it"
        ) from None


class World:
    """This process's place among the ranks (one rank, no store: a single process)."""

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.store = None  # the rendezvous store, once the process group is up
        self.group = None  # the gloo group that carries objects (None: the default one)
        self.device = "auto"
        self._meetings = 0
        self._polled = 0.0

    @property
    def active(self) -> bool:
        return self.store is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, positions: Sequence[int], block: int = 1) -> np.ndarray:
        """This rank's share of ``positions`` (ascending): a contiguous run of whole
        blocks (``position // block``), so every forward pass is the one a single process
        runs. Disjoint, nothing padded or repeated; shares differ by at most one block."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return positions
        starts = np.flatnonzero(np.diff(positions // block)) + 1
        blocks = np.split(positions, starts)
        count = len(blocks)
        mine = blocks[count * self.rank // self.size : count * (self.rank + 1) // self.size]
        return np.concatenate(mine) if mine else positions[:0]

    # -- stopping together -------------------------------------------------------------

    def poll(self) -> None:
        """Raise if another rank has failed (checked at most every POLL_SECONDS)."""
        if not self.active or time.monotonic() - self._polled < POLL_SECONDS:
            return
        self._polled = time.monotonic()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if not self.store.check(["error"]):
            return
        error = json.loads(self.store.get("error"))
        if error["code"] == INTERRUPTED:
            raise KeyboardInterrupt  # stops like Ctrl-C here: finished work is kept
        raise PeerFailed(error["message"], error["code"])

    def stop(self, code: int, message: str) -> None:
        """Tell the other ranks to stop; the first failure is the one reported."""
        if not self.active:
            return
        try:
            if self.store.add("failures", 1) == 1:
                payload = {"code": code, "message": message, "rank": self.rank}
                self.store.set("error", json.dumps(payload))
        except Exception:  # the store is gone: torchrun is tearing the job down anyway
            pass

    def leave(self, line: str) -> None:
        """After stop() and, on rank 0, printing ``line``: wait until every rank has
        stopped (so torchrun tears nothing down early), bounded by LEAVE_WAIT_*."""
        if not self.active:
            return
        try:
            self.store.add("stopped", 1)
            deadline = (
                time.monotonic()
                + (LEAVE_WAIT_MAIN if self.is_main else LEAVE_WAIT_OTHERS).total_seconds()
            )
            while self.store.add("stopped", 0) < self.size:
                if time.monotonic() > deadline:
                    if not self.is_main:
                        note = f"(rank {self.rank}; rank 0 did not report it)"
                        print(f"{line} {note}", file=sys.stderr, flush=True)
                    return
                time.sleep(MEET_SLEEP)
        except Exception:
            pass

    # -- meeting and collectives -------------------------------------------------------

    def _meet(self) -> None:
        """Return once every rank has arrived here; raise if a rank failed first."""
        self._meetings += 1
        key = f"meet/{self._meetings}"
        self.store.add(key, 1)
        while self.store.add(key, 0) < self.size:
            self._raise_if_failed()
            time.sleep(MEET_SLEEP)

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        self._meet()
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value) -> list | None:
        """Every rank's ``value``, by rank, on rank 0; None elsewhere."""
        if not self.active:
            return [value]
        self._meet()
        gathered = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0, group=self.group)
        return gathered

    def close(self) -> None:
        """After this rank's last collective. It counts as stopped, so that rank 0,
        should it fail while writing, does not wait for it in leave()."""
        if self.active:
            self.store.add("stopped", 1)
            if dist.is_initialized():
                dist.destroy_process_group()
        self.store = None


_current: World | None = None  # set by start()


def current() -> World:
    """The world of this process; before start(), rank and size as the environment says
    (so a rank other than 0 stays silent even for an error raised before start())."""
    if _current is not None:
        return _current
    try:
        return _from_environment()
    except UserError:
        return World()


def _from_environment() -> World:
    size = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    local_rank = _environment_int("LOCAL_RANK", rank)
    if size < 1 or not 0 <= rank < size:
        raise UserError(
            f"RANK={rank} and WORLD_SIZE={size} do not fit together: start distributed "
            "runs with torchrun"
        )
    return World(rank, size, local_rank)


def device_for(spec: str, world: World) -> str:
    """The device of this rank: auto and cuda mean cuda:LOCAL_RANK when distributed."""
    if world.size == 1 or spec not in ("auto", "cuda"):
        return spec
    if not torch.cuda.is_available():
        return "cpu" if spec == "auto" else spec  # resolve_device explains "cuda"
    if world.local_rank >= torch.cuda.device_count():
        raise UserError(
            f"this node runs local rank {world.local_rank} but has "
            f"{torch.cuda.device_count()} GPU(s): start torchrun with --nproc_per_node at "
            "most the number of GPUs"
        )
    return f"cuda:{world.local_rank}"


def start(device: str) -> World:
    """Join the other ranks (if any) and make this process's world current."""
    global _current
    from aabench.engine import resolve_device

    _current = world = _from_environment()
    if world.size == 1:
        world.device = device
        return world
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, _stop_once(signal.getsignal(number)))
    try:
        store, _, _ = next(
            dist.rendezvous("env://", world.rank, world.size, timeout=RENDEZVOUS_TIMEOUT)
        )
    except ValueError as error:
        raise UserError(
            f"cannot join the other ranks ({error}): start distributed runs with torchrun, "
            "which sets MASTER_ADDR and MASTER_PORT"
        ) from None
    world.store = dist.PrefixStore("aabench", store)
    # A rank without its device (more processes than GPUs) fails here, and the others
    # hear of it at the meeting instead of waiting for it in init_process_group.
    world.device = device_for(device, world)
    resolved = resolve_device(world.device)
    world._meet()
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    backend = "nccl" if resolved.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        store=dist.PrefixStore("process_group", store),
        rank=world.rank,
        world_size=world.size,
        timeout=RENDEZVOUS_TIMEOUT,
    )
    world.group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return world


def _stop_once(previous):
    """A handler for Ctrl-C or SIGTERM that acts on the first signal only.

    Each reaches a rank twice: from the terminal, Slurm or ``docker stop`` (sent to the
    whole process group) and from torchrun (which forwards it to every worker). The
    first stops the run as the previous handler does (KeyboardInterrupt; the CLI's
    SIGTERM handler raises its Terminated, a KeyboardInterrupt), the second must not
    break the orderly stop that follows: the finished images being saved."""

    def handler(signum, frame) -> None:
        signal.signal(signum, signal.SIG_IGN)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    return handler
