"""`aabench run` as a library call: model + suites + data -> tidy tables and files.

For each suite: evaluate, summarise, then write ``<out>/<model>/<suite>.samples.csv.gz``,
``<suite>.json`` (provenance) and ``<suite>.csv`` (the tidy table), each atomically.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torchvision

from benchmark import __version__
from benchmark.data.folder import ImageFolder
from benchmark.data.sources import source_for
from benchmark.engine import EngineOptions, evaluate, resolve_device
from benchmark.errors import UserError
from benchmark.models.zoo import LoadedModel
from results.files import json_writer, table_writer, write_together
from results.table import tidy_table
from suites.base import Suite


@dataclass
class SuiteResult:
    table: pd.DataFrame
    provenance: dict
    paths: dict[str, Path]


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


def run_suite(
    model: LoadedModel,
    suite: Suite,
    folder: ImageFolder,
    options: EngineOptions,
    seed: int,
    out: Path,
) -> SuiteResult:
    device = resolve_device(options.device)
    source, data_source = source_for(suite, folder)
    # A source with its own samples (the released ImageNet-P videos) replaces --data's.
    folder = getattr(source, "folder", None) or folder
    started = datetime.now(timezone.utc)
    evaluation = evaluate(model, suite, folder, options, seed=seed, device=device, source=source)
    finished = datetime.now(timezone.utc)
    if evaluation.records.empty:
        raise UserError(f"no image could be evaluated for suite {suite.name}: nothing written")
    weights = model.weights
    identity = {
        "model": model.name,
        "weights_sha256": weights.sha256 or "none",
        "suite": suite.name,
        "parameters": suite.protocol(),
        "data": folder.fingerprint(),
        "data_source": data_source,
        "seed": seed,
        "amp": options.amp,
        "aabench": __version__,
    }
    run_id = run_id_for(identity)
    rows = suite.summarise(evaluation.records)
    table = tidy_table(rows, run_id=run_id, model=model.name, weights=weights.label, suite=suite)
    provenance = {
        "run_id": run_id,
        "model": model.name,
        "suite": suite.name,
        "parameters": suite.parameters(),
        "protocol": suite.protocol(),
        "dimensions": list(suite.dimensions),
        "data_source": data_source,
        "weights": asdict(weights),
        "preprocessing": model.preprocessing.to_dict(),
        "data": {
            "root": str(folder.root),
            "fingerprint": folder.fingerprint(),
            "limit": folder.limit,
            "skipped_images": evaluation.skipped,
        },
        "n": evaluation.images,
        "views": evaluation.views,
        "seed": seed,
        "device": str(device),
        "device_name": device_description(device),
        "dtype": "float32",
        "amp": options.amp,
        "channels_last": options.uses_channels_last(device),
        "compile": options.compile,
        "batch_size": options.batch_size,
        "batch_size_halvings": evaluation.batch_size_halvings,
        "workers": options.worker_count,
        "versions": versions(),
        "command": sys.argv,
        "started": started.isoformat(),
        "finished": finished.isoformat(),
        "seconds": evaluation.seconds,
        "images_per_second": evaluation.images_per_second,
        "views_per_second": evaluation.views_per_second,
        **suite.extra_provenance(),
    }
    directory = out / model.name
    paths = {
        "samples": directory / f"{suite.name}.samples.csv.gz",
        "provenance": directory / f"{suite.name}.json",
        "table": directory / f"{suite.name}.csv",
    }
    # All three or none: a failure (disk full) leaves the earlier run's files as they were.
    write_together(
        [
            (paths["samples"], table_writer(evaluation.records, paths["samples"])),
            (paths["provenance"], json_writer(provenance)),
            (paths["table"], table_writer(table, paths["table"])),
        ]
    )
    return SuiteResult(table=table, provenance=provenance, paths=paths)
