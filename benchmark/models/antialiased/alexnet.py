"""Anti-aliased AlexNet (the released relu-first variant)."""

from __future__ import annotations

from torch import nn
from torchvision.models.alexnet import AlexNet

from aabench.models.blurpool import BlurPool


def alexnet(filter_size: int = 4, pad_type: str = "reflect", num_classes: int = 1000) -> AlexNet:
    def blur(channels: int) -> BlurPool:
        return BlurPool(channels, filter_size, stride=2, pad_type=pad_type)

    model = AlexNet(num_classes=num_classes)
    # torchvision's stem conv has stride 4; here it runs at stride 2 and a blur takes the
    # other factor 2. Every max-pool runs at stride 1 followed by a blur.
    model.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=2, padding=2),
        nn.ReLU(inplace=True),
        blur(64),
        nn.MaxPool2d(kernel_size=3, stride=1),
        blur(64),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=1),
        blur(192),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=1),
        blur(256),
    )
    return model
