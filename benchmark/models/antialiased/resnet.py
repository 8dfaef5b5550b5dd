"""Anti-aliased ResNet family (ResNet, ResNeXt, Wide ResNet).

Built from torchvision's module tree, then rewired where the released checkpoints
differ: the stem max-pool, and every stride-2 block and shortcut.
"""

from __future__ import annotations

from functools import partial

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from aabench.models.blurpool import BlurPool

ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def _antialias_block(block: nn.Module, blur) -> None:
    """Move a stride-2 block's subsampling behind a BlurPool."""
    if isinstance(block, BasicBlock):
        # conv1 runs at stride 1; conv2 becomes (BlurPool, conv3x3).
        block.conv1.stride = (1, 1)
        block.conv2 = nn.Sequential(blur(block.conv1.out_channels), block.conv2)
    elif isinstance(block, Bottleneck):
        # The grouped 3x3 conv2 runs at stride 1; conv3 becomes (BlurPool, conv1x1).
        block.conv2.stride = (1, 1)
        block.conv3 = nn.Sequential(blur(block.conv2.out_channels), block.conv3)
    else:  # pragma: no cover - torchvision only builds these two block types
        raise TypeError(f"unexpected ResNet block {type(block).__name__}")
    conv, norm = block.downsample
    conv.stride = (1, 1)
    block.downsample = nn.Sequential(blur(conv.in_channels), conv, norm)
    block.stride = 1


def resnet(
    arch: str, filter_size: int = 4, pad_type: str = "reflect", num_classes: int = 1000
) -> ResNet:
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    blur = partial(BlurPool, filter_size=filter_size, stride=2, pad_type=pad_type)
    # The released models pool the stem with a 2x2 max at stride 1, then blur.
    model.maxpool = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=1), blur(64))
    for layer in (model.layer2, model.layer3, model.layer4):
        _antialias_block(layer[0], blur)
    return model


BUILDERS = {arch: partial(resnet, arch) for arch in ARCHS}
