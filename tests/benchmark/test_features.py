"""aabench.features: the circular bilinear upsampler of antialiased-cnns #41, the
distances computed at the layers' own size, and layer discovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from aabench.errors import UserError
from aabench.features import (
    Layer,
    choose_layers,
    circular_upsample,
    shift_distances,
    upsample_axis,
)
from aabench.models.zoo import create_model


def test_the_2x_step_is_the_documented_one_exactly():
    a, b, c, d = 0.3, -1.7, 2.9, 5.1
    signal = torch.tensor([a, b, c, d], dtype=torch.float64)
    expected = torch.tensor(
        [a, (a + b) / 2, b, (b + c) / 2, c, (c + d) / 2, d, (d + a) / 2], dtype=torch.float64
    )
    assert torch.equal(upsample_axis(signal, 0, 8), expected)


def test_factor_4_is_the_2x_step_applied_twice_exactly():
    signal = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        upsample_axis(signal, 1, 20), upsample_axis(upsample_axis(signal, 1, 10), 1, 20)
    )


def test_other_integer_factors_interpolate_linearly_and_circularly():
    signal = torch.tensor([0.0, 3.0, 9.0], dtype=torch.float64)
    third = torch.tensor([0, 1, 2, 3, 5, 7, 9, 6, 3], dtype=torch.float64)
    assert torch.allclose(upsample_axis(signal, 0, 9), third, atol=1e-12)
    assert torch.equal(upsample_axis(torch.tensor([2.5]), 0, 7), torch.full((7,), 2.5))
    with pytest.raises(ValueError, match="not an integer factor"):
        upsample_axis(signal, 0, 10)


def direct_distances(features, references, image_of_view, shifts, size):
    """The definition, at full resolution: a = roll(U ref), b = U f."""
    l2, cosine = [], []
    for i, (dh, dw) in enumerate(shifts):
        ref = references[image_of_view[i] : image_of_view[i] + 1].double()
        a = torch.roll(circular_upsample(ref, size), (int(dh), int(dw)), dims=(2, 3))
        b = circular_upsample(features[i : i + 1].double(), size)
        l2.append(float((a - b).norm() / a.norm()))
        cosine.append(float(1 - (a * b).sum() / (a.norm() * b.norm())))
    return np.array(l2), np.array(cosine)


@pytest.mark.parametrize("shape", [(3, 4, 8), (2, 16, 16), (5, 3, 5)])
def test_distances_at_the_layer_size_equal_the_full_resolution_definition(shape):
    generator = torch.Generator().manual_seed(1)
    channels, height, width = shape
    features = torch.randn(6, channels, height, width, generator=generator)
    references = torch.randn(2, channels, height, width, generator=generator)
    image_of_view = np.array([0, 0, 0, 1, 1, 1])
    shifts = np.array([[0, 0], [1, 3], [5, 2], [0, 7], [3, 3], [14, 1]])
    size = (16, 16) if shape != (5, 3, 5) else (15, 15)
    l2, cosine = shift_distances(features, references, image_of_view, shifts, size)
    want_l2, want_cosine = direct_distances(features, references, image_of_view, shifts, size)
    assert np.allclose(l2.numpy(), want_l2, rtol=1e-9, atol=1e-12)
    assert np.allclose(cosine.numpy(), want_cosine, rtol=1e-9, atol=1e-12)


def test_a_vector_is_its_own_shift():
    references = torch.tensor([[3.0, 4.0]])
    features = torch.tensor([[3.0, 4.0], [3.0, -4.0]])
    l2, cosine = shift_distances(
        features, references, np.zeros(2, int), np.ones((2, 2), int), (8, 8)
    )
    assert l2.tolist() == [0.0, 8.0 / 5.0]  # ||(0, 8)|| / ||(3, 4)||
    assert cosine.tolist() == [0.0, pytest.approx(1 - (9 - 16) / 25)]


def discovered(name: str, size: int = 64) -> list[str]:
    module = create_model(name, weights="none", init_seed=0).module.eval()
    with torch.inference_mode():
        layers = choose_layers(module, module, torch.zeros(1, 3, size, size), None)
    return [layer.label for layer in layers]


def test_discovery_finds_resnet18s_downsampling_layers_in_network_order():
    assert discovered("resnet18") == [
        "conv1",
        "maxpool",
        "layer2.0.conv1",
        "layer2.0.downsample.0",
        "layer3.0.conv1",
        "layer3.0.downsample.0",
        "layer4.0.conv1",
        "layer4.0.downsample.0",
        "fc:input",  # the pooled feature (avgpool's 1 x 1 output, flattened)
    ]


def test_discovery_finds_the_blurpools_and_not_the_stride_1_max_of_resnet18_aa():
    # maxpool.0 is MaxPool(kernel 2, stride 1): one pixel smaller, same resolution.
    assert discovered("resnet18_aa") == [
        "conv1",
        "maxpool.1",
        "layer2.0.conv2.0",
        "layer2.0.downsample.0",
        "layer3.0.conv2.0",
        "layer3.0.downsample.0",
        "layer4.0.conv2.0",
        "layer4.0.downsample.0",
        "fc:input",
    ]


def test_chosen_layers_are_checked_against_the_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 2)
    )
    example = torch.zeros(1, 3, 32, 32)
    chosen = choose_layers(model, model, example, ["0", "2:input"])
    assert chosen == [Layer("0"), Layer("2", input=True)]
    with pytest.raises(UserError, match=r"no module '9'.*found automatically: 0, 2:input"):
        choose_layers(model, model, example, ["9"])
    with pytest.raises(UserError, match="17x17 map does not divide the 33x33 input"):
        strided = nn.Sequential(model[0])  # no Linear: its size follows the input's
        choose_layers(strided, strided, torch.zeros(1, 3, 33, 33), None)
