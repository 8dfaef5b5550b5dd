"""The Python API: ``aabench.evaluate`` and ``aabench.ShiftConsistency``.

``evaluate(model, suite, data, ...)`` measures any ``nn.Module`` (or a model name) as
`aabench run` does, through the same runner, and returns a :class:`Result` whose
``save(out)`` writes exactly the files `run --out out` writes. The module is left as it
was: never moved (a module on another device than ``device`` is evaluated as a copy),
its train/eval mode restored, its weights untouched unless ``weights=`` loads a
checkpoint into it, as `run --weights` does.

``ShiftConsistency`` is the small, fast check a training loop calls once an epoch: a
fixed subset decoded once, its shifted views kept in memory, so each call costs the
forward passes only.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn

from aabench import checks
from aabench.errors import UserError
from aabench.models import custom
from aabench.models.blurpool import BlurPool
from aabench.models.catalogue import ModelSpec
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import RANDOM_WEIGHTS, own_weights, read_state_dict
from aabench.models.zoo import LoadedModel, _user_weights, check_display_name, create_model

if TYPE_CHECKING:
    from aabench.data.folder import ImageFolder
    from aabench.suites.base import Suite

__all__ = ["Result", "ShiftConsistency", "evaluate"]


@dataclass
class Result:
    """One suite's measurement: the tidy table, the provenance and the per-view samples."""

    table: pd.DataFrame
    provenance: dict
    samples: pd.DataFrame

    @property
    def model(self) -> str:
        return self.provenance["model"]

    @property
    def suite(self) -> str:
        return self.provenance["suite"]

    def save(self, out: str | os.PathLike = "runs") -> dict[str, Path]:
        """Write ``<out>/<model>/<suite>.csv``, ``.json`` and ``.samples.csv.gz``, as
        `aabench run --out out` does (all three or none); returns their paths."""
        from aabench.results.files import check_writable
        from aabench.runner import output_paths, write_outputs

        directory = Path(out) / self.model
        check_writable(directory)
        paths = output_paths(directory, self.suite)
        write_outputs(paths, self.samples, self.provenance, self.table)
        return paths

    def __repr__(self) -> str:
        return (
            f"Result({self.model!r}, {self.suite!r}, run_id={self.provenance['run_id']!r}, "
            f"{len(self.table)} rows)"
        )


def evaluate(
    model: nn.Module | str | LoadedModel,
    suite: str = "shift",
    data: str | os.PathLike | ImageFolder = "sample",
    preprocessing: Preprocessing | dict | None = None,
    device: str | torch.device | None = None,
    *,
    name: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    amp: str = "off",
    channels_last: bool | None = None,
    compile: bool = False,
    blurpool: str = "auto",
    fold_batchnorm: bool | None = None,
    forward_chunk: int | None = None,
    quiet: bool = True,
    skip_bad_images: bool = False,
    **suite_params,
) -> Result | None:
    """Evaluate ``model`` on one suite; the :class:`Result` (None on ranks other than 0
    of a distributed job, where every rank must call it).

    ``model``: an ``nn.Module`` (a ``DistributedDataParallel`` or ``DataParallel``
    wrapper is unwrapped), a model name as `run --model` takes, or a LoadedModel.
    ``preprocessing``: a Preprocessing (the module's), or a dict of overrides of the
    default one (ImageNet mean/std, resize 256, crop 224, bilinear; keys resize_size
    or resize, crop_size or crop, interpolation, mean, std). ``device``: None for the
    module's own (its first parameter's; the CPU without parameters). ``weights``: a
    checkpoint loaded into the module strictly, as `run --weights` does; None keeps the
    module's own weights (recorded by their SHA-256); "none" records them as random.
    ``name``: the model's name in the outputs (default: the module's class name).
    ``channels_last``: None for the memory format measured faster on the device
    (channels-last on the CPU and CUDA); a module you pass gets its own layout back.
    ``fold_batchnorm``: None to compute each BatchNorm inside the convolution before it
    where that was measured faster (the CPU), True or False to choose; a module you pass
    gets its own modules back. ``forward_chunk``: views per model call within a pass;
    None for the device's measured default (8 on the CPU, the whole pass on CUDA), 0 for
    the whole pass.
    ``suite_params``: the suite's parameters (`aabench suites` lists them), as values or
    as the strings ``--set`` takes.
    """
    from aabench.data.folder import ImageFolder, open_image_folder
    from aabench.engine import EngineOptions
    from aabench.runner import run_suite

    seed = checks.seed(seed, "seed")
    suite_object = build_suite(suite, suite_params)
    overrides, base = _preprocessing_arguments(preprocessing)
    world = _world()
    folder = data if isinstance(data, ImageFolder) else open_image_folder(data, limit=limit)
    if isinstance(model, str | LoadedModel):  # ours to build and move
        if isinstance(model, str):
            model = create_model(
                model, weights=weights, init_seed=seed, preprocessing=overrides, display_name=name
            )
        loaded = model
        evaluated = loaded.build()
        wanted = str(device) if device is not None else "auto"
    else:
        module = unwrap(model)
        if not isinstance(module, nn.Module):
            raise UserError(
                f"evaluate() needs a torch.nn.Module or a model name, not a {type(model).__name__}"
            )
        target = torch.device(device) if device is not None else module_device(module)
        if target.type == "cuda" and target.index is None:
            target = torch.device("cuda", torch.cuda.current_device())
        evaluated = module if module_device(module) == target else _copy_to(module, target)
        loaded = in_memory_model(evaluated, name, weights, base, overrides)
        wanted = str(target)
    options = EngineOptions(
        device=wanted,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        compile=compile,
        blurpool=blurpool,
        fold_batchnorm=fold_batchnorm,
        forward_chunk=forward_chunk,
        quiet=quiet or not world.is_main,
        skip_bad_images=skip_bad_images,
    )
    check_fit(loaded, suite_object, evaluated)
    with kept_modes(evaluated):
        result = run_suite(loaded, suite_object, folder, options, seed=seed, out=None, world=world)
    if result is None:
        return None
    return Result(table=result.table, provenance=result.provenance, samples=result.records)


# How the view-size check names what set a suite's views (Suite.view_size_source).
_SIZE_SETTINGS = {None: "preprocessing crop_size={}", "crop_size": "crop_size={}"}


def check_fit(loaded: LoadedModel, suite: Suite, module: nn.Module) -> None:
    """The suite's parameters fit the model's crop, and the model takes its views, as
    `run` checks them: one UserError before any image is read."""
    from aabench.models.preprocessing import check_views_fit

    suite.check_geometry(loaded.preprocessing)
    check_views_fit([suite], loaded.preprocessing, module, loaded.name, _SIZE_SETTINGS.get)


def build_suite(name: str, params: dict) -> Suite:
    """A suite by name with typed parameters (strings are converted as ``--set`` does)."""
    from aabench.suites.params import convert, parameter_types
    from aabench.suites.registry import get_suite

    cls = get_suite(name)
    types_ = parameter_types(cls)
    unknown = sorted(set(params) - set(types_))
    if unknown:
        raise UserError(
            f"unknown parameter {', '.join(unknown)} for suite {name}: valid parameters are "
            f"{', '.join(sorted(types_)) or 'none'}"
        )
    typed = {
        key: convert(value, types_[key], key) if isinstance(value, str) else value
        for key, value in params.items()
    }
    return cls(**typed)


def _preprocessing_arguments(value) -> tuple[dict, Preprocessing]:
    """(overrides, base): a dict overrides the default, a Preprocessing replaces it."""
    if value is None:
        return {}, Preprocessing()
    if isinstance(value, Preprocessing):
        return {}, value
    if isinstance(value, dict):
        return custom.preprocessing_overrides(value), Preprocessing()
    raise UserError(
        f"preprocessing is a {type(value).__name__}: give an aabench Preprocessing or a dict "
        "of its fields (resize_size, crop_size, interpolation, mean, std)"
    )


def unwrap(model):
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _copy_to(module: nn.Module, device: torch.device) -> nn.Module:
    """A copy on ``device``: the caller's module stays where it is."""
    with torch.inference_mode(False), torch.no_grad():
        return copy.deepcopy(module).to(device)


def in_memory_model(
    module: nn.Module,
    name: str | None,
    weights: str | None,
    base: Preprocessing,
    overrides: dict,
) -> LoadedModel:
    """A LoadedModel for a module given in memory, recorded as `run` records a
    ``python:`` factory's: its code's SHA-256s, its weights (a checkpoint loaded into
    it, or its own state's SHA-256)."""
    if name is not None:
        check_display_name(name)
    label = name or type(module).__name__
    if weights is None:
        record = own_weights(custom.state_sha256(module))
    elif weights == "none":
        record = RANDOM_WEIGHTS
    else:
        from aabench.models.weights import load_strict

        path, record = _user_weights(weights)
        with torch.inference_mode(False), torch.no_grad():
            load_strict(module, read_state_dict(path, record.sha256), f"model {label}")
    spec = ModelSpec(name=label, family="python", arch=type(module).__name__)
    return LoadedModel(
        spec=spec,
        module=module,
        preprocessing=base,
        weights=record,
        overrides=overrides,
        name=label,
        source=custom.module_identity(module),
    )


@contextlib.contextmanager
def kept_modes(module: nn.Module):
    """Give the caller's module back as it was: every submodule's train/eval flag (a
    model may hold frozen BatchNorms in eval inside a training model), class and
    BlurPool form (aabench.models.blurpool.use_form changes them), and its parameters'
    and buffers' tensors themselves (a channels-last conversion replaces them, and
    under inference mode with inference tensors, which could not be trained)."""
    subs = list(module.modules())
    kept = [(sub, sub.training, sub.__class__, getattr(sub, "form", None)) for sub in subs]
    parameters = [
        (sub, name, p, p.data)
        for sub in subs
        for name, p in sub._parameters.items()
        if p is not None
    ]
    buffers = [(sub, dict(sub._buffers), set(sub._non_persistent_buffers_set)) for sub in subs]
    try:
        yield
    finally:
        for sub, training, kind, form in kept:
            sub.training = training
            sub.__class__ = kind
            if isinstance(sub, BlurPool):
                sub.form = form
        with torch.inference_mode(False), torch.no_grad():
            for sub, name, parameter, data in parameters:
                parameter.data = data
                sub._parameters[name] = parameter
        for sub, own, non_persistent in buffers:  # folding adds buffers of its own
            sub._buffers.clear()
            sub._buffers.update(own)
            sub._non_persistent_buffers_set.clear()
            sub._non_persistent_buffers_set.update(non_persistent)


# ------------------------------------------------------------------- distributed


def _world():
    """The torch.distributed job this process is part of, if the caller started one."""
    import torch.distributed as dist

    from aabench.distributed import World

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return World()
    return ProcessGroupWorld()


class ProcessGroupWorld:
    """The caller's process group as the runner's World: shards, broadcast and gather
    through a gloo group (objects travel in CPU memory, whatever the backend)."""

    _groups: dict = {}  # noqa: RUF012 - one gloo group per default group, made once

    def __init__(self):
        import torch.distributed as dist

        from aabench.distributed import World

        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self._shards = World(self.rank, self.size)
        default = dist.distributed_c10d._get_default_group()
        if dist.get_backend() == "gloo":
            self.group = None
        else:
            if id(default) not in self._groups:
                self._groups[id(default)] = dist.new_group(backend="gloo")
            self.group = self._groups[id(default)]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, positions, block: int = 1) -> np.ndarray:
        return self._shards.shard(positions, block)

    def poll(self) -> None:
        return None

    def broadcast(self, value):
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value):
        import torch.distributed as dist

        gathered = [None] * self.size if self.is_main else None
        dist.gather_object(value, gathered, dst=0, group=self.group)
        return gathered


# --------------------------------------------------------------- a validation loop


class ShiftConsistency:
    """Random-shift consistency and accuracy on a fixed subset, for a training loop:

        check = aabench.ShiftConsistency(data="/datasets/imagenet/val", limit=500, every=5)
        for epoch in range(epochs):
            train_one_epoch(model)
            if (metrics := check(model, epoch)) is not None:
                log(metrics)   # {"epoch", "consistency", "accuracy", "n", "views"}

    The subset is ``limit`` images spread over the classes (the same every time), each
    with one pair of shifted crops drawn from (``seed``, image), as the shift suite does
    with ``epochs=1``. The views are decoded and cut on the first call and kept in memory
    (uint8), so every later call costs only the forward passes. It runs the module
    itself (a DDP wrapper is unwrapped: no collectives), on the module's device, in eval
    mode under inference_mode, and restores the module's modes. Call it on one rank, or
    on all (each computes the same numbers).
    """

    def __init__(
        self,
        data: str | os.PathLike = "sample",
        limit: int | None = 256,
        every: int = 1,
        seed: int = 0,
        max_shift: int = 32,
        mode: str = "crop",
        preprocessing: Preprocessing | dict | None = None,
        batch_size: int = 64,
    ):
        from aabench.suites.shift import ShiftSuite

        if every < 1:
            raise UserError(f"every must be at least 1 (epochs between checks), got {every}")
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        seed = checks.seed(seed, "seed")
        self.data, self.limit, self.every, self.seed = data, limit, every, seed
        self.batch_size = batch_size
        self.suite = ShiftSuite(max_shift=max_shift, epochs=1, mode=mode)
        overrides, base = _preprocessing_arguments(preprocessing)
        self.preprocessing = custom.apply_overrides(base, overrides)
        self.suite.check_geometry(self.preprocessing)
        self.views: torch.Tensor | None = None  # N*2 x 3 x H x W uint8, pairs adjacent
        self.labels: torch.Tensor | None = None  # one per view

    def prepare(self) -> None:
        """Decode the subset and cut its views (done by the first call otherwise)."""
        from aabench.data.folder import open_image_folder
        from aabench.engine import decode

        folder = open_image_folder(self.data, limit=self.limit)
        views, labels = [], []
        for position, sample in enumerate(folder.samples):
            image = self.suite.prepare(decode(folder.root / sample.file), self.preprocessing)
            cut = self.suite.views(image, sample, position, self.seed)
            views.append(cut.images)
            labels += [sample.label] * len(cut.images)
        self.views = torch.cat(views)
        self.labels = torch.tensor(labels, dtype=torch.int64)

    def due(self, epoch: int | None) -> bool:
        return epoch is None or epoch % self.every == 0

    def __call__(self, model: nn.Module, epoch: int | None = None) -> dict | None:
        if not self.due(epoch):
            return None
        if self.views is None:
            self.prepare()
        module = unwrap(model)
        device = module_device(module)
        mean = torch.tensor(self.preprocessing.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.preprocessing.std, device=device).view(1, 3, 1, 1) * 255
        preds = []
        with kept_modes(module), torch.inference_mode():
            module.eval()
            for start in range(0, len(self.views), self.batch_size):
                batch = self.views[start : start + self.batch_size].to(device).float()
                preds.append(module((batch - mean) / std).argmax(dim=1).cpu())
        pred = torch.cat(preds)
        pairs = pred.view(-1, 2)
        agree = (pairs[:, 0] == pairs[:, 1]).double().mean().item()
        correct = (pred == self.labels).double().mean().item()
        return {
            "epoch": epoch,
            "consistency": 100.0 * agree,
            "accuracy": 100.0 * correct,
            "n": len(pairs),
            "views": len(pred),
        }
