"""Anti-aliased MobileNetV2: stride-2 depthwise convs run at stride 1 then blur."""

from __future__ import annotations

import torchvision
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2

from aabench.models.blurpool import BlurPool


def mobilenet_v2(
    filter_size: int = 4, pad_type: str = "reflect", num_classes: int = 1000
) -> MobileNetV2:
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    for block in model.features:
        if not isinstance(block, InvertedResidual) or block.stride != 2:
            continue
        expand, depthwise, project, norm = block.conv
        depthwise[0].stride = (1, 1)
        hidden = depthwise[0].out_channels
        blur = BlurPool(hidden, filter_size, stride=2, pad_type=pad_type)
        block.conv = nn.Sequential(expand, depthwise, blur, project, norm)
    # The released classifier has no dropout, so its linear layer is classifier.0.
    model.classifier = nn.Sequential(model.classifier[1])
    return model


BUILDERS = {"mobilenet_v2": mobilenet_v2}
