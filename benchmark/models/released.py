"""The released anti-aliased checkpoints: where they live and what they are called.

File names follow torch.hub's convention ``<stem>-<first 8 hex digits of SHA-256>.pth``.
``<arch>_lpf<k>`` were trained from scratch; ``<arch>_lpf4_finetune`` were initialised
from torchvision's IMAGENET1K_V1 weights and fine-tuned (what ``<arch>_aa`` loads).
"""

from __future__ import annotations

BASE_URL = "https://antialiased-cnns.s3.us-east-2.amazonaws.com/weights_v0.1/"
LICENCE = "CC BY-NC-SA 4.0 (non-commercial use only)"

_FILES = """
alexnet_lpf2-da8aca74 alexnet_lpf3-f9bbc410 alexnet_lpf4-0114fe25
alexnet_lpf4_finetune-20598a7a alexnet_lpf5-4fa3706a
densenet121_lpf2-7da7d4cd densenet121_lpf3-0f267ad8 densenet121_lpf4-edeaab00
densenet121_lpf4_finetune-eceaa619 densenet121_lpf5-ebc7880c
densenet161_lpf4_finetune-a5e0f328 densenet169_lpf4_finetune-992131e6
densenet201_lpf4_finetune-736979b2
mobilenet_v2_lpf2-f4379012 mobilenet_v2_lpf3-23b2e2ee mobilenet_v2_lpf4-2e0b9cb9
mobilenet_v2_lpf4_finetune-7eed94b1 mobilenet_v2_lpf5-ab8fe968
resnet101_lpf2-3d00941d resnet101_lpf3-928f1444 resnet101_lpf4-f8a116ff
resnet101_lpf4_finetune-9280acb0 resnet101_lpf5-1f3745af
resnet152_lpf4_finetune-7f67d9ae
resnet18_lpf2-6e2ee76f resnet18_lpf3-449351b9 resnet18_lpf4-8c77af40
resnet18_lpf4_finetune-8cc58f59 resnet18_lpf5-c1eed0a1
resnet34_lpf2-4707aed9 resnet34_lpf3-16aa6c48 resnet34_lpf4-55747267
resnet34_lpf4_finetune-db622952 resnet34_lpf5-85283561
resnet50_lpf2-f0f7589d resnet50_lpf3-a4e868d2 resnet50_lpf4-994b528f
resnet50_lpf4_finetune-cad66808 resnet50_lpf5-9953c9ad
resnext101_32x8d_lpf4_finetune-8f13a25d resnext50_32x4d_lpf4_finetune-9106e549
vgg11_bn_lpf4_finetune-5d60b5e4 vgg11_lpf4_finetune-35eab449
vgg13_bn_lpf4_finetune-45e2a72f vgg13_lpf4_finetune-d8ff02c4
vgg16_bn_lpf2-2c2052a8 vgg16_bn_lpf3-1782878a vgg16_bn_lpf4-a1c3559b
vgg16_bn_lpf4_finetune-1dd798d1 vgg16_bn_lpf5-c500b52f
vgg16_lpf2-60268e0c vgg16_lpf3-e9b0ce42 vgg16_lpf4-de9267ac
vgg16_lpf4_finetune-79c9dff7 vgg16_lpf5-1391f70c
vgg19_bn_lpf4_finetune-d0114293 vgg19_lpf4_finetune-7ab2cf45
wide_resnet101_2_lpf4_finetune-da4eae04 wide_resnet50_2_lpf4_finetune-02a183f7
"""

# "resnet18_lpf4_finetune" -> "resnet18_lpf4_finetune-8cc58f59.pth"
RELEASED_FILES: dict[str, str] = {
    entry.rsplit("-", 1)[0]: f"{entry}.pth" for entry in _FILES.split()
}


def released_file(arch: str, filter_size: int, finetuned: bool) -> str | None:
    """The released file name for this architecture and filter, or None if none exists."""
    stem = f"{arch}_lpf{filter_size}" + ("_finetune" if finetuned else "")
    return RELEASED_FILES.get(stem)
