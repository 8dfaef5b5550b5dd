import json
import math

import pytest
import torch
from torch import nn

from aabench.bench import bench, repeat_to
from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions
from aabench.errors import UserError
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import RANDOM_WEIGHTS
from aabench.models.zoo import LoadedModel, ModelSpec
from aabench.suites.shift import ShiftSuite


def tiny_model(*layers: nn.Module, name: str = "tiny") -> LoadedModel:
    module = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    return LoadedModel(
        spec=ModelSpec(name=name, family="torchvision", arch="tiny"),
        module=module,
        preprocessing=Preprocessing(resize_size=40, crop_size=32),
        weights=RANDOM_WEIGHTS,
    )


def test_repeat_to_cycles_the_images():
    folder = open_image_folder("sample")
    repeated = repeat_to(folder, 12)
    assert len(repeated) == 12
    assert [s.path for s in repeated.samples[5:10]] == [s.path for s in folder.samples]


class TickingClock:
    """A clock that moves ``step`` seconds every time it is read."""

    def __init__(self, step: float):
        self.step, self.now = step, 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


SHIFT = ShiftSuite(max_shift=8, epochs=1)  # 2 views per image
OPTIONS = EngineOptions(device="cpu", batch_size=4, workers=0)  # 2 images per loader batch


def test_bench_measures_three_positive_rates():
    torch.manual_seed(0)
    # 100 checks per phase: more than the 3 loader batches of 6 images, so the
    # pipeline and end-to-end phases finish the cap.
    result = bench(
        tiny_model(),
        SHIFT,
        open_image_folder("sample"),
        OPTIONS,
        images=6,
        seconds=3.0,
        clock=TickingClock(0.01),
    )
    rates = [
        result.forward_views_per_second,
        result.pipeline_views_per_second,
        result.end_to_end_views_per_second,
    ]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    assert (result.images, result.views_per_image) == (6, 2)
    assert (result.pipeline.images, result.pipeline.views, result.end_to_end.views) == (6, 12, 12)
    assert result.forward.views == 4 * 100  # one step per check until the deadline
    assert result.end_to_end_over_forward == rates[2] / rates[0]
    for phase in (result.forward, result.pipeline, result.end_to_end):
        assert phase.views_per_second == phase.views / phase.seconds


def test_each_phase_stops_at_its_deadline_after_one_batch():
    # Every read of the clock passes the phase's deadline (a third of 3 s): each phase
    # runs its one obligatory batch and stops, far below the cap of 40 images.
    result = bench(
        tiny_model(),
        SHIFT,
        open_image_folder("sample"),
        OPTIONS,
        images=40,
        seconds=3.0,
        clock=TickingClock(1.0),
    )
    assert result.seconds_per_phase == 1.0
    # Forward-only runs in two halves of the phase's share, one batch each.
    assert [half.views for half in result.forward_halves] == [4, 4]
    assert result.forward.views == 8
    assert result.forward.seconds == sum(half.seconds for half in result.forward_halves)
    assert (result.pipeline.images, result.pipeline.views) == (2, 4)
    assert (result.end_to_end.images, result.end_to_end.views) == (2, 4)


def test_the_end_to_end_deadline_keeps_exactly_the_finished_images():
    # A deadline passed at the third check: three loader batches of 2 images.
    clock = iter([0.0, 0.0, 0.0, 9.0])
    stops = []

    def stop_clock() -> float:
        value = next(clock)
        stops.append(value)
        return value

    evaluation = bench_end_to_end(stop_clock)
    assert (evaluation.images, evaluation.views) == (6, 12)
    assert stops == [0.0, 0.0, 0.0, 9.0]


def bench_end_to_end(clock):
    from aabench.bench import Deadline, end_to_end, repeat_to

    folder = repeat_to(open_image_folder("sample"), 20)
    return end_to_end(
        tiny_model(), SHIFT, folder, OPTIONS, 0, torch.device("cpu"), Deadline(1.0, clock)
    )


def test_the_baseline_phase_alternates_rounds_and_bounds_the_ratio_by_f():
    model = tiny_model(nn.Conv2d(3, 3, 1), name="tiny_aa")
    baseline = tiny_model()
    calls = []
    model.module.register_forward_pre_hook(lambda *_: calls.append("model"))
    baseline.module.register_forward_pre_hook(lambda *_: calls.append("baseline"))
    result = bench(
        model,
        SHIFT,
        open_image_folder("sample"),
        OPTIONS,
        images=2,
        seconds=4.0,
        clock=TickingClock(1.0),  # every check passes: one batch per round each
        baseline=baseline,
    )
    assert result.seconds_per_phase == 1.0  # four phases
    flops = ["baseline", "model"]  # one pass each to count F
    warm_up = ["model", "model", "baseline", "baseline"]
    rounds = ["model", "baseline", "baseline", "model", "model", "baseline"]
    assert calls[-12:] == flops + warm_up + rounds
    compared = result.against_baseline
    assert (compared.model.views, compared.baseline.views) == (3 * 4, 3 * 4)
    linear, conv = 2 * 3 * 1000, 2 * (32 * 32 * 3) * 3  # FLOPs at the 32-pixel crop
    assert compared.flop_ratio == linear / (linear + conv)
    assert compared.forward_ratio == (
        compared.model.views_per_second / compared.baseline.views_per_second
    )
    assert compared.of_flop_ratio == compared.forward_ratio / compared.flop_ratio


def test_a_baseline_of_another_input_size_is_refused_before_any_phase():
    model, baseline = tiny_model(name="tiny_aa"), tiny_model()
    baseline.base_preprocessing = Preprocessing(resize_size=72, crop_size=64)
    calls = []
    model.module.register_forward_pre_hook(lambda *_: calls.append("model"))
    message = "the baseline tiny takes 64-pixel inputs and tiny_aa 32-pixel ones"
    with pytest.raises(UserError, match=message):
        bench(model, SHIFT, open_image_folder("sample"), OPTIONS, images=2, baseline=baseline)
    assert calls == []  # no phase spent its budget first


def test_progress_on_stderr_for_every_phase(capsys):
    bench(
        tiny_model(),
        SHIFT,
        open_image_folder("sample"),
        OPTIONS,
        images=4,
        seconds=3.0,
        quiet=False,
        clock=TickingClock(1.0),
    )
    err = capsys.readouterr().err.splitlines()
    # Forward-only in halves before and after the others: a drifting machine moves all.
    assert [line for line in err if line.endswith("s)")] == [
        "bench: forward-only: running (up to 0.5 s)",
        "bench: pipeline-only: running (up to 1.0 s)",
        "bench: end-to-end: running (up to 1.0 s)",
        "bench: forward-only: running (up to 0.5 s)",
    ]
    for phase in ("forward-only", "pipeline-only", "end-to-end"):
        assert [line for line in err if line.startswith(f"bench: {phase}: 4 views")], err


def test_quiet_bench_prints_nothing(capsys):
    bench(
        tiny_model(),
        SHIFT,
        open_image_folder("sample"),
        OPTIONS,
        images=2,
        seconds=3.0,
        clock=TickingClock(1.0),
    )
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(
    ("option", "value", "text"),
    [
        ("--seconds", "0", "--seconds must be more than 0, got 0.0: it is the time budget"),
        ("--seconds", "-1", "--seconds must be more than 0, got -1.0: it is the time budget"),
        ("--seconds", "nan", "--seconds must be a finite number, got nan: it is the time budget"),
        ("--images", "0", "--images must be 1 or more, got 0: it caps the images"),
    ],
)
def test_bench_refuses_a_budget_that_measures_nothing(cli, option, value, text):
    # Checked before the model is looked up: an unknown model is never reached.
    code, out, err = cli("bench", "--model", "no_such_model", option, value)
    assert code == 2
    assert out == ""
    assert err.startswith(f"aabench: error: {text}") and err.count("\n") == 1


def test_the_library_checks_the_budget_too():
    with pytest.raises(UserError, match="--images must be 1 or more, got 0"):
        bench(tiny_model(), SHIFT, open_image_folder("sample"), OPTIONS, images=0)


def test_a_batch_that_runs_out_of_memory_names_batch_size(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")

    monkeypatch.setattr(torch, "randn", out_of_memory)
    with pytest.raises(UserError, match=r"^--batch-size 4 is too large for cpu \(.* it ran out"):
        bench(tiny_model(), SHIFT, open_image_folder("sample"), OPTIONS, images=2, seconds=3.0)


def test_bench_json_has_the_three_rates(cli):
    code, out, err = cli(
        "bench",
        "--model",
        "resnet18_aa",
        "--weights",
        "none",
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--images",
        "1",
        "--seconds",
        "0.1",
        "--workers",
        "0",
        "--set",
        "epochs=1",
        "--json",
    )
    assert code == 0, err
    assert err == ""  # no progress under --json
    report = json.loads(out)
    for key in (
        "forward_views_per_second",
        "pipeline_views_per_second",
        "end_to_end_views_per_second",
    ):
        assert report[key] > 0
    assert report["end_to_end_over_forward"] == (
        report["end_to_end_views_per_second"] / report["forward_views_per_second"]
    )
    # resnet18_aa's baseline, and the FLOP ratio of the two at 224 pixels.
    assert report["baseline"] == "resnet18"
    assert round(report["flop_ratio"], 3) == 0.775
    assert report["forward_over_baseline"] == (
        report["interleaved_forward_views_per_second"] / report["baseline_forward_views_per_second"]
    )
    host = ("host_wait", "device_decode", "upload", "forward", "download", "other")
    spent = sum(report[f"end_to_end_{stage}_seconds"] for stage in host)
    assert spent == pytest.approx(report["end_to_end_seconds"], rel=1e-9)
    assert report["end_to_end_bottleneck"] in host


def test_bench_without_a_baseline_reports_none(cli):
    code, out, err = cli(*TINY_BENCH, "--model", "resnet18", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["baseline"] is None and "flop_ratio" not in report


def test_an_unknown_baseline_is_one_line(cli):
    code, out, err = cli(*TINY_BENCH, "--model", "resnet18_aa", "--baseline", "resnet18_ab")
    assert (code, out) == (2, "")
    assert err.startswith("aabench: error: unknown model 'resnet18_ab'") and err.count("\n") == 1


TINY_BENCH = (
    "bench", "--weights", "none", "--device", "cpu", "--batch-size", "2", "--images", "1",
    "--seconds", "0.1", "--workers", "0", "--set", "epochs=1",
)  # fmt: skip
