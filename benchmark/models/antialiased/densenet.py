"""Anti-aliased DenseNet: the stem max-pool runs at stride 1 then blurs, and each
transition's 2x2 average pool becomes a BlurPool."""

from __future__ import annotations

from collections import OrderedDict
from functools import partial

import torchvision
from torch import nn
from torchvision.models.densenet import DenseNet

from aabench.models.blurpool import BlurPool

ARCHS = ("densenet121", "densenet169", "densenet201", "densenet161")


def densenet(
    arch: str, filter_size: int = 4, pad_type: str = "reflect", num_classes: int = 1000
) -> DenseNet:
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    blur = partial(BlurPool, filter_size=filter_size, stride=2, pad_type=pad_type)
    stem_channels = model.features.conv0.out_channels
    modules = OrderedDict()
    for name, module in model.features.named_children():
        if name == "pool0":
            modules["max0"] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
            modules["pool0"] = blur(stem_channels)
            continue
        if name.startswith("transition"):
            module.pool = blur(module.conv.out_channels)
        modules[name] = module
    model.features = nn.Sequential(modules)
    return model


BUILDERS = {arch: partial(densenet, arch) for arch in ARCHS}
