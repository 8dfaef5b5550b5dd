"""Runs a model over a suite's views: devices, AMP, channels-last, compile, batching,
DataLoader workers, progress. Knows nothing about any metric.

Workers decode each image once and cut all its views; the main process only moves
uint8 views to the device, normalises them there, runs the model in batches of exactly
``batch_size`` views, and reduces logits to a few numbers per view before they leave
the device.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from aabench import checks
from aabench.checks import printable
from aabench.data.folder import ImageFolder
from aabench.errors import UserError
from aabench.models.blurpool import FORMS as BLURPOOL_FORMS
from aabench.models.blurpool import use_form
from aabench.models.folding import fold_batchnorms, folding_is_faster
from aabench.models.zoo import LoadedModel
from aabench.suites.base import RANK_COLUMNS, Suite
from aabench.timing import Timings, span, timed
from aabench.transfer import PendingOutputs, StagingRing

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Whether channels-last is the faster memory format, by device type, from measurements
# (README, "Performance"): on a 2-core CPU the forward of resnet18_aa runs at 36.1 views/s
# channels-last against 26.5 contiguous, resnet50_aa at 14.7 against 10.7, and the
# baselines gain alike (tools/blurpool_forms.py, batch 16); on CUDA convolutions in bf16
# run on tensor cores in NHWC. A device type not listed keeps the contiguous format.
CHANNELS_LAST_FASTER = {"cpu": True, "cuda": True}
# Views per model call within a pass, by device type (0 or missing: the whole pass).
# On the 2-core CPU a batch of 16 views ran forward-only, channels-last, BatchNorms
# folded, in chunks of 8 at 1.01-1.15x the rate of one call (resnet18_aa 1.12, resnet50_aa
# 1.07, mobilenet_v2_aa 1.15, densenet121_aa 1.12, vgg16_bn_aa 1.01; their baselines
# 1.07-1.10): a chunk's activations stay in the cache. Larger passes gain as much.
FORWARD_CHUNK = {"cpu": 8}
# Per-view outputs the engine computes for every suite.
OUTPUT_COLUMNS = ("pred", "correct", "top5_correct", "p_true", "p_other")


@dataclass
class EngineOptions:
    device: str = "auto"
    batch_size: int = 64  # views per forward pass
    workers: int | None = None  # None: one per spare core, at most 8
    amp: str = "off"
    channels_last: bool | None = None  # None: the faster format measured for the device
    compile: bool = False
    quiet: bool = False
    skip_bad_images: bool = False
    blurpool: str = "auto"  # BlurPool's form: auto = the fastest measured for the device
    fold_batchnorm: bool | None = None  # None: where measured faster for the device
    forward_chunk: int | None = None  # views per model call; None: FORWARD_CHUNK, 0: all

    def __post_init__(self):
        if self.amp not in AMP_DTYPES:
            raise UserError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers is not None:
            checks.workers(self.workers)
        chunk = self.forward_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int)):
            raise UserError(f"--forward-chunk must be a whole number of views, got {chunk!r}")
        if chunk is not None and chunk < 0:
            raise UserError(f"--forward-chunk must be 0 (the whole pass) or more, got {chunk}")
        if self.blurpool not in ("auto", *BLURPOOL_FORMS):
            raise UserError(
                f"--blurpool must be auto or one of {', '.join(BLURPOOL_FORMS)}, "
                f"got {self.blurpool!r}"
            )

    def uses_channels_last(self, device: torch.device) -> bool:
        if self.channels_last is None:
            return CHANNELS_LAST_FASTER.get(device.type, False)
        return self.channels_last

    def folds_batchnorm(self, device: torch.device, suite: Suite | None = None) -> bool:
        """Whether BatchNorms are folded into their convolutions (models.folding): never
        for a suite that measures layer outputs, which folding would change."""
        if suite is not None and suite.observes_layers:
            self.check_suite(suite)
            return False
        if self.fold_batchnorm is None:
            return folding_is_faster(device, self.uses_channels_last(device))
        return self.fold_batchnorm

    def chunk_for(self, device: torch.device, suite: Suite | None = None) -> int:
        """Views per model call within a pass (0: the whole pass at once): never chunked
        for a suite that measures layer outputs, which sees each pass whole."""
        if suite is not None and suite.observes_layers:
            self.check_suite(suite)
            return 0
        if self.forward_chunk is None:
            return FORWARD_CHUNK.get(device.type, 0)
        return self.forward_chunk

    def check_suite(self, suite: Suite) -> None:
        """Refuse what would change a suite's measurement of layer outputs."""
        if not suite.observes_layers:
            return
        if self.fold_batchnorm:
            raise UserError(
                f"--fold-batchnorm: the {suite.name} suite measures layer outputs, which "
                "folding changes; run it without the flag"
            )
        if self.forward_chunk:
            raise UserError(
                f"--forward-chunk: the {suite.name} suite measures layer outputs over "
                "whole passes; run it without the option"
            )

    @property
    def worker_count(self) -> int:
        if self.workers is not None:
            return self.workers
        return min(8, max(1, (os.cpu_count() or 2) - 1))


@dataclass
class Part:
    """Finished images: every view run, or the image skipped. Positions are global
    (places in ``folder.samples``), so parts from shards, ranks and earlier sessions of
    one run join into exactly the records a single uninterrupted process makes."""

    positions: np.ndarray  # every finished image, skipped ones included
    records: pd.DataFrame  # their records, by position then view
    record_positions: np.ndarray  # the position of each record
    skipped: dict[int, str] = field(default_factory=dict)  # position -> "path: reason"

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def views(self) -> int:
        """Views its records stand for (a folded row counts its ``views``)."""
        return view_count(self.records)

    def split(self, cut: int | None) -> tuple[Part, Part]:
        """(the images at positions below ``cut``, the rest); None: (all, nothing)."""
        cut = np.iinfo(np.int64).max if cut is None else cut
        halves = []
        for below in (True, False):
            keep = (self.positions < cut) == below
            kept = (self.record_positions < cut) == below
            halves.append(
                Part(
                    positions=self.positions[keep],
                    records=self.records[kept].reset_index(drop=True),
                    record_positions=self.record_positions[kept],
                    skipped={p: t for p, t in self.skipped.items() if (p < cut) == below},
                )
            )
        return halves[0], halves[1]

    @staticmethod
    def join(parts: list[Part]) -> Part:
        """One part, in single-process order: by position, then view."""
        with_records = [part for part in parts if len(part.records)]
        if with_records:
            positions = np.concatenate([part.record_positions for part in with_records])
            order = np.argsort(positions, kind="stable")  # views stay in their order
            joined = pd.concat([part.records for part in with_records], ignore_index=True)
            records = joined.iloc[order].reset_index(drop=True)
            positions = positions[order]
        else:  # nothing but skipped images: empty records that keep their columns
            records = parts[0].records if parts else pd.DataFrame()
            positions = np.zeros(0, dtype=np.int64)
        skipped = {p: text for part in parts for p, text in part.skipped.items()}
        finished = [part.positions for part in parts]
        return Part(
            positions=np.sort(np.concatenate(finished)) if finished else np.zeros(0, np.int64),
            records=records,
            record_positions=positions,
            skipped=dict(sorted(skipped.items())),
        )


@dataclass
class Hooks:
    """What a long run does between loader batches besides evaluating.

    ``save`` receives the images finished since its last call: every ``save_every``
    seconds, at the end, and when the run stops on an exception (Ctrl-C included), so
    finished work survives. ``poll`` may raise to stop the run (another rank failed).
    ``stop`` returning True ends the run early and cleanly (a deadline): the views
    already queued are run, and the result holds exactly the images finished.
    """

    save: Callable[[Part], None] | None = None
    save_every: float = 60.0
    poll: Callable[[], None] | None = None
    stop: Callable[[], bool] | None = None
    timings: Timings | None = None  # where the time goes (aabench bench)


@dataclass
class Evaluation:
    records: pd.DataFrame  # one row per (image, view); per image where the suite folds
    seconds: float
    images: int
    views: int  # views run (a folded record counts its views)
    skipped: list[str] = field(default_factory=list)  # "path: reason"
    batch_size_halvings: list[int] = field(default_factory=list)  # after out-of-memory
    finished: Part | None = None  # the same records with their global positions

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else math.nan


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"unknown device {spec!r}: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"--device {spec} asked for a GPU but PyTorch sees none on this machine: "
                "use --device cpu (or auto), or install a CUDA build of PyTorch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    elif device.type != "cpu":
        raise UserError(f"unsupported device {spec!r}: use auto, cpu, cuda or cuda:<index>")
    return device


class FolderSource:
    """Reads one image per sample from an ImageNet-style folder: {"clean": image}."""

    def __init__(self, folder: ImageFolder):
        self.root = folder.root

    def images(self, sample) -> dict:
        return {"clean": decode(self.root / sample.file)}


class ViewDataset(Dataset):
    """Item i: the decoded image(s) of sample ``positions[i]`` (default: of sample i), as
    the suite's views. Suites see the global position, so a shard's views are the views
    the whole run would cut."""

    def __init__(
        self,
        folder: ImageFolder,
        suite: Suite,
        model: LoadedModel,
        seed: int,
        source=None,
        positions=None,
    ):
        self.samples = folder.samples
        self.positions = range(len(self.samples)) if positions is None else positions
        self.source = source or FolderSource(folder)
        self.suite = suite
        self.preprocessing = model.preprocessing
        self.seed = seed

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> dict:
        position = int(self.positions[index])
        sample = self.samples[position]
        try:
            start = time.perf_counter()
            images = self.source.images(sample)
            decoded = time.perf_counter()
            views = self.suite.views_from(images, sample, position, self.seed, self.preprocessing)
            seconds = {"decode": decoded - start, "views": time.perf_counter() - decoded}
        except BadImage as error:
            return {"position": position, "error": error.reason, "path": str(error.path)}
        except UserError as error:
            # Raised again in the main process: a worker's exception would arrive
            # wrapped in its traceback text.
            return {"position": position, "fatal": str(error)}
        return {
            "position": position,
            "views": views.images,
            "meta": views.meta,
            "groups": views.groups,
            "on_device": views.on_device,
            # JPEGs to decode on the model's device (aabench.device_decode.decode_items).
            "encoded": getattr(views, "encoded", None),
            "seconds": seconds,
        }


class BadImage(Exception):
    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def decode(path: Path) -> Image.Image:
    """Open and fully decode an image as RGB; a corrupt, truncated or unreadable file is a
    BadImage."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except FileNotFoundError:
        raise UserError(
            f"image {printable(path)} does not exist: the data set is incomplete"
        ) from None
    except PermissionError:
        raise BadImage(path, "permission denied: make it readable (chmod)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(path, printable(f"{type(error).__name__}: {error}")) from error


# Modes of one 16-bit channel (PNG greyscale): Pillow's convert("RGB") clips them at 255.
_SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB with the image's range kept: a 16-bit level v becomes v >> 8 (its high
    byte), which is what Pillow itself does to 16-bit RGB(A) and grey+alpha PNGs, so a
    16-bit image gets the same levels whichever colour type it was saved as, and 8-bit
    levels stored as 16 bits (v = 257 k) come back exactly as k."""
    if image.mode in _SIXTEEN_BIT_GREY:
        levels = np.asarray(image, dtype=np.int64) >> 8
        grey = Image.fromarray(levels.clip(0, 255).astype(np.uint8))  # mode L
        return grey.convert("RGB")
    return image.convert("RGB")


def _collate(items: list[dict]) -> list[dict]:
    return items


# What stops a run: Ctrl-C, and SIGTERM (timeout, Slurm, docker stop).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _worker_init(_: int) -> None:
    # Workers cut and stack tensors; one thread each leaves the cores to the model.
    torch.set_num_threads(1)
    # Stopping is the main process's: it saves the finished images, then ends the
    # workers. A worker killed by a signal sent to the whole process group (Slurm,
    # Ctrl-C) would reach the main process as a worker crash, at any moment, perhaps in
    # the middle of that saving. The signals were blocked since the fork (_batches).
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _die_with_the_main_process()
    sys.excepthook = _quiet_when_the_main_process_hangs_up(sys.excepthook)


def _die_with_the_main_process() -> None:
    """A worker ignores the stop signals, so if the main process dies without ending it
    (kill -9, or killed while it was still starting workers) nothing else would: on
    Linux the kernel kills the worker when its parent dies (PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


def _quiet_when_the_main_process_hangs_up(hook):
    """A worker hands each batch's tensors to the main process through a socket
    (multiprocessing's resource sharer, in a thread of the worker). When the main
    process stops part way through a hand-over (Ctrl-C, SIGTERM), that thread reports
    the reset connection with a traceback on the stderr the processes share; the main
    process says what happened, in one line."""

    def excepthook(kind, value, traceback):
        if not issubclass(kind, ConnectionError | EOFError):
            hook(kind, value, traceback)

    return excepthook


def _batches(loader: DataLoader):
    """The loader's batches. Its workers are forked with the stop signals blocked (they
    wait, in this process until the workers have started, in a worker until
    _worker_init ignores them), and are ended however the iteration ends: an iterator
    kept alive by a traceback would otherwise keep its workers until the process exits."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        iterator = iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        yield from iterator
    finally:
        shut_down = getattr(iterator, "_shutdown_workers", None)  # none without workers
        if shut_down is not None:
            shut_down()


class PreparedModel:
    """The model on its device, with normalisation and output reduction beside it."""

    def __init__(
        self,
        model: LoadedModel,
        device: torch.device,
        options: EngineOptions,
        ranks: bool = False,
        suite: Suite | None = None,
    ):
        self.device = device
        self.ranks = ranks
        self.amp_dtype = AMP_DTYPES[options.amp]
        self.channels_last = options.uses_channels_last(device)
        module = model.module.to(device).eval()
        # After the weights are loaded: whether a form computes a filter depends on it.
        self.blurpool = use_form(module, options.blurpool, device, self.channels_last)
        self.folded_batchnorms = fold_batchnorms(module, options.folds_batchnorm(device, suite))
        self.chunk = options.chunk_for(device, suite)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.module = torch.compile(module) if options.compile else module
        # A suite's own reduction of each pass (Suite.device_reduction), replacing the
        # logits reduction below; it gets the uncompiled module to hook into.
        self.reduction = suite.device_reduction(module) if suite is not None else None
        self.suite = suite
        pre = model.preprocessing
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255.0
        # Uploads in flight while passes run: one per pass the host may run ahead, and
        # the one being filled.
        self._staging = StagingRing(device, slots=OUTPUT_DEPTH + 1)
        self.timings: Timings | None = None  # set by a run that measures its stages

    def upload(self, views: torch.Tensor) -> torch.Tensor:
        """Views on the device. To a GPU they go through a ring of reused pinned buffers
        on an upload stream of their own (transfer.StagingRing): pinning every image's
        views as it arrives (DataLoader's pin_memory) costs a pinned allocation per
        image, which made a 10-view suite 4x slower on an H100."""
        with span(self.timings, "upload"):
            return self._staging.upload(views)

    def inputs(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 views -> the model's normalised input on the device."""
        return self.normalise(self.upload(views).float())

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixel values (0..255) on the device -> the model's input."""
        # (x/255 - mean)/std, folded into one subtraction and one division.
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def source(self, image: torch.Tensor) -> torch.Tensor:
        """A device-view suite's one source image (uint8) -> 1 x C x H x W float on the
        device. A plain copy: the pinned staging buffer is reused only after a pass
        has read its results back, and sources are uploaded ahead of their passes."""
        image = image if image.dim() == 4 else image[None]
        with span(self.timings, "upload"):
            return image.to(self.device).float()

    @torch.inference_mode()
    def make_views(self, source: torch.Tensor, meta: dict[str, np.ndarray]) -> torch.Tensor:
        """The suite's device-side views of ``source`` described by ``meta``, normalised."""
        return self.normalise(self.suite.device_views(source, meta).float())

    def forward(self, x: torch.Tensor):
        """The model on normalised inputs, under the run's AMP setting, in chunks of
        ``self.chunk`` views (FORWARD_CHUNK) whose outputs are joined again."""
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        ):
            if not self.chunk or x.shape[0] <= self.chunk:
                return self.module(x)
            chunks = x.split(self.chunk)
            first = self.module(chunks[0])
            if not isinstance(first, torch.Tensor):
                return self.module(x)  # outputs the engine cannot join: the pass whole
            return torch.cat([first, *(self.module(chunk) for chunk in chunks[1:])])

    @torch.inference_mode()
    def logits(self, views: torch.Tensor) -> torch.Tensor:
        return self.forward(self.inputs(views)).float()

    def reduce(
        self,
        views: torch.Tensor,
        labels: torch.Tensor,
        info: dict | None = None,
        normalised: bool = False,
    ) -> dict[str, np.ndarray]:
        """Per-view outputs of one pass, on the host."""
        return self.reduce_later(views, labels, info, normalised).result()

    @torch.inference_mode()
    def reduce_later(
        self,
        views: torch.Tensor,
        labels: torch.Tensor,
        info: dict | None = None,
        normalised: bool = False,
    ) -> PendingOutputs:
        """Per-view outputs of one pass, on their way to the host: the pass is queued on
        the device and this returns without waiting for it. ``info``: each view's image
        position and the suite's metadata, given to a suite's own reduction.
        ``normalised``: ``views`` are already the model's input on the device (made
        there by the suite)."""
        x = views if normalised else self.inputs(views)
        with span(self.timings, "forward"):
            outputs = self._reduced(x, labels, info)
        return PendingOutputs(outputs, int(x.shape[0]), self.timings)

    def _reduced(self, x: torch.Tensor, labels: torch.Tensor, info: dict | None) -> dict:
        if self.reduction is not None:
            return self.reduction(self.forward, x, labels.to(self.device), info)
        logits = self.forward(x).float()
        labels = labels.to(self.device)
        probs = logits.softmax(dim=1)
        pred = logits.argmax(dim=1)
        if self.ranks:
            # Ordinal ranks: among tied logits the lower class index ranks first, as
            # argmax picks it, so rank_1 is always pred (topk's order among ties is
            # unspecified and changes with the tensor's size).
            top5 = logits.sort(dim=1, descending=True, stable=True).indices[:, :5]
            pred = top5[:, 0]
        else:
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        safe = labels.clamp(min=0)[:, None]
        p_true = probs.gather(1, safe)[:, 0]
        p_other = probs.scatter(1, safe, -1.0).max(dim=1).values
        known = labels >= 0
        outputs = {
            "pred": pred,
            "correct": (pred == labels) & known,
            "top5_correct": (top5 == labels[:, None]).any(dim=1) & known,
            "p_true": torch.where(known, p_true, torch.nan),
            "p_other": p_other,
        }
        if self.ranks:
            outputs["ranks"] = top5
        return outputs


def evaluate(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int = 0,
    device: torch.device | None = None,
    source=None,
    positions=None,
    hooks: Hooks | None = None,
) -> Evaluation:
    """Run ``model`` over every view of every sample (or of the samples at ``positions``,
    ascending); ``source`` reads a sample's images (default: the one image of each sample
    in ``folder``)."""
    from aabench.device_decode import decode_items  # it imports this module

    device = device or resolve_device(options.device)
    hooks = hooks or Hooks()
    prepared = PreparedModel(model, device, options, ranks=suite.ranks, suite=suite)
    prepared.timings = hooks.timings
    dataset = ViewDataset(folder, suite, model, seed, source, positions)
    per_image = max(1, suite.views_per_image())
    loader = DataLoader(
        dataset,
        batch_size=max(1, math.ceil(options.batch_size / per_image)),
        shuffle=False,
        num_workers=options.worker_count,
        collate_fn=_collate,
        worker_init_fn=_worker_init if options.worker_count else None,
    )
    batcher = _ViewBatcher(prepared, options.batch_size, folder)
    block = block_size(suite, options.batch_size)
    parts: list[Part] = []
    skipped: dict[int, str] = {}  # not yet in a part
    consumed = 0  # items of the dataset taken from the loader
    # A suite that folds its records (Suite.fold_records) has each image's views folded
    # as soon as the image is finished: memory then holds the views of unfinished images
    # only, and these folded parts until they are saved in whole blocks.
    folds = type(suite).fold_records is not Suite.fold_records
    folded: list[Part] = []

    def fold_finished() -> None:
        if folds:
            part = batcher.take_finished({})
            if len(part):
                folded.append(part)

    def take(final: bool = False) -> None:
        cut = None  # at the end every block is whole
        if not final:
            # Before the end, whole blocks only: a resumed run starts at a block
            # boundary and packs its forward passes as an uninterrupted run does.
            upcoming = dataset.positions[consumed] if consumed < len(dataset) else None
            unfinished = [p for p in (batcher.first_unfinished(), upcoming) if p is not None]
            cut = int(min(unfinished)) // block * block if unfinished else None
        ready = {p: text for p, text in skipped.items() if cut is None or p < cut}
        part = batcher.take_finished(ready, before=cut, wait=final)
        for position in ready:
            del skipped[position]
        if folded:
            part, rest = Part.join([*folded, part]).split(cut)
            folded[:] = [rest] if len(rest) else []
        parts.append(part)
        if hooks.save and len(part):
            hooks.save(part)

    start = time.perf_counter()
    saved = time.monotonic()
    current_block = None
    try:
        with (
            _main_threads(device),
            _progress(options.quiet, suite.name, len(dataset)) as advance,
        ):
            # No local name for the loader's iterator: a traceback that keeps this frame
            # would keep it, and with it the workers, alive.
            for items in timed(_batches(loader), hooks.timings):
                with span(hooks.timings, "device_decode"):
                    items = decode_items(items, device)  # items' JPEGs, if any, on the device
                for item in items:
                    if item["position"] // block != current_block:
                        # A forward pass never mixes two blocks, so its composition, and
                        # with it the float rounding of its outputs, is the same in
                        # every shard and every resumed session.
                        advance(batcher.flush() / per_image)
                        fold_finished()
                        current_block = item["position"] // block
                    sample = folder.samples[item["position"]]
                    if "fatal" in item:
                        raise UserError(item["fatal"])
                    if "error" in item:
                        if not options.skip_bad_images:
                            raise UserError(
                                f"cannot decode image {item['path']} ({item['error']}): fix "
                                "or remove it, or pass --skip-bad-images to skip it (skipped "
                                "images are recorded in the provenance)"
                            )
                        own = Path(item["path"]) == folder.root / sample.file
                        text = f"{sample.path if own else item['path']}: {item['error']}"
                        skipped[item["position"]] = text
                        advance(1)
                        consumed += 1
                        continue
                    if hooks.timings:
                        hooks.timings.add_worker(item["seconds"])
                    batcher.add(item, sample.label)
                    consumed += 1
                advance(batcher.run_full_batches() / per_image)
                fold_finished()
                if hooks.poll:
                    hooks.poll()
                if hooks.stop and hooks.stop():
                    break
                if hooks.save and time.monotonic() - saved >= hooks.save_every:
                    take()
                    saved = time.monotonic()
            advance(batcher.flush() / per_image)
    except BaseException:
        if hooks.save:
            # Keep what is finished; the error that stopped the run matters more than one
            # that saving might hit now.
            with contextlib.suppress(Exception):
                take()
        raise
    batcher.wait()  # the last passes' time belongs to the run (on a GPU they are still going)
    seconds = time.perf_counter() - start
    take(final=True)
    finished = Part.join(parts)
    return Evaluation(
        records=finished.records,
        seconds=seconds,
        images=len(finished) - len(finished.skipped),
        views=finished.views,
        skipped=list(finished.skipped.values()),
        batch_size_halvings=batcher.halvings,
        finished=finished,
    )


# Errors that a smaller batch avoids: out of memory, and kernels that index with 32
# bits refusing a tensor of 2**31 elements or more (seen on an H100: reflect padding
# of a batch of 65536 views fails so, before any memory runs out).
_TOO_LARGE = ("out of memory", "32-bit index math", "CUDNN_STATUS_ALLOC_FAILED")


def batch_too_large(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _TOO_LARGE)


# CPU threads the main process keeps while a GPU runs the model: it only stacks views
# and copies them. On an H100 with 15 decoding workers, 16 main-process threads
# fighting the workers for the cores kept a shift run at 0.22 of the model's
# forward-only rate; with 2 it reached 0.50.
GPU_MAIN_THREADS = 2

# Passes whose outputs may still be on their way back while the host prepares the
# next: the device is never idle waiting for the host, and pinned memory stays bounded.
OUTPUT_DEPTH = 2


@contextlib.contextmanager
def _main_threads(device: torch.device):
    threads = torch.get_num_threads()
    if device.type == "cuda":
        torch.set_num_threads(min(threads, GPU_MAIN_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def block_size(suite: Suite, batch_size: int) -> int:
    """Images per block: the fewest consecutive images whose views fill whole batches.

    Batches of images that all have the same number of views then end exactly at block
    boundaries, so cutting the work at block boundaries (shards, checkpoints) leaves
    every forward pass as an uninterrupted single process runs it. Float results depend
    on a pass's composition (CPU kernels round differently for different batch sizes),
    and tables must be byte-identical however the work was cut.
    """
    views = max(1, suite.views_per_image())
    return batch_size // math.gcd(batch_size, views)


def view_count(records: pd.DataFrame) -> int:
    """Views that ``records`` stand for: one per row, or the rows' ``views`` where a
    suite folded them (Suite.fold_records)."""
    if "views" in records:
        return int(records["views"].sum())
    return len(records)


class _ViewBatcher:
    """Queues views of many images and runs them in forward passes of exactly
    ``batch_size`` views (the last pass may be smaller).

    A suite may mark runs of views that must share one forward pass (the frames of an
    ImageNet-P sequence): a pass then holds whole runs only, as many as fit in
    ``batch_size``, and a run longer than ``batch_size`` gets a pass of its own.
    """

    def __init__(self, model: PreparedModel, batch_size: int, folder: ImageFolder):
        self.model = model
        self.batch_size = batch_size
        self.folder = folder
        self.pending: list[torch.Tensor] = []
        self.pending_labels: list[torch.Tensor] = []
        self.pending_count = 0
        # Each pending view's image position and metadata, for a suite's own reduction.
        self.pending_info: list[dict[str, np.ndarray]] = []
        # Sizes of the pending atomic runs, oldest first; a free view is a run of one.
        self.pending_runs: collections.deque[int] = collections.deque()
        self.positions: list[np.ndarray] = []
        self.item_positions: list[int] = []
        self.view_index: list[np.ndarray] = []
        self.meta: list[dict[str, np.ndarray]] = []
        # Passes' outputs in view order; on a GPU the newest are still on their way.
        self.outputs: list[PendingOutputs] = []
        self.halvings: list[int] = []  # batch sizes after each out-of-memory retry

    def add(self, item: dict, label: int) -> None:
        views = item["views"]
        if item.get("on_device"):
            # Uploaded once; its views are made on the device, a pass at a time.
            views = _DeviceSource(self.model.source(views), item["meta"])
            count = len(views)
        else:
            count = views.shape[0]
        self.pending.append(views)
        self.pending_labels.append(torch.full((count,), label, dtype=torch.int64))
        self.pending_count += count
        if self.model.reduction is not None:
            info = {"position": np.full(count, item["position"], dtype=np.int64)}
            self.pending_info.append({**info, **item["meta"]})
        runs = item.get("groups")
        self.pending_runs.extend(runs if runs is not None else [1] * count)
        self.positions.append(np.full(count, item["position"], dtype=np.int64))
        self.item_positions.append(item["position"])
        self.view_index.append(np.arange(count))
        self.meta.append(item["meta"])

    def _next_pass(self) -> int:
        """Views in the next forward pass: whole runs, as many as fit in batch_size."""
        total = 0
        for size in self.pending_runs:
            if total + size > self.batch_size:
                break
            total += size
        return total or self.pending_runs[0]

    def run_full_batches(self) -> int:
        done = 0
        while self.pending_count >= self.batch_size:
            done += self._run(self._next_pass())
        return done

    def flush(self) -> int:
        done = 0
        while self.pending_count:
            done += self._run(self._next_pass())
        return done

    def _reduce_halving(
        self,
        views: torch.Tensor,
        labels: torch.Tensor,
        info: dict | None = None,
        normalised: bool = False,
    ) -> list[PendingOutputs]:
        """Reduce in chunks of ``batch_size``; on CUDA out-of-memory halve it and retry.

        Outputs do not depend on the chunking (eval mode: every view is independent), so
        only the speed changes; every halving is recorded for the provenance. After a
        halving a long atomic run may be split: running is better than stopping.
        """
        # One pass as _next_pass cut it; after an out-of-memory, chunks of the new size.
        chunk = self.batch_size if self.halvings else max(1, views.shape[0])
        while True:
            try:
                return [
                    self.model.reduce_later(
                        views[i : i + chunk],
                        labels[i : i + chunk],
                        None
                        if info is None
                        else {key: value[i : i + chunk] for key, value in info.items()},
                        normalised=normalised,
                    )
                    for i in range(0, views.shape[0], chunk)
                ]
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not batch_too_large(error):
                    raise
                if chunk == 1:
                    raise UserError(
                        "out of GPU memory even at batch size 1: use a smaller model, "
                        "--amp bf16, or a GPU with more memory"
                    ) from None
                if self.model.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.batch_size = max(1, min(chunk, self.batch_size) // 2)
                self.halvings.append(self.batch_size)
                chunk = self.batch_size

    def _take_views(self, count: int) -> tuple[torch.Tensor, bool]:
        """The next ``count`` pending views, removed from the queue, and whether they
        are already the model's input (made on the device)."""
        if isinstance(self.pending[0], _DeviceSource):
            made, left = [], count
            while left:
                source = self.pending[0]
                taken = min(left, len(source))
                made.append(self.model.make_views(source.image, source.take(taken)))
                if not len(source):
                    self.pending.pop(0)
                left -= taken
            return (torch.cat(made) if len(made) > 1 else made[0]), True
        views = torch.cat(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending = [views[count:]] if views.shape[0] > count else []
        return views[:count], False

    def _run(self, count: int) -> int:
        views, normalised = self._take_views(count)
        labels = torch.cat(self.pending_labels)
        info = None
        if self.pending_info:
            info = {
                key: np.concatenate([part[key] for part in self.pending_info])
                for key in self.pending_info[0]
            }
            rest_info = {key: value[count:] for key, value in info.items()}
            info = {key: value[:count] for key, value in info.items()}
        self.outputs.extend(
            self._reduce_halving(views, labels[:count], info, normalised=normalised)
        )
        # The host runs at most OUTPUT_DEPTH passes ahead of the device: older outputs
        # are read now (on a GPU long finished by then), which bounds pinned memory.
        unread = [output for output in self.outputs if not output.read]
        for output in unread[: max(0, len(unread) - OUTPUT_DEPTH)]:
            output.result()
        rest = self.pending_count - count
        if info is not None:
            self.pending_info = [rest_info] if rest else []
        taken = 0
        while taken < count:
            taken += self.pending_runs.popleft()
        self.pending_labels = [labels[count:]] if rest else []
        self.pending_count = rest
        return count

    def wait(self) -> None:
        """Until every queued pass's outputs are on the host."""
        for output in self.outputs:
            output.result()

    def _finished_items(self, before: int | None = None) -> tuple[int, int]:
        """(images, views) of the queue's first images whose every view has run and
        come back to the host (and whose position is below ``before``). Outputs still
        on their way are not waited for: their images are taken next time."""
        done = 0
        for output in self.outputs:
            if not output.ready():
                break
            done += output.count
        items = views = 0
        while items < len(self.positions) and views + len(self.positions[items]) <= done:
            if before is not None and self.item_positions[items] >= before:
                break
            views += len(self.positions[items])
            items += 1
        return items, views

    def first_unfinished(self) -> int | None:
        """The position of the first image with a view still to run."""
        items, _ = self._finished_items()
        return self.item_positions[items] if items < len(self.item_positions) else None

    def take_finished(
        self, skipped: dict[int, str], before: int | None = None, wait: bool = False
    ) -> Part:
        """The images whose every view has run (and whose position is below ``before``),
        plus ``skipped``, removed from the queue; ``wait``: for every pass's outputs
        (at the end), not only those already back."""
        if wait:
            for output in self.outputs:
                output.result()
        items, views = self._finished_items(before)
        outputs = []
        if views:
            taken, covered = [], 0
            while covered < views:
                output = self.outputs.pop(0)
                taken.append(output.result())
                covered += output.count
            merged = {key: np.concatenate([o[key] for o in taken]) for key in taken[0]}
            outputs = [{key: value[:views] for key, value in merged.items()}]
            if covered > views:  # an image's views continue in the rest of that pass
                rest = {key: value[views:] for key, value in merged.items()}
                self.outputs.insert(0, PendingOutputs(rest, covered - views))
        positions, self.positions = self.positions[:items], self.positions[items:]
        view_index, self.view_index = self.view_index[:items], self.view_index[items:]
        meta, self.meta = self.meta[:items], self.meta[items:]
        finished = self.item_positions[:items] + list(skipped)
        del self.item_positions[:items]
        record_positions = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        records = self._frame(record_positions, view_index, meta, outputs)
        records, record_positions = self._fold(records, record_positions)
        return Part(
            positions=np.array(sorted(finished), dtype=np.int64),
            records=records,
            record_positions=record_positions,
            skipped=dict(skipped),
        )

    def _fold(self, records: pd.DataFrame, positions: np.ndarray):
        """The suite's folded records of finished images (Suite.fold_records) and the
        position of each folded row, found by its ``sample``."""
        suite = self.model.suite
        if suite is None or type(suite).fold_records is Suite.fold_records:
            return records, positions
        folded = suite.fold_records(records).reset_index(drop=True)
        by_sample = dict(zip(records["sample"], positions, strict=True))
        folded_positions = np.array(
            [by_sample[sample] for sample in folded["sample"]], dtype=np.int64
        )
        if len(folded_positions) and (np.diff(folded_positions) < 0).any():
            raise RuntimeError(f"suite {suite.name} reordered images when folding records")
        return folded, folded_positions

    def _frame(self, positions, view_index, meta, outputs) -> pd.DataFrame:
        samples = self.folder.samples
        columns: dict[str, object] = {
            "sample": [samples[p].path for p in positions],
            "view": np.concatenate(view_index) if view_index else [],
            "label": [samples[p].label for p in positions],
        }
        # A suite's own reduction names its outputs; without outputs there are none.
        default = OUTPUT_COLUMNS if self.model.reduction is None else ()
        for key in list(outputs[0]) if outputs else default:
            if key == "ranks" and self.model.ranks:
                continue
            parts = [output[key] for output in outputs]
            columns[key] = np.concatenate(parts) if parts else []
        if self.model.ranks and outputs:
            ranks = np.concatenate([output["ranks"] for output in outputs])
            for i, key in enumerate(RANK_COLUMNS):
                columns[key] = ranks[:, i]
        meta_keys = list(meta[0]) if meta else []
        for key in meta_keys:
            columns[key] = np.concatenate([m[key] for m in meta])
        return pd.DataFrame(columns)


class _DeviceSource:
    """One uploaded image of a device-view suite and the metadata of its views still to
    make (Suite.device_views)."""

    def __init__(self, image: torch.Tensor, meta: dict[str, np.ndarray]):
        self.image = image
        self.meta = {key: np.asarray(value) for key, value in meta.items()}
        self.left = len(next(iter(self.meta.values()))) if self.meta else 0
        self.done = 0

    def __len__(self) -> int:
        return self.left

    def take(self, count: int) -> dict[str, np.ndarray]:
        """The metadata of the next ``count`` views, which leave the queue."""
        start, self.done, self.left = self.done, self.done + count, self.left - count
        return {key: value[start : self.done] for key, value in self.meta.items()}


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s")


class _progress:
    """A rich progress bar on stderr (images done, images/s, ETA), or nothing if quiet."""

    def __init__(self, quiet: bool, name: str, total: int):
        self.quiet, self.name, self.total = quiet, name, total

    def __enter__(self):
        if self.quiet:
            return lambda amount: None
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RateColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.__enter__()
        task = self.bar.add_task(self.name, total=self.total)
        return lambda amount: self.bar.advance(task, amount)

    def __exit__(self, *exc):
        if not self.quiet:
            self.bar.__exit__(*exc)
        return False
