"""`aabench bench`: forward-only, pipeline-only and end-to-end throughput."""

from __future__ import annotations

import json

import typer

from aabench.cli.app import (
    AMP,
    BATCH_SIZE,
    BLURPOOL,
    CHANNELS_LAST,
    COMPILE,
    CROP,
    DATA,
    DEVICE,
    FACTORY_ARGS,
    FOLD_BATCHNORM,
    FORWARD_CHUNK,
    INTERPOLATION,
    JSON,
    MEAN,
    MODEL,
    NAME,
    RESIZE,
    SET,
    STD,
    WEIGHTS,
    WEIGHTS_DIR,
    WEIGHTS_URL,
    WORKERS,
    command,
)
from aabench.cli.model import settle_model
from aabench.cli.run import flag_assignments


@command("bench")
def bench_command(
    model: str = MODEL,
    suite: str = typer.Option("shift", "--suite", "-s", help="The suite to run end to end."),
    weights: str = WEIGHTS,
    weights_dir: str = WEIGHTS_DIR,
    data: str = DATA,
    images: int = typer.Option(
        64,
        "--images",
        help="At most this many images (the data cycled; 1 to 1000000) for the "
        "pipeline-only and end-to-end phases; a phase that reaches its deadline first "
        "stops there.",
    ),
    seconds: float = typer.Option(
        10.0,
        "--seconds",
        help="Time budget of the whole bench: an equal share for each phase "
        "(forward-only, pipeline-only, end-to-end, and against the baseline if there is "
        "one), warm-up included; each phase runs at least one batch. Loading the model "
        "and scanning --data come before and are not counted.",
    ),
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    amp: str = AMP,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    blurpool: str = BLURPOOL,
    fold_batchnorm: bool = FOLD_BATCHNORM,
    forward_chunk: int = FORWARD_CHUNK,
    baseline: str = typer.Option(
        "auto",
        "--baseline",
        help="Also run this model's baseline forward-only, in rounds interleaved with the "
        "model's, and report their ratio beside the FLOP ratio F that bounds it. auto: "
        "the same architecture without anti-aliasing (resnet50 for resnet50_aa; none for "
        "other models); none; or a model name. Built with random weights (speed does not "
        "depend on them), with the model's device, batch size, AMP and memory format.",
    ),
    assignments: list[str] = SET,
    imagenet_c: str = typer.Option(
        None, "--imagenet-c", help="Released ImageNet-C root (for --suite imagenet-c)."
    ),
    imagenet_p: str = typer.Option(
        None, "--imagenet-p", help="Released ImageNet-P root (for --suite imagenet-p)."
    ),
    generate: bool = typer.Option(
        False, "--generate", help="imagenet-c / imagenet-p: corrupt or perturb on the fly."
    ),
    as_json: bool = JSON,
    weights_url: str = WEIGHTS_URL,
    factory_args: list[str] = FACTORY_ARGS,
    name: str = NAME,
    resize: int = RESIZE,
    crop: int = CROP,
    interpolation: str = INTERPOLATION,
    mean: str = MEAN,
    std: str = STD,
) -> None:
    """Measure forward-only, pipeline-only and end-to-end throughput (views/s), where
    the end-to-end time goes, and the model's forward against its baseline's.

    Progress goes to stderr (none with --json); the rates are views actually run over
    the time actually spent, phase by phase.
    """
    from aabench.budget import check_arguments
    from aabench.suites.params import build_suites
    from aabench.suites.registry import get_suite

    # Every argument, and the weights, are settled before torch is imported.
    check_arguments(seconds, images, batch_size, workers)
    given = {"--imagenet-c": imagenet_c, "--imagenet-p": imagenet_p, "--generate": generate}
    assignments = flag_assignments([suite], assignments, given)
    (suite_object,) = build_suites([suite], [get_suite(suite)], assignments)
    loaded = settle_model(
        model, weights, weights_dir, weights_url, 0, factory_args, name,
        resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std,
    )  # fmt: skip
    compared = baseline_model(loaded, baseline)

    import torch

    from aabench.bench import bench
    from aabench.data.folder import open_image_folder
    from aabench.engine import EngineOptions, resolve_device

    options = EngineOptions(
        device=device,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        compile=compile_model,
        blurpool=blurpool,
        fold_batchnorm=fold_batchnorm,
        forward_chunk=forward_chunk,
    )
    loaded.build()
    folder = open_image_folder(data)
    result = bench(
        loaded,
        suite_object,
        folder,
        options,
        images=images,
        seconds=seconds,
        quiet=as_json,
        baseline=compared,
    )
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
        "seconds_per_phase": result.seconds_per_phase,
        "forward_views": result.forward.views,
        "forward_seconds": result.forward.seconds,
        "pipeline_images": result.pipeline.images,
        "pipeline_views": result.pipeline.views,
        "pipeline_seconds": result.pipeline.seconds,
        "end_to_end_views": result.end_to_end.views,
        "end_to_end_seconds": result.end_to_end.seconds,
        "forward_views_per_second": result.forward_views_per_second,
        # Before the pipeline and after the end to end: how much the machine drifted.
        "forward_halves_views_per_second": [h.views_per_second for h in result.forward_halves],
        "pipeline_views_per_second": result.pipeline_views_per_second,
        "end_to_end_views_per_second": result.end_to_end_views_per_second,
        "end_to_end_over_forward": result.end_to_end_over_forward,
        "pipeline_over_forward": result.pipeline_over_forward,
        **baseline_report(result.against_baseline),
        **stages_report(result.end_to_end.stages),
    }
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    for key, value in report.items():
        typer.echo(f"{key:40s} {value:.3f}" if isinstance(value, float) else f"{key:40s} {value}")


def baseline_model(loaded, baseline: str):
    """The LoadedModel ``--baseline`` names (random weights, not yet built), or None."""
    from aabench.models.zoo import create_model

    if baseline == "none":
        return None
    if baseline == "auto":
        if loaded.spec.family != "antialiased":
            return None
        baseline = loaded.spec.arch
    # The model's preprocessing overrides too: both run at the same input size.
    return create_model(baseline, weights="none", build=False, preprocessing=loaded.overrides)


def baseline_report(compared) -> dict:
    if compared is None:
        return {"baseline": None}
    return {
        "baseline": compared.name,
        "interleaved_forward_views_per_second": compared.model.views_per_second,
        "baseline_forward_views_per_second": compared.baseline.views_per_second,
        "forward_over_baseline": compared.forward_ratio,
        "flop_ratio": compared.flop_ratio,
        "forward_over_baseline_of_flop_ratio": compared.of_flop_ratio,
    }


def stages_report(stages: dict) -> dict:
    """End-to-end seconds per stage (aabench.timing), and the largest."""
    from aabench.timing import bottleneck

    report = {f"end_to_end_{stage}_seconds": value for stage, value in stages.items()}
    report["end_to_end_bottleneck"] = bottleneck(stages)
    return report
