"""`aabench run`: evaluate a model on suites and print each suite's headline numbers."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import typer

from aabench import checks
from aabench.checks import printable
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
from aabench.cli.summary import headline as _headline
from aabench.cli.summary import print_summary as _print_summary
from aabench.errors import UserError

# How the view-size checks name what set a suite's views (Suite.view_size_source).
_SIZE_FLAGS = {None: "--crop {}", "crop_size": "--set crop_size={}"}


# Flags that stand for a suite parameter: (the parameter, the suites that take it).
SUITE_FLAGS = {
    "--imagenet-c": ("imagenet_c", ("imagenet-c",)),
    "--imagenet-p": ("imagenet_p", ("imagenet-p",)),
    "--normalize-by": ("normalize_by", ("imagenet-p",)),
    "--generate": ("generate", ("imagenet-c", "imagenet-p")),
}


def flag_assignments(names: list[str], assignments: list[str], given: dict) -> list[str]:
    """``assignments`` (``--set``) followed by those of the SUITE_FLAGS given; a flag
    for a suite that is not run is refused."""
    for flag, value in given.items():
        if not value:
            continue
        parameter, takers = SUITE_FLAGS[flag]
        if not any(name in takers for name in names):
            raise UserError(f"{flag} is for --suite {' or '.join(takers)}: add it to --suite")
        assignments = [*assignments, f"{parameter}={'true' if value is True else value}"]
    return assignments


@command()
def run(
    model: str = MODEL,
    suite: str = typer.Option(..., "--suite", "-s", help="Suite name(s), comma-separated."),
    weights: str = WEIGHTS,
    weights_dir: str = WEIGHTS_DIR,
    weights_url: str = WEIGHTS_URL,
    data: str = DATA,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    amp: str = AMP,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
    blurpool: str = BLURPOOL,
    fold_batchnorm: bool = FOLD_BATCHNORM,
    forward_chunk: int = FORWARD_CHUNK,
    limit: int = typer.Option(None, "--limit", help="Evaluate a deterministic subset of N."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random draw."),
    assignments: list[str] = SET,
    imagenet_c: str = typer.Option(
        None, "--imagenet-c", help="Released ImageNet-C root (for --suite imagenet-c)."
    ),
    imagenet_p: str = typer.Option(
        None, "--imagenet-p", help="Released ImageNet-P root (for --suite imagenet-p)."
    ),
    normalize_by: str = typer.Option(
        None,
        "--normalize-by",
        help="imagenet-p: a reference run's imagenet-p.csv (e.g. AlexNet's) for FR and mFR.",
    ),
    generate: bool = typer.Option(
        False,
        "--generate",
        help="imagenet-c / imagenet-p: corrupt or perturb the --data images on the fly.",
    ),
    out: Path = typer.Option(Path("runs"), "--out", help="Output directory."),
    skip_bad_images: bool = typer.Option(
        False, "--skip-bad-images", help="Skip (and record) images that cannot be decoded."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run from its checkpoints."
    ),
    restart: bool = typer.Option(
        False, "--restart", help="Discard an interrupted run's checkpoints and start over."
    ),
    checkpoint_every: float = typer.Option(
        60.0, "--checkpoint-every", help="Seconds between checkpoints of finished images."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JSON,
    factory_args: list[str] = FACTORY_ARGS,
    name: str = NAME,
    resize: int = RESIZE,
    crop: int = CROP,
    interpolation: str = INTERPOLATION,
    mean: str = MEAN,
    std: str = STD,
) -> None:
    """Run benchmark suites on a model and write tidy tables with provenance."""
    from aabench.suites.params import build_suites
    from aabench.suites.registry import get_suite

    # First the arguments and the weights, without torch (seconds to import): a wrong
    # name, suite or --set, or weights that cannot be had, is one line before anything
    # else happens. Under torchrun every rank fails the same way.
    seed = checks.seed(seed)
    names = suite_names(suite)
    assignments = flag_assignments(
        names,
        assignments,
        {
            "--imagenet-c": imagenet_c,
            "--imagenet-p": imagenet_p,
            "--normalize-by": normalize_by,
            "--generate": generate,
        },
    )
    suite_objects = build_suites(names, [get_suite(name) for name in names], assignments)
    # Default weights are found (mirror, cache: verified) or downloaded now, up front.
    loaded = settle_model(
        model, weights, weights_dir, weights_url, seed, factory_args, name,
        resize=resize, crop=crop, interpolation=interpolation, mean=mean, std=std,
    )  # fmt: skip
    check_apart(out, data, loaded.name)
    # Then the data and the suites' fit to the model's geometry, still without torch for
    # a built-in model: a wrong folder or a shift larger than the crop is one line now.
    # Under torchrun only after the ranks have met, so that one rank's bad data stops
    # them all instead of leaving the others waiting to meet it.
    from aabench.data.folder import open_image_folder

    def open_and_check():
        opened = open_image_folder(data, limit=limit)
        for suite_object in suite_objects:
            suite_object.check_geometry(loaded.preprocessing)
        return opened

    alone = os.environ.get("WORLD_SIZE", "1") == "1"
    folder = open_and_check() if alone else None

    from aabench import distributed
    from aabench.checkpoint import CheckpointOptions
    from aabench.engine import EngineOptions
    from aabench.models.preprocessing import check_views_fit
    from aabench.results.files import check_writable
    from aabench.runner import check_unfinished, random_weights_warning, run_suite

    # Under torchrun, an error from here on stops every rank together.
    world = distributed.start(device)
    if folder is None:
        folder = open_and_check()
    checkpoints = CheckpointOptions(resume=resume, restart=restart, every=checkpoint_every)
    options = EngineOptions(
        device=world.device,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        compile=compile_model,
        blurpool=blurpool,
        fold_batchnorm=fold_batchnorm,
        forward_chunk=forward_chunk,
        quiet=quiet or as_json or not world.is_main,
        skip_bad_images=skip_bad_images,
    )
    for suite_object in suite_objects:
        options.check_suite(suite_object)
    loaded.build()
    # Before any image is read: views the model's downsampling cannot take are one
    # line, not a traceback from the first batch.
    check_views_fit(
        suite_objects, loaded.preprocessing, loaded.module, loaded.name, _SIZE_FLAGS.get
    )
    if world.is_main:
        # Before hours of work, not after: the outputs must have somewhere to go.
        check_writable(out / loaded.name)
        check_unfinished(loaded, suite_objects, folder, options, seed, out, checkpoints)
    summaries = []
    for suite_object in suite_objects:
        result = run_suite(
            loaded, suite_object, folder, options, seed=seed, out=out, world=world,
            checkpoints=checkpoints,
        )  # fmt: skip
        if result is None:  # not rank 0: rank 0 writes and prints
            continue
        summaries.append(result)
        if result.provenance["data"]["skipped_images"]:
            skipped = result.provenance["data"]["skipped_images"]
            shown = printable(skipped[:3])
            print(f"aabench: skipped {len(skipped)} bad image(s): {shown}", file=sys.stderr)
    world.close()
    if not world.is_main:
        return
    if as_json:
        # Each suite's summary prints its warnings; JSON has no summary, so stderr does,
        # last, beside the numbers they qualify (a user error stays the only line).
        warnings = [random_weights_warning(loaded.weights)]
        warnings += [w for result in summaries for w in result.provenance.get("warnings") or []]
        for warning in dict.fromkeys(w for w in warnings if w):
            print(f"aabench: warning: {printable(warning)}", file=sys.stderr)
        rows = [row for result in summaries for row in _headline(result.table)]
        typer.echo(json.dumps(rows, indent=1))
        return
    for result in summaries:
        _print_summary(result)


def suite_names(text: str) -> list[str]:
    """The names of ``--suite a,b``; a suite named twice would run twice and write its
    files twice, the second run overwriting the first."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserError("--suite is empty: name at least one suite (`aabench suites`)")
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise UserError(
            f"--suite names {', '.join(map(printable, twice))} more than once: name each suite once"
        )
    return names


def check_apart(out: Path, data: str, model: str) -> None:
    """--out and --data must not overlap: outputs written into the data set become part
    of it (the next scan refuses a folder that is not a wnid, or reads a results file as
    data), and a data set inside the folder the outputs go to may be overwritten."""
    from aabench.data.folder import SAMPLE, sample_root

    outputs = out.expanduser().resolve()
    images = (sample_root() if str(data) == SAMPLE else Path(data).expanduser()).resolve()
    shown_out, shown_data = printable(out), printable(data)
    if outputs == images:
        problem = f"--out {shown_out} is the --data directory"
    elif images in outputs.parents:
        problem = f"--out {shown_out} is inside --data {shown_data}"
    elif outputs / model == images or outputs / model in images.parents:
        problem = f"--data {shown_data} is inside {printable(out / model)}, where the outputs go"
    else:
        return
    raise UserError(f"{problem}: outputs must not mix with the images; choose another --out")
