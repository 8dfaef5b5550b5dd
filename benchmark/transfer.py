"""Moving views to the device and outputs back without making the host wait.

On a GPU the main loop used to read each pass's outputs back at once (``.cpu()``),
which waits for that pass to finish: the host then assembled the next batch while the
GPU sat idle, and the GPU waited while the host worked. Here uploads go through a ring
of pinned staging buffers on their own stream, outputs come back by non-blocking copies
into pinned memory, and the host waits only for outputs that are ``depth`` passes old,
by which time the GPU has long finished them.

On the CPU every operation is already complete when it returns: the same code runs
with the waits degenerate, so records are the same as a synchronous loop's.
"""

from __future__ import annotations

import numpy as np
import torch

from aabench.timing import span


class PendingOutputs:
    """One pass's outputs (``{column: tensor}``, ``count`` views) on their way to the
    host; ``result()`` waits for them only if they have not arrived."""

    def __init__(self, outputs: dict[str, torch.Tensor | np.ndarray], count: int, timings=None):
        self.count = count
        self._timings = timings  # aabench.timing.Timings: waiting counts as download
        self._event = None
        device = None
        self._host: dict[str, torch.Tensor | np.ndarray] = {}
        for key, value in outputs.items():
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
                host.copy_(value, non_blocking=True)
                self._host[key] = host
                if self._event is None:
                    self._event, device = torch.cuda.Event(), value.device
            else:
                self._host[key] = value
        if self._event is not None:
            # Recorded after every copy of the pass: its completion means all arrived.
            # On the stream the copies went to: the outputs' device's, which need not be
            # the current device (--device cuda:1).
            self._event.record(torch.cuda.current_stream(device))
        self._result: dict[str, np.ndarray] | None = None

    @property
    def read(self) -> bool:
        return self._result is not None

    def ready(self) -> bool:
        """Whether ``result()`` would return without waiting."""
        return self._result is not None or self._event is None or self._event.query()

    def result(self) -> dict[str, np.ndarray]:
        if self._result is None:
            if self._event is not None:
                with span(self._timings, "download"):
                    self._event.synchronize()
            self._result = {key: _numpy(value) for key, value in self._host.items()}
            self._host = {}
        return self._result


def _numpy(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class StagingRing:
    """Pinned host buffers, used in turn, from which views are uploaded on a stream of
    their own. A buffer is refilled only after its previous upload has completed (its
    event), so ``slots`` uploads can be in flight while the model runs."""

    def __init__(self, device: torch.device, slots: int = 2):
        self.device = device
        self.slots = slots
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._events: list[object | None] = [None] * slots
        self._next = 0

    def upload(self, views: torch.Tensor) -> torch.Tensor:
        if self.stream is None or views.device.type != "cpu":  # on the device already
            return views.to(self.device)
        slot = self._next
        self._next = (slot + 1) % self.slots
        if self._events[slot] is not None:
            self._events[slot].synchronize()  # its last upload has left the buffer
        buffer = self._buffers[slot]
        count = views.numel()
        if buffer is None or buffer.numel() < count or buffer.dtype != views.dtype:
            buffer = self._buffers[slot] = torch.empty(count, dtype=views.dtype).pin_memory()
        staging = buffer[:count].view(views.shape)
        staging.copy_(views)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):
            uploaded = staging.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self._events[slot] = event
        compute.wait_event(event)
        # Allocated on the upload stream, read on the compute stream: the allocator
        # must not hand its memory to the upload stream again before the reads are done.
        uploaded.record_stream(compute)
        return uploaded
