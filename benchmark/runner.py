"""`aabench run` as a library call: model + suites + data -> tidy tables and files.

For each suite: evaluate, summarise, then write ``<out>/<model>/<suite>.samples.csv.gz``,
``<suite>.json`` (provenance) and ``<suite>.csv`` (the tidy table), each atomically.
Finished images are checkpointed on the way (aabench.checkpoint) and, under torchrun,
each rank evaluates its shard and rank 0 alone writes (aabench.distributed). While a suite
runs, rank 0 holds its lock (aabench.checkpoint.SuiteLock), so two runs never share one
suite's checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision

from aabench import __version__
from aabench.checkpoint import CheckpointOptions, PartialRun, SuiteLock, partial_directory
from aabench.data.folder import ImageFolder
from aabench.data.sources import source_for
from aabench.distributed import World
from aabench.engine import EngineOptions, Hooks, Part, block_size, evaluate, resolve_device
from aabench.errors import UserError
from aabench.models.blurpool import use_form
from aabench.models.folding import fold_batchnorms
from aabench.models.weights import RANDOM_WEIGHTS_WARNING, WeightsRecord
from aabench.models.zoo import LoadedModel
from aabench.results.files import json_writer, table_writer, write_together
from aabench.results.load import read_table
from aabench.results.table import tidy_table
from aabench.suites.base import Suite


@dataclass
class SuiteResult:
    table: pd.DataFrame
    provenance: dict
    paths: dict[str, Path]
    records: pd.DataFrame | None = None  # the samples; None when read back (--resume)


# Provenance entries that say when and how fast this session ran: they differ between
# two runs of the very same measurement (tables and samples files do not).
TIMING_FIELDS = ("started", "finished", "seconds", "images_per_second", "views_per_second")


def output_paths(directory: Path, suite: str) -> dict[str, Path]:
    return {
        "samples": directory / f"{suite}.samples.csv.gz",
        "provenance": directory / f"{suite}.json",
        "table": directory / f"{suite}.csv",
    }


def write_outputs(paths: dict[str, Path], records, provenance: dict, table) -> None:
    """The three files of one suite, all or none: a failure (disk full) leaves the
    earlier run's files as they were."""
    write_together(
        [
            (paths["samples"], table_writer(records, paths["samples"])),
            (paths["provenance"], json_writer(provenance)),
            (paths["table"], table_writer(table, paths["table"])),
        ]
    )


def random_weights_warning(weights: WeightsRecord) -> str | None:
    """The warning a run with random weights carries (stderr, provenance, reports)."""
    return RANDOM_WEIGHTS_WARNING if weights.random else None


def weights_provenance(weights: WeightsRecord) -> dict:
    """The provenance entries about the weights: the record, whether they are random
    (and the warning saying so), and the release mirror when one was used."""
    warning = random_weights_warning(weights)
    entries = {
        "weights": asdict(weights),
        "random_weights": warning is not None,
        "warnings": [warning] if warning else [],
    }
    if weights.weights_url:
        entries["weights_url"] = weights.weights_url
    return entries


def versions() -> dict:
    return {
        "aabench": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_id_for(identity: dict) -> str:
    """The same model, weights, data, suite parameters, seed and code give the same id."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def data_for(suite: Suite, folder: ImageFolder, device: torch.device | None = None):
    """(source, data-source description, the samples to evaluate) of one suite whose
    model runs on ``device``."""
    source, data_source = source_for(suite, folder, device)
    # A source with its own samples (the released ImageNet-P videos) replaces --data's.
    return source, data_source, getattr(source, "folder", None) or folder


def run_identity(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    data_source: dict,
) -> dict:
    """What makes two runs the same measurement: the run id, and what a resumed run must
    share with the interrupted one."""
    identity = {
        "model": model.name,
        "weights_sha256": model.weights.sha256 or "none",
        "suite": suite.name,
        "parameters": suite.protocol(),
        "preprocessing": model.preprocessing.to_dict(),
        "data": folder.fingerprint(),
        "data_source": data_source,
        "seed": seed,
        "amp": options.amp,
        "aabench": __version__,
    }
    if model.identity() is not None:  # a module of the user's: its code's SHA-256s
        identity["module"] = model.identity()
    return identity


def model_provenance(model: LoadedModel) -> dict:
    """Preprocessing, and for a user's module where its code comes from."""
    entries = {
        "preprocessing": model.preprocessing.to_dict(),
        "preprocessing_overrides": dict(model.overrides),
    }
    if model.source is not None:
        source = model.source
        entries["model_source"] = {
            "source_files": source["source_files"],
            "architecture_sha256": source["architecture_sha256"],
        }
        if "factory" in source:
            entries["factory"] = {
                key: source[key]
                for key in ("factory", "factory_name", "factory_args", "factory_files")
            }
    return entries


def run_suite(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    out: Path | None,
    world: World | None = None,
    checkpoints: CheckpointOptions | None = None,
) -> SuiteResult | None:
    """Evaluate, summarise and write one suite; None on ranks other than 0.

    ``out`` None: nothing is written and nothing checkpointed (the Python API); the
    result holds the records, for :meth:`aabench.Result.save`. Otherwise rank 0 holds the
    suite's lock from before its checkpoints are read until its outputs are written."""
    world = world or World()
    checkpoints = checkpoints or CheckpointOptions()
    lock = (
        SuiteLock(partial_directory(out, model.name, suite.name))
        if out is not None and world.is_main
        else contextlib.nullcontext()
    )
    with lock:
        return _run_suite(model, suite, folder, options, seed, out, world, checkpoints)


def _run_suite(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    out: Path | None,
    world: World,
    checkpoints: CheckpointOptions,
) -> SuiteResult | None:
    device = resolve_device(options.device)
    source, data_source, folder = data_for(suite, folder, device)
    weights = model.weights
    identity = run_identity(model, suite, folder, options, seed, data_source)
    run_id = run_id_for(identity)
    paths = output_paths(out / model.name, suite.name) if out is not None else {}
    session = {
        "started": datetime.now(timezone.utc).isoformat(),
        "device": str(device),
        "device_name": device_description(device),
        "world_size": world.size,
        "batch_size": options.batch_size,
        "channels_last": options.uses_channels_last(device),
        "compile": options.compile,
        "blurpool": blurpool_forms(model, options, device),
        "folded_batchnorms": folded_batchnorms(model, options, device, suite),
        "forward_chunk": options.chunk_for(device, suite),
    }
    partial = (
        PartialRun(partial_directory(out, model.name, suite.name), identity, world.rank, session)
        if out is not None
        else None
    )
    earlier: list[Part] = []
    plan = None
    if partial is None:
        plan = {"complete": False, "finished": []}
    elif world.is_main:
        if checkpoints.resume and not partial.exists() and _finished(paths, run_id):
            plan = {"complete": True}
        else:
            earlier = partial.prepare(checkpoints.resume, checkpoints.restart, folder.samples)
            plan = {"complete": False, "finished": [p.positions for p in earlier]}
    plan = world.broadcast(plan)
    if plan["complete"]:  # --resume after this suite was written: keep it as it is
        if not world.is_main:
            return None
        provenance = json.loads(paths["provenance"].read_text())
        return SuiteResult(table=read_table(paths["table"]), provenance=provenance, paths=paths)
    finished = np.concatenate([np.zeros(0, np.int64), *plan["finished"]])
    todo = np.setdiff1d(np.arange(len(folder)), finished)
    hooks = Hooks(
        save=partial.save if partial else None, save_every=checkpoints.every, poll=world.poll
    )
    started = datetime.now(timezone.utc)
    evaluation = evaluate(
        model,
        suite,
        folder,
        options,
        seed=seed,
        device=device,
        source=source,
        positions=world.shard(todo, block_size(suite, options.batch_size)),
        hooks=hooks,
    )
    ranks = world.gather((evaluation.finished, evaluation.seconds, evaluation.batch_size_halvings))
    finished_at = datetime.now(timezone.utc)
    if not world.is_main:
        return None
    whole = Part.join([*earlier, *(part for part, _, _ in ranks)])
    records = whole.records
    if records.empty:
        raise UserError(f"no image could be evaluated for suite {suite.name}: nothing written")
    new_images = sum(len(part) - len(part.skipped) for part, _, _ in ranks)
    new_views = sum(part.views for part, _, _ in ranks)
    seconds = max(rank_seconds for _, rank_seconds, _ in ranks)
    rows = suite.summarise(records)
    table = tidy_table(rows, run_id=run_id, model=model.name, weights=weights.label, suite=suite)
    provenance = {
        "run_id": run_id,
        "model": model.name,
        "suite": suite.name,
        "parameters": suite.parameters(),
        "protocol": suite.protocol(),
        "dimensions": list(suite.dimensions),
        "data_source": data_source,
        **weights_provenance(weights),
        **model_provenance(model),
        "data": {
            "root": str(folder.root),
            "fingerprint": folder.fingerprint(),
            "limit": folder.limit,
            "skipped_images": list(whole.skipped.values()),
        },
        "n": len(whole) - len(whole.skipped),
        "views": whole.views,
        "seed": seed,
        "device": str(device),
        "device_name": device_description(device),
        "world_size": world.size,
        "dtype": "float32",
        "amp": options.amp,
        "channels_last": options.uses_channels_last(device),
        "compile": options.compile,
        # What computed the numbers, as this session set it up: BlurPool's form per
        # module count ({"reference": 11}), the BatchNorms computed inside their
        # convolutions (models.folding; 0: none), the views per model call within a
        # pass (engine.FORWARD_CHUNK; 0: the whole pass).
        "blurpool": session["blurpool"],
        "folded_batchnorms": session["folded_batchnorms"],
        "forward_chunk": session["forward_chunk"],
        "batch_size": options.batch_size,
        "batch_size_halvings": [size for _, _, halvings in ranks for size in halvings],
        "workers": options.worker_count,
        "versions": versions(),
        "command": sys.argv,
        "started": started.isoformat(),
        "finished": finished_at.isoformat(),
        # This session's work: images finished by an earlier, interrupted session of
        # the same run were read from its checkpoints, not evaluated again.
        "resumed_images": int(sum(len(part) for part in earlier)),
        # The interrupted sessions' devices and batch sizes (the fields above are this
        # session's): their images' float rounding follows their batches.
        "earlier_sessions": partial.earlier_sessions if partial else [],
        "seconds": seconds,
        "images_per_second": new_images / seconds if seconds > 0 else math.nan,
        "views_per_second": new_views / seconds if seconds > 0 else math.nan,
        **suite.extra_provenance(),
    }
    if partial is not None:
        write_outputs(paths, records, provenance, table)
        partial.remove()
    return SuiteResult(table=table, provenance=provenance, paths=paths, records=records)


def _finished(paths: dict[str, Path], run_id: str) -> bool:
    """Whether this very run (same identity) already wrote all of this suite's files."""
    if not all(path.is_file() for path in paths.values()):
        return False
    try:
        return json.loads(paths["provenance"].read_text()).get("run_id") == run_id
    except (OSError, ValueError, AttributeError):
        return False


def check_unfinished(
    model: LoadedModel,
    suites: list[Suite],
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    out: Path,
    checkpoints: CheckpointOptions,
) -> None:
    """Before any suite runs: refuse a suite another run is evaluating now, or an
    unfinished run that would be discarded without --restart, or resumed with other
    options, rather than finding out after the suites before it have run (and rewritten
    their outputs) again."""
    for suite in suites:
        device = resolve_device(options.device)
        _, data_source, suite_folder = data_for(suite, folder, device)
        identity = run_identity(model, suite, suite_folder, options, seed, data_source)
        directory = partial_directory(out, model.name, suite.name)
        SuiteLock(directory).refuse_if_held()  # another run is on it: its state is not ours
        partial = PartialRun(directory, identity)
        partial.check(checkpoints.resume, checkpoints.restart)
        if checkpoints.resume:
            partial.verify(suite_folder.samples)


def blurpool_forms(model: LoadedModel, options: EngineOptions, device) -> dict[str, int]:
    """The form each BlurPool of the model computes in (as the engine sets them)."""
    return use_form(model.module, options.blurpool, device, options.uses_channels_last(device))


def folded_batchnorms(model: LoadedModel, options: EngineOptions, device, suite: Suite) -> int:
    """How many BatchNorms the engine folds into their convolutions (it folds in eval
    mode, which a caller's module may not be in yet)."""
    return fold_batchnorms(model.module.eval(), options.folds_batchnorm(device, suite))
