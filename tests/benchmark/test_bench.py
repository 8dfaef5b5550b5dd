import json
import math

import torch
from torch import nn

from aabench.bench import bench, repeat_to
from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import RANDOM_WEIGHTS
from aabench.models.zoo import LoadedModel, ModelSpec
from aabench.suites.shift import ShiftSuite


def tiny_model() -> LoadedModel:
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    return LoadedModel(
        spec=ModelSpec(name="tiny", family="torchvision", arch="tiny"),
        module=module,
        preprocessing=Preprocessing(resize_size=40, crop_size=32),
        weights=RANDOM_WEIGHTS,
    )


def test_repeat_to_cycles_the_images():
    folder = open_image_folder("sample")
    repeated = repeat_to(folder, 12)
    assert len(repeated) == 12
    assert [s.path for s in repeated.samples[5:10]] == [s.path for s in folder.samples]


def test_bench_measures_three_positive_rates():
    torch.manual_seed(0)
    result = bench(
        tiny_model(),
        ShiftSuite(max_shift=8, epochs=1),
        open_image_folder("sample"),
        EngineOptions(device="cpu", batch_size=4, workers=0),
        images=6,
        seconds=0.2,
    )
    rates = [
        result.forward_views_per_second,
        result.pipeline_views_per_second,
        result.end_to_end_views_per_second,
    ]
    assert all(math.isfinite(rate) and rate > 0 for rate in rates)
    assert (result.images, result.views_per_image) == (6, 2)
    assert result.end_to_end_over_forward == rates[2] / rates[0]


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
