"""Shared helpers for the suite, engine and runner tests: tiny image folders and tiny models.

Models built with :func:`loaded` see ``x = pixel / 255`` exactly (mean 0, std 1), so a
black pixel is 0.0 and a white one 1.0 in the model's input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from aabench.data.folder import ImageFolder, open_image_folder
from aabench.engine import EngineOptions, Evaluation, evaluate
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import RANDOM_WEIGHTS
from aabench.models.zoo import LoadedModel, ModelSpec

TENCH = "n01440764"  # index 0
GOLDFISH = "n01443537"  # index 1
TABBY = "n02123045"  # index 281
WALL_CLOCK = "n04548280"  # index 892
NUM_CLASSES = 1000
IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # mean, std: the model sees pixel / 255


def make_image_folder(root: Path, classes: dict[str, list], suffix: str = ".png") -> Path:
    """Write ``root/<wnid>/img<i><suffix>`` for every image (PIL image or H x W x 3 uint8)."""
    root.mkdir(parents=True, exist_ok=True)
    for wnid, images in classes.items():
        (root / wnid).mkdir(exist_ok=True)
        for i, image in enumerate(images):
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            image.save(root / wnid / f"img{i}{suffix}")
    return root


def noise_folder(root: Path, shapes: dict[str, list[tuple[int, int]]], seed: int = 0) -> Path:
    """An image folder of uniform-noise images: ``shapes[wnid]`` = their (height, width)."""
    rng = np.random.default_rng(seed)
    images = {
        wnid: [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        for wnid, sizes in shapes.items()
    }
    return make_image_folder(root, images)


def solid(size: int, value: int | tuple[int, int, int]) -> np.ndarray:
    colour = (value,) * 3 if isinstance(value, int) else value
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (size, size, 3)).copy()


def edges(size: int, col: int, row: int) -> np.ndarray:
    """Red is 255 in columns >= ``col``, green 255 in rows >= ``row``, blue 0."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[:, col:, 0] = 255
    image[row:, :, 1] = 255
    return image


def loaded(module: nn.Module, resize: int = 40, crop: int = 32) -> LoadedModel:
    mean, std = IDENTITY
    return LoadedModel(
        spec=ModelSpec(name="toy", family="torchvision", arch="toy"),
        module=module,
        preprocessing=Preprocessing(mean=mean, std=std, resize_size=resize, crop_size=crop),
        weights=RANDOM_WEIGHTS,
    )


def run(
    module: nn.Module,
    suite,
    data: Path | ImageFolder,
    *,
    resize: int = 40,
    crop: int = 32,
    seed: int = 0,
    **options,
) -> Evaluation:
    folder = data if isinstance(data, ImageFolder) else open_image_folder(data)
    options = {"device": "cpu", "batch_size": 16, "workers": 0, "quiet": True, **options}
    return evaluate(loaded(module, resize, crop), suite, folder, EngineOptions(**options), seed)


class Constant(nn.Module):
    """Ignores its input: the same logits for every view."""

    def __init__(self, logits: torch.Tensor | None = None):
        super().__init__()
        if logits is None:
            logits = torch.linspace(-3.0, 3.0, NUM_CLASSES).flip(0)
        self.register_buffer("values", logits.float())

    def forward(self, x):
        return self.values.expand(x.shape[0], -1).clone()


def one_hot_logits(pred: torch.Tensor, classes: int = NUM_CLASSES) -> torch.Tensor:
    """Logits whose argmax is ``pred`` (int64, one per view), with no ties."""
    return -(torch.arange(classes)[None, :] - pred[:, None]).abs().float()


class FirstEdge(nn.Module):
    """class = first column whose red is white + 33 * first row whose green is white.

    Position-dependent: a view cut from ``edges(size, col, row)`` at offset (dy, dx)
    gets class ``max(0, col - dx) + 33 * max(0, row - dy)``.
    """

    def forward(self, x):
        columns = x[:, 0].mean(dim=1) > 0.5  # N x W
        rows = x[:, 1].mean(dim=2) > 0.5  # N x H
        pred = columns.int().argmax(dim=1) + 33 * rows.int().argmax(dim=1)
        return one_hot_logits(pred.long(), 33 * 33)


class Recording(nn.Module):
    """Wraps a module and records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batch_sizes: list[int] = []

    def forward(self, x):
        self.batch_sizes.append(int(x.shape[0]))
        return self.inner(x)
