"""`aabench bench`: forward-only, pipeline-only and end-to-end throughput."""

from __future__ import annotations

import json

import typer

from aabench.cli.app import (
    AMP,
    BATCH_SIZE,
    CHANNELS_LAST,
    COMPILE,
    DATA,
    DEVICE,
    JSON,
    MODEL,
    SET,
    WEIGHTS,
    WEIGHTS_DIR,
    WORKERS,
    command,
)


@command("bench")
def bench_command(
    model: str = MODEL,
    suite: str = typer.Option("shift", "--suite", "-s", help="The suite to run end to end."),
    weights: str = WEIGHTS,
    weights_dir: str = WEIGHTS_DIR,
    data: str = DATA,
    images: int = typer.Option(64, "--images", help="Images to run end to end (cycled)."),
    seconds: float = typer.Option(10.0, "--seconds", help="Duration of the forward-only run."),
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    amp: str = AMP,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    assignments: list[str] = SET,
    as_json: bool = JSON,
) -> None:
    """Measure forward-only, pipeline-only and end-to-end throughput (views/s)."""
    import torch

    from aabench.bench import bench
    from aabench.data.folder import open_image_folder
    from aabench.engine import EngineOptions, resolve_device
    from aabench.models.zoo import create_model
    from aabench.suites.params import build_suites
    from aabench.suites.registry import get_suite

    (suite_object,) = build_suites([suite], [get_suite(suite)], assignments)
    options = EngineOptions(
        device=device,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        compile=compile_model,
    )
    loaded = create_model(model, weights=weights, weights_dir_path=weights_dir)
    folder = open_image_folder(data)
    result = bench(loaded, suite_object, folder, options, images=images, seconds=seconds)
    report = {
        "model": model,
        "suite": suite,
        "device": str(resolve_device(options.device)),
        "batch_size": batch_size,
        "amp": amp,
        "threads": torch.get_num_threads(),
        "workers": options.worker_count,
        "images": result.images,
        "views_per_image": result.views_per_image,
        "forward_views_per_second": result.forward_views_per_second,
        "pipeline_views_per_second": result.pipeline_views_per_second,
        "end_to_end_views_per_second": result.end_to_end_views_per_second,
        "end_to_end_over_forward": result.end_to_end_over_forward,
        "pipeline_over_forward": result.pipeline_over_forward,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    for key, value in report.items():
        typer.echo(f"{key:30s} {value:.3f}" if isinstance(value, float) else f"{key:30s} {value}")
