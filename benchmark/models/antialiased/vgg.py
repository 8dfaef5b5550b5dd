"""Anti-aliased VGG: every 2x2 max-pool runs at stride 1 and is followed by a BlurPool."""

from __future__ import annotations

from functools import partial

from torch import nn
from torchvision.models.vgg import VGG

from aabench.models.blurpool import BlurPool

# torchvision's layer configurations: channel counts, "M" = max-pool.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", *[512, 512, 512, "M"] * 2],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", *[512, 512, 512, 512, "M"] * 2],
}


def _features(config: list, batch_norm: bool, filter_size: int, pad_type: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = 3
    for item in config:
        if item == "M":
            layers += [
                nn.MaxPool2d(kernel_size=2, stride=1),
                BlurPool(channels, filter_size, stride=2, pad_type=pad_type),
            ]
            continue
        layers.append(nn.Conv2d(channels, item, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


def vgg(
    depth_name: str,
    batch_norm: bool,
    filter_size: int = 4,
    pad_type: str = "reflect",
    num_classes: int = 1000,
) -> VGG:
    features = _features(CONFIGS[depth_name], batch_norm, filter_size, pad_type)
    return VGG(features, num_classes=num_classes)


BUILDERS = {
    f"{name}{'_bn' if bn else ''}": partial(vgg, name, bn)
    for name in CONFIGS
    for bn in (False, True)
}
