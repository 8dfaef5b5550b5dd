"""Where end-to-end time goes: each stage is timed around exactly its own work."""

import time

import pytest
import torch
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions, FolderSource, Hooks, evaluate
from aabench.suites.shift import ShiftSuite
from aabench.timing import Timings, bottleneck
from tests.benchmark.test_bench import tiny_model


class StageClock:
    """A clock that moves only when a stage's work advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SlowForward(nn.Module):
    """The tiny model, one clock second per pass."""

    def __init__(self, model: nn.Module, clock: StageClock):
        super().__init__()
        self.model, self.clock = model, clock

    def forward(self, x):
        self.clock.now += 1.0
        return self.model(x)


class SlowSource(FolderSource):
    """Decoding costs a quarter of a clock second per image."""

    def __init__(self, folder, clock: StageClock):
        super().__init__(folder)
        self.clock = clock

    def images(self, sample) -> dict:
        self.clock.now += 0.25
        return super().images(sample)


@pytest.mark.parametrize("batch_size", [2, 3])
def test_forward_and_decode_are_timed_where_they_happen(monkeypatch, batch_size):
    clock = StageClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    loaded = tiny_model()
    loaded._module = SlowForward(loaded.module, clock)
    folder = open_image_folder("sample")  # 5 images
    suite = ShiftSuite(max_shift=8, epochs=1)  # 2 views each: 10 views
    timings = Timings(torch.device("cpu"))
    options = EngineOptions(device="cpu", batch_size=batch_size, workers=0, quiet=True)
    evaluation = evaluate(
        loaded,
        suite,
        folder,
        options,
        source=SlowSource(folder, clock),
        hooks=Hooks(timings=timings),
    )
    passes = -(-10 // batch_size)
    stages = timings.breakdown(evaluation.seconds)
    assert stages["forward"] == passes  # every pass, and nothing but the passes
    assert stages["decode"] == 5 * 0.25  # as the dataset measured each item
    # Without workers the main process decodes while it waits for the next batch.
    assert stages["host_wait"] == 5 * 0.25
    assert stages["upload"] == stages["download"] == stages["views"] == 0.0
    assert stages["device_decode"] == 0.0  # PIL decodes these in the dataset
    assert stages["other"] == 0.0 and stages["forward_device"] is None
    assert evaluation.seconds == passes + 5 * 0.25
    assert bottleneck(stages) == "forward"


def test_the_bottleneck_is_the_largest_main_process_stage():
    stages = {"host_wait": 3.0, "upload": 0.1, "forward": 2.0, "download": 0.0, "other": 1.0}
    stages["device_decode"] = 0.5
    # Worker stages run beside the main process: never the bottleneck themselves.
    assert bottleneck({**stages, "decode": 9.0, "views": 9.0}) == "host_wait"
