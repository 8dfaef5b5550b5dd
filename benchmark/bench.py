"""Where the time goes: the model's forward-only throughput (the ceiling), the data
pipeline alone (decode + views, no model), and the suite end to end, all in views per
second on the same device, batch size and thread count, measured in one process.

With a ``baseline`` (the same architecture without anti-aliasing), a fourth phase runs
the model and the baseline forward-only in alternating rounds, so that a change of
clock or load affects both alike, and reports their ratio beside the FLOP ratio F that
bounds it (aabench.flops). The end-to-end phase also reports where its time went
(aabench.timing).

``seconds`` is the budget of the whole measurement: each phase gets an equal share of
it, counted from the phase's start (its warm-up and model preparation included), and
stops at the first check past its deadline. Each phase runs at least one batch, so a
phase's rate is always measured: views it actually ran over the time it actually spent
running them. ``images`` only caps the pipeline and end-to-end phases.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader

from aabench.budget import check_budget
from aabench.data.folder import ImageFolder
from aabench.engine import (
    EngineOptions,
    Hooks,
    PreparedModel,
    ViewDataset,
    _collate,
    _worker_init,
    evaluate,
    resolve_device,
)
from aabench.errors import UserError
from aabench.flops import flop_ratio
from aabench.models.zoo import LoadedModel
from aabench.runner import data_for
from aabench.suites.base import Suite
from aabench.timing import Timings

PHASES = ("forward-only", "pipeline-only", "end-to-end", "against the baseline")
# Rounds of the baseline phase: each runs the model, then the baseline (the order
# alternating), for an equal share of the phase.
BASELINE_ROUNDS = 3
Clock = Callable[[], float]


@dataclass(frozen=True)
class PhaseResult:
    """What one phase ran: ``views`` in ``seconds`` (of ``images`` images, where the
    phase reads images)."""

    name: str
    views: int
    seconds: float
    images: int | None = None
    stages: dict[str, float | None] | None = None  # end to end: seconds per stage

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds > 0 else math.nan


@dataclass(frozen=True)
class BaselineResult:
    """The model's and its baseline's forward-only rates from interleaved rounds, and
    F = FLOPs(baseline) / FLOPs(model), the bound of their ratio."""

    name: str
    model: PhaseResult
    baseline: PhaseResult
    flop_ratio: float

    @property
    def forward_ratio(self) -> float:
        """Model forward rate / baseline forward rate."""
        return self.model.views_per_second / self.baseline.views_per_second

    @property
    def of_flop_ratio(self) -> float:
        """How close the measured ratio comes to its bound F (1 = at the bound)."""
        return self.forward_ratio / self.flop_ratio


@dataclass(frozen=True)
class BenchResult:
    forward: PhaseResult
    pipeline: PhaseResult
    end_to_end: PhaseResult
    views_per_image: int
    seconds_per_phase: float
    against_baseline: BaselineResult | None = None
    # The forward-only phase's two halves, before the pipeline and after the end to end.
    forward_halves: tuple[PhaseResult, PhaseResult] | None = None

    @property
    def images(self) -> int:
        """Images the end-to-end phase finished (at most ``--images``)."""
        return self.end_to_end.images or 0

    @property
    def forward_views_per_second(self) -> float:
        return self.forward.views_per_second

    @property
    def pipeline_views_per_second(self) -> float:
        return self.pipeline.views_per_second

    @property
    def end_to_end_views_per_second(self) -> float:
        return self.end_to_end.views_per_second

    @property
    def end_to_end_over_forward(self) -> float:
        return self.end_to_end_views_per_second / self.forward_views_per_second

    @property
    def pipeline_over_forward(self) -> float:
        return self.pipeline_views_per_second / self.forward_views_per_second


class Deadline:
    """The end of a phase. ``passed`` is the only place the clock is read, once per
    check, so a test's clock decides exactly how many batches a phase runs."""

    def __init__(self, seconds: float, clock: Clock):
        self.clock, self.seconds = clock, seconds
        self.start = self.now = clock()
        self.end = self.start + seconds

    def passed(self) -> bool:
        self.now = self.clock()
        return self.now >= self.end

    @property
    def elapsed(self) -> float:
        """Time used at the last check."""
        return self.now - self.start


class PhaseDisplay:
    """Progress on stderr, one phase at a time: in a terminal a live bar (the phase's
    share of the budget used, views so far), elsewhere (a log) a line when it starts;
    for every phase a line with its result when it ends. Silent when ``quiet``."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        if not quiet:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False)

    @contextmanager
    def phase(self, name: str, deadline: Deadline) -> Iterator[Callable[[int | None], None]]:
        """Yields ``tick(views)``: call it after each check of ``deadline``."""
        if self.quiet:
            yield lambda views=None: None
            return
        from rich.progress import BarColumn, Progress, TextColumn

        if not self.console.is_terminal:  # a log: no live bar, a line to say what runs
            self.console.print(f"bench: {name}: running (up to {deadline.seconds:.1f} s)")
            yield lambda views=None: None
            return
        bar = Progress(
            TextColumn(f"[bold]bench: {name}"),
            BarColumn(),
            TextColumn("{task.completed:.1f}/{task.total:.1f} s"),
            TextColumn("{task.fields[views]}"),
            console=self.console,
            transient=True,
        )
        task = bar.add_task(name, total=deadline.seconds, views="")
        seen = {"views": 0}

        def tick(views: int | None = None) -> None:
            if views is not None:
                seen["views"] = views
            shown = f"{seen['views']} views" if views is not None or seen["views"] else ""
            bar.update(task, completed=min(deadline.elapsed, deadline.seconds), views=shown)

        with bar:
            yield tick

    def done(self, result: PhaseResult) -> None:
        if self.quiet:
            return
        images = f" ({result.images} images)" if result.images is not None else ""
        self.console.print(
            f"bench: {result.name}: {result.views} views{images} in {result.seconds:.2f} s"
            f" = {result.views_per_second:.1f} views/s"
        )


def repeat_to(folder: ImageFolder, images: int) -> ImageFolder:
    """The folder's images cycled to ``images`` entries (a small set is decoded again)."""
    samples = [folder.samples[i % len(folder.samples)] for i in range(images)]
    return replace(folder, samples=tuple(samples))


def forward_only(
    model: LoadedModel,
    device: torch.device,
    options: EngineOptions,
    deadline: Deadline,
    tick: Callable[[int | None], None] = lambda views=None: None,
) -> PhaseResult:
    """The model alone on a resident, already normalised batch, until ``deadline``."""
    with _fitting(options.batch_size, device):
        runner = _Forward(model, device, options)
        views, seconds = runner.until(deadline, tick)
    return PhaseResult(PHASES[0], views, seconds)


class _Forward:
    """Forward passes of one prepared model on a resident batch, warmed up once."""

    def __init__(self, model: LoadedModel, device: torch.device, options: EngineOptions):
        self.prepared = prepared = PreparedModel(model, device, options)
        self.device, self.batch_size = device, options.batch_size
        size = model.preprocessing.crop_size
        x = torch.randn(options.batch_size, 3, size, size, device=device)
        self.x = x.contiguous(memory_format=torch.channels_last) if prepared.channels_last else x
        for _ in range(2):  # warm-up: allocator, cuDNN autotune, compile
            self.step()
        _synchronise(device)

    def step(self) -> None:
        with torch.inference_mode():
            self.prepared.forward(self.x)  # as a run calls it: AMP, chunks

    def until(
        self, deadline: Deadline, tick: Callable[[int | None], None], done: int = 0
    ) -> tuple[int, float]:
        """(views, seconds) of passes run until ``deadline`` (at least one);
        ``done``: views already run in this phase, for the progress display."""
        count, start = 0, time.perf_counter()
        while True:
            self.step()
            count += 1
            stop = deadline.passed()
            tick(done + count * self.batch_size)
            if stop:
                break
        _synchronise(self.device)
        return count * self.batch_size, time.perf_counter() - start


def against_baseline(
    model: LoadedModel,
    baseline: LoadedModel,
    device: torch.device,
    options: EngineOptions,
    share: float,
    clock: Clock,
    tick: Callable[[int | None], None] = lambda views=None: None,
) -> BaselineResult:
    """The model and ``baseline`` forward-only in BASELINE_ROUNDS interleaved rounds
    within ``share`` seconds (warm-up included), and F from their own FLOPs."""
    size = model.preprocessing.crop_size
    ratio = flop_ratio(baseline.module, model.module, size)
    start = clock()
    with _fitting(options.batch_size, device):
        runners = [_Forward(model, device, options), _Forward(baseline, device, options)]
        left = max(0.0, share - (clock() - start))
        totals = [[0, 0.0], [0, 0.0]]
        for round_ in range(BASELINE_ROUNDS):
            for which in (0, 1) if round_ % 2 == 0 else (1, 0):
                deadline = Deadline(left / (2 * BASELINE_ROUNDS), clock)
                done = totals[0][0] + totals[1][0]
                views, seconds = runners[which].until(deadline, tick, done)
                totals[which][0] += views
                totals[which][1] += seconds
    name = PHASES[3]
    return BaselineResult(
        name=baseline.name,
        model=PhaseResult(f"{name}: {model.name}", *totals[0]),
        baseline=PhaseResult(f"{name}: {baseline.name}", *totals[1]),
        flop_ratio=ratio,
    )


def pipeline_only(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    deadline: Deadline,
    tick: Callable[[int | None], None] = lambda views=None: None,
    source=None,
) -> PhaseResult:
    """Decoding and cutting views in the DataLoader workers, no model, until
    ``deadline`` or the end of ``folder``; ``source``: the suite's (released sets)."""
    per_image = max(1, suite.views_per_image())
    loader = DataLoader(
        ViewDataset(folder, suite, model, seed, source),
        batch_size=max(1, -(-options.batch_size // per_image)),
        num_workers=options.worker_count,
        collate_fn=_collate,
        worker_init_fn=_worker_init if options.worker_count else None,
    )
    views = images = 0
    start = time.perf_counter()
    for items in loader:
        views += sum(_views_of(item) for item in items if "views" in item)
        images += len(items)
        stop = deadline.passed()
        tick(views)
        if stop:
            break
    seconds = time.perf_counter() - start
    return PhaseResult(PHASES[1], views, seconds, images)


def _views_of(item: dict) -> int:
    """Views a loader item stands for (a device-view suite's item is its one image)."""
    if item.get("on_device"):
        return len(next(iter(item["meta"].values())))
    # Released JPEGs left for the device decoder are views too, still encoded.
    encoded = item.get("encoded")
    return item["views"].shape[0] + (len(encoded) if encoded is not None else 0)


def end_to_end(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    device: torch.device,
    deadline: Deadline,
    tick: Callable[[int | None], None] = lambda views=None: None,
    source=None,
) -> PhaseResult:
    """The engine's own evaluation loop, stopped cleanly at ``deadline``: the views it
    had queued are run, and its views and seconds are those it really did and spent."""

    def stop() -> bool:
        passed = deadline.passed()
        tick(None)
        return passed

    timings = Timings(device)
    evaluation = evaluate(
        model,
        suite,
        folder,
        options,
        seed=seed,
        device=device,
        source=source,
        hooks=Hooks(stop=stop, timings=timings),
    )
    return PhaseResult(
        PHASES[2],
        evaluation.views,
        evaluation.seconds,
        evaluation.images,
        stages=timings.breakdown(evaluation.seconds),
    )


@contextmanager
def _fitting(batch_size: int, device: torch.device) -> Iterator[None]:
    """A forward-only batch that runs out of memory is one line naming --batch-size."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not isinstance(error, torch.OutOfMemoryError) and not _out_of_memory(error):
            raise
        raise _too_large(batch_size, device, "it ran out of memory") from None


def check_batch_fits(batch_size: int, size: int, device: torch.device) -> None:
    """The forward-only phase holds one batch of ``batch_size`` inputs: a batch larger
    than the device's whole memory is refused before anything runs (allocating it would
    fail, or on Linux be killed by the kernel's out-of-memory killer)."""
    needed = batch_size * 3 * size * size * 4  # float32 inputs, before any activation
    memory = _memory_of(device)
    if memory is not None and needed > memory:
        why = f"its {size} x {size} inputs alone need {_gigabytes(needed)}"
        raise _too_large(batch_size, device, why)


def _out_of_memory(error: RuntimeError) -> bool:
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text


def _memory_of(device: torch.device) -> int | None:
    """The device's total memory in bytes, where it can be known."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            return None
    return None


def _gigabytes(count: int) -> str:
    return f"{count / 2**30:.3g} GiB"


def _too_large(batch_size: int, device: torch.device, why: str) -> UserError:
    memory = _memory_of(device)
    of = f"{_gigabytes(memory)} of memory; " if memory is not None else ""
    return UserError(
        f"--batch-size {batch_size} is too large for {device} ({of}{why}): choose a "
        "smaller --batch-size"
    )


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_same_input(model: LoadedModel, baseline: LoadedModel) -> None:
    """The forward ratio compares passes over inputs of one size."""
    size, theirs = model.preprocessing.crop_size, baseline.preprocessing.crop_size
    if theirs != size:
        raise UserError(
            f"the baseline {baseline.name} takes {theirs}-pixel inputs and {model.name} "
            f"{size}-pixel ones: compare models of one input size (--baseline NAME, or "
            "--baseline none)"
        )


def bench(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    images: int = 64,
    seconds: float = 10.0,
    seed: int = 0,
    quiet: bool = True,
    clock: Clock = time.perf_counter,
    baseline: LoadedModel | None = None,
) -> BenchResult:
    """The phases in turn, each within an equal share of ``seconds`` (by ``clock``):
    three, and a fourth against ``baseline`` if given; progress on stderr unless
    ``quiet``."""
    check_budget(seconds, images)
    if baseline is not None:
        check_same_input(model, baseline)
    device = resolve_device(options.device)
    check_batch_fits(options.batch_size, model.preprocessing.crop_size, device)
    # What the suite reads (a released ImageNet-C set), as `run` reads it.
    source, _, folder = data_for(suite, folder, device)
    folder = repeat_to(folder, images)
    # Folding and chunks resolved once, with the suite: every phase and the baseline alike.
    engine_options = replace(
        options,
        quiet=True,
        skip_bad_images=False,
        fold_batchnorm=options.folds_batchnorm(device, suite),
        forward_chunk=options.chunk_for(device, suite),
    )
    share = seconds / (len(PHASES) if baseline is not None else len(PHASES) - 1)
    display = PhaseDisplay(quiet)

    def run(name: str, measure: Callable[..., PhaseResult], budget: float = share):
        deadline = Deadline(budget, clock)
        with display.phase(name, deadline) as tick:
            result = measure(deadline, tick)
        display.done(result)
        return result

    def forward_half() -> PhaseResult:
        return run(
            PHASES[0],
            lambda d, tick: forward_only(model, device, engine_options, d, tick),
            share / 2,
        )

    # Forward-only in two halves around the other phases: a machine whose speed drifts
    # during the bench (a shared or throttling one) moves the ceiling as it moves them.
    first = forward_half()
    pipeline = run(
        PHASES[1],
        lambda d, tick: pipeline_only(model, suite, folder, engine_options, seed, d, tick, source),
    )
    evaluation = run(
        PHASES[2],
        lambda d, tick: end_to_end(
            model, suite, folder, engine_options, seed, device, d, tick, source
        ),
    )
    second = forward_half()
    forward = PhaseResult(PHASES[0], first.views + second.views, first.seconds + second.seconds)
    compared = None
    if baseline is not None:
        with display.phase(PHASES[3], Deadline(share, clock)) as tick:
            compared = against_baseline(model, baseline, device, engine_options, share, clock, tick)
        display.done(compared.model)
        display.done(compared.baseline)
    return BenchResult(
        forward=forward,
        pipeline=pipeline,
        end_to_end=evaluation,
        views_per_image=suite.views_per_image(),
        seconds_per_phase=share,
        against_baseline=compared,
        forward_halves=(first, second),
    )
