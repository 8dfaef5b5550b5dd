"""Where the end-to-end time goes: seconds per stage of the evaluation loop.

The main process's stages are timed on the host clock: ``host_wait`` (waiting for the
loader's next batch, i.e. for decoding), ``device_decode`` (released JPEGs decoded on the
model's device, ImageNet-C's nvjpeg decoder), ``upload`` (views into staging and onto the
device), ``forward`` (the model and the output reduction) and ``download`` (waiting for
outputs to come back); what the main process spends elsewhere (batching, records) is
``other``. On a GPU the host only queues the forward, so its device time is also taken
from CUDA events around each pass (``forward_device``). The workers report what each
item cost them (``decode``, ``views``): these run in parallel with the main process and
with each other, so they are worker-seconds, not a share of the wall time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

HOST_STAGES = ("host_wait", "device_decode", "upload", "forward", "download")
WORKER_STAGES = ("decode", "views")


class Timings:
    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = dict.fromkeys((*HOST_STAGES, *WORKER_STAGES), 0.0)
        self._device_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def span(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start

    @contextmanager
    def forward_span(self) -> Iterator[None]:
        """The forward's host time, and on CUDA its device time by events."""
        if self.device.type != "cuda":
            with self.span("forward"):
                yield
            return
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        stream = torch.cuda.current_stream(self.device)  # the model's, not cuda:0's
        begin.record(stream)
        with self.span("forward"):
            yield
        end.record(stream)
        self._device_events.append((begin, end))

    def add_worker(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.seconds[stage] += value

    def batches(self, batches: Iterable) -> Iterator:
        """``batches`` with the time spent waiting for each one counted as host_wait."""
        iterator = iter(batches)
        try:
            while True:
                with self.span("host_wait"):
                    try:
                        items = next(iterator)
                    except StopIteration:
                        return
                yield items
        finally:
            close = getattr(iterator, "close", None)  # ends the loader's workers now
            if close is not None:
                close()

    def forward_device_seconds(self) -> float | None:
        """The device's time in forward passes (CUDA), None where the host time is it."""
        if self.device.type != "cuda":
            return None
        if self._device_events:
            self._device_events[-1][1].synchronize()
        return sum(begin.elapsed_time(end) for begin, end in self._device_events) / 1000

    def breakdown(self, wall_seconds: float) -> dict[str, float | None]:
        """Seconds per stage; ``other`` is the main process's remaining wall time."""
        report: dict[str, float | None] = dict(self.seconds)
        report["other"] = max(0.0, wall_seconds - sum(self.seconds[s] for s in HOST_STAGES))
        report["forward_device"] = self.forward_device_seconds()
        return report


_UNTIMED = contextlib.nullcontext()


def span(timings: Timings | None, stage: str):
    """The context that times ``stage`` in ``timings`` (the forward by device events
    too), or nothing without timings."""
    if timings is None:
        return _UNTIMED
    return timings.forward_span() if stage == "forward" else timings.span(stage)


def timed(batches: Iterable, timings: Timings | None) -> Iterable:
    """``batches``, with its waits timed when there are ``timings``."""
    return batches if timings is None else timings.batches(batches)


def bottleneck(breakdown: dict[str, float | None]) -> str:
    """The main-process stage that took the most wall time."""
    stages = (*HOST_STAGES, "other")
    return max(stages, key=lambda stage: breakdown[stage] or 0.0)
