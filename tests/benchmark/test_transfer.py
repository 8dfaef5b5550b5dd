"""The overlapped pipeline: outputs that come back late change no record.

On the CPU every pass is complete when it returns, so these tests stand in a slow
device: each pass's outputs arrive only after several polls, and until they arrive the
host copies hold garbage. A loop that read outputs before waiting for them, or took
images whose outputs are still on their way, would record garbage or drop or reorder
records; the records must equal those of the same run with prompt outputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from aabench import engine, transfer
from aabench.data.folder import open_image_folder
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.shift import ShiftSuite
from aabench.suites.worst_shift import WorstShiftSuite
from tests.helpers import TABBY, TENCH, loaded, noise_folder, run


class SlowEvent:
    """A device event that completes after ``polls`` queries, or when waited for."""

    def __init__(self, pending: transfer.PendingOutputs, polls: int):
        self.pending, self.polls, self.done = pending, polls, False
        self.waits = 0

    def query(self) -> bool:
        self.polls -= 1
        if self.polls <= 0:
            self._arrive()
        return self.done

    def synchronize(self) -> None:
        self.waits += not self.done  # a wait that blocks: the outputs had not arrived
        self._arrive()

    def _arrive(self) -> None:
        if not self.done:
            self.pending._host = self.pending._arrived
            self.done = True


@pytest.fixture
def slow_device(monkeypatch):
    """Every pass's outputs arrive late: garbage on the host until then."""
    events: list[SlowEvent] = []
    original = transfer.PendingOutputs.__init__

    def late(self, outputs, count, timings=None):
        original(self, outputs, count, timings)
        self._arrived = self._host
        self._host = {key: np.full_like(np.asarray(v), -7) for key, v in self._host.items()}
        self._event = SlowEvent(self, polls=3)
        events.append(self._event)

    monkeypatch.setattr(transfer.PendingOutputs, "__init__", late)
    return events


class Position(nn.Module):
    """Logits that depend on the view's pixels, so that records of different views,
    and of different images, differ."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))
        return mean[:, None] * torch.arange(1, 1001, device=x.device) % 1.7


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    return noise_folder(root, {TENCH: [(48, 48)] * 5, TABBY: [(52, 50)] * 6}, seed=3)


SUITES = {
    "accuracy": lambda: AccuracySuite(),
    "shift": lambda: ShiftSuite(max_shift=8, epochs=2),
    "worst-shift": lambda: WorstShiftSuite(max_shift=4),  # folds its records per image
}


@pytest.mark.parametrize("name", list(SUITES))
@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_late_outputs_change_no_record(folder, slow_device, monkeypatch, name, batch_size):
    with monkeypatch.context() as prompt:
        prompt.setattr(transfer.PendingOutputs, "__init__", _prompt_init)
        expected = run(Position(), SUITES[name](), folder, batch_size=batch_size).records
    assert slow_device == []
    late = run(Position(), SUITES[name](), folder, batch_size=batch_size).records
    assert slow_device, "the slow device was not used"
    assert not (late.select_dtypes("number") == -7).all(axis=1).any()
    pd.testing.assert_frame_equal(late, expected)


_prompt_init = transfer.PendingOutputs.__init__


def test_the_host_waits_only_for_outputs_older_than_the_depth(folder, slow_device):
    """Checkpoints take only arrived outputs; the loop waits for a pass only once
    OUTPUT_DEPTH newer ones are queued, or at the end."""
    saved: list[int] = []
    hooks = engine.Hooks(save=lambda part: saved.append(len(part)), save_every=0.0)
    options = engine.EngineOptions(device="cpu", batch_size=2, workers=0, quiet=True)
    evaluation = engine.evaluate(
        loaded(Position()), AccuracySuite(), open_image_folder(folder), options, hooks=hooks
    )
    assert len(evaluation.records) == 11
    assert sum(saved) == 11  # every image saved exactly once
    waited = [event for event in slow_device if event.waits]
    # Passes of 2 views, so 6 passes: without the overlap every one would be waited for.
    assert 0 < len(waited) < len(slow_device) == 6


def test_cpu_outputs_are_ready_at_once():
    pending = transfer.PendingOutputs({"pred": torch.tensor([3, 1])}, 2)
    assert pending.ready() and pending.count == 2
    assert pending.result()["pred"].tolist() == [3, 1]
    assert pending.read
