"""Where the time goes: the model's forward-only throughput (the ceiling), the data
pipeline alone (decode + views, no model), and the suite end to end, all in views per
second on the same device, batch size and thread count, measured in one process."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader

from aabench.data.folder import ImageFolder
from aabench.engine import (
    EngineOptions,
    PreparedModel,
    ViewDataset,
    _collate,
    _worker_init,
    evaluate,
    resolve_device,
)
from aabench.models.zoo import LoadedModel
from aabench.suites.base import Suite


@dataclass
class BenchResult:
    forward_views_per_second: float
    pipeline_views_per_second: float
    end_to_end_views_per_second: float
    images: int
    views_per_image: int

    @property
    def end_to_end_over_forward(self) -> float:
        return self.end_to_end_views_per_second / self.forward_views_per_second

    @property
    def pipeline_over_forward(self) -> float:
        return self.pipeline_views_per_second / self.forward_views_per_second


def repeat_to(folder: ImageFolder, images: int) -> ImageFolder:
    """The folder's images cycled to ``images`` entries (a small set is decoded again)."""
    samples = [folder.samples[i % len(folder.samples)] for i in range(images)]
    return replace(folder, samples=tuple(samples))


def forward_only(
    model: LoadedModel, device: torch.device, options: EngineOptions, seconds: float
) -> float:
    """Views/s of the model alone on a resident, already normalised batch."""
    prepared = PreparedModel(model, device, options)
    size = model.preprocessing.crop_size
    x = torch.randn(options.batch_size, 3, size, size, device=device)
    if prepared.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    enabled = prepared.amp_dtype is not None

    def step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=prepared.amp_dtype or torch.float32, enabled=enabled),
        ):
            prepared.module(x)

    for _ in range(2):  # warm-up: allocator, cuDNN autotune, compile
        step()
    _synchronise(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    _synchronise(device)
    return count * options.batch_size / (time.perf_counter() - start)


def pipeline_only(
    model: LoadedModel, suite: Suite, folder: ImageFolder, options: EngineOptions, seed: int
) -> float:
    """Views/s of decoding and cutting views in the DataLoader workers, no model."""
    per_image = max(1, suite.views_per_image())
    loader = DataLoader(
        ViewDataset(folder, suite, model, seed),
        batch_size=max(1, -(-options.batch_size // per_image)),
        num_workers=options.worker_count,
        collate_fn=_collate,
        worker_init_fn=_worker_init if options.worker_count else None,
    )
    views, start = 0, time.perf_counter()
    for items in loader:
        views += sum(item["views"].shape[0] for item in items if "views" in item)
    return views / (time.perf_counter() - start)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    images: int = 64,
    seconds: float = 10.0,
    seed: int = 0,
) -> BenchResult:
    device = resolve_device(options.device)
    folder = repeat_to(folder, images)
    quiet = replace(options, quiet=True, skip_bad_images=False)
    forward = forward_only(model, device, quiet, seconds)
    pipeline = pipeline_only(model, suite, folder, quiet, seed)
    evaluation = evaluate(model, suite, folder, quiet, seed=seed, device=device)
    return BenchResult(
        forward_views_per_second=forward,
        pipeline_views_per_second=pipeline,
        end_to_end_views_per_second=evaluation.views_per_second,
        images=evaluation.images,
        views_per_image=suite.views_per_image(),
    )
