"""The 23 anti-aliased architectures of the released checkpoints, by name.

Each builder takes (filter_size, pad_type, num_classes) and returns a module whose
state-dict keys, shapes and dtypes equal the released checkpoints' for that filter size.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from aabench.models.antialiased import alexnet, densenet, mobilenet, resnet, vgg

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "alexnet": alexnet.alexnet,
    **vgg.BUILDERS,
    **resnet.BUILDERS,
    **densenet.BUILDERS,
    **mobilenet.BUILDERS,
}


def build_antialiased(
    arch: str, filter_size: int = 4, pad_type: str = "reflect", num_classes: int = 1000
) -> nn.Module:
    return ARCHITECTURES[arch](filter_size=filter_size, pad_type=pad_type, num_classes=num_classes)
