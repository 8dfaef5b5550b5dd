"""The `aabench` command line: parse, call the library, print. No metric is computed here."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmark import __version__
from benchmark.errors import UserError
from results.table import TIDY_COLUMNS as _TIDY

app = typer.Typer(
    help="Measure how shift-invariant and corruption-robust image classifiers are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
INTERNAL_ERROR = 3
_state = {"debug": False}  # set by --debug or AABENCH_DEBUG, read by main()

# Options shared by several commands, declared once.
MODEL = typer.Option(..., "--model", "-m", help="Model name (`aabench models`).")
WEIGHTS = typer.Option(
    None, "--weights", help="Checkpoint PATH or URL, or 'none' for random weights."
)
WEIGHTS_DIR = typer.Option(
    None,
    "--weights-dir",
    envvar="AABENCH_WEIGHTS_DIR",
    help="Local mirror directory, searched by file name before the cache.",
)
DATA = typer.Option(
    "sample", "--data", help="ImageNet val folder, or 'sample' for the embedded set."
)
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:<i>.")
BATCH_SIZE = typer.Option(64, "--batch-size", help="Views per forward pass.")
WORKERS = typer.Option(None, "--workers", help="Decoding workers (default: cores-1).")
AMP = typer.Option("off", "--amp", help="off, bf16 or fp16.")
CHANNELS_LAST = typer.Option(
    None, "--channels-last/--no-channels-last", help="Default: on for CUDA, off on CPU."
)
COMPILE = typer.Option(False, "--compile", help="torch.compile the model.")
SET = typer.Option([], "--set", help="Override a suite parameter: --set key=value (repeatable).")
JSON = typer.Option(False, "--json", help="Print JSON for machines.")


INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C


class Interrupted(Exception):
    """Ctrl-C, carried past click (which would turn it into exit code 1, the gate's
    "regression") to main()."""


def command(*args, **kwargs):
    """app.command, with Ctrl-C inside the command becoming a clean exit 130."""

    def register(function):
        @functools.wraps(function)
        def interruptible(*call_args, **call_kwargs):
            try:
                return function(*call_args, **call_kwargs)
            except KeyboardInterrupt:
                raise Interrupted from None

        return app.command(*args, **kwargs)(interruptible)

    return register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aabench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
) -> None:
    _state["debug"] = _state["debug"] or debug


@command()
def models(
    as_json: bool = JSON,
    weights_dir: str = WEIGHTS_DIR,
) -> None:
    """List every built-in model name with its filter size, weights and licence."""
    from benchmark.models.weights import weights_dir as resolve_weights_dir
    from benchmark.models.zoo import available_models, is_cached

    mirror = resolve_weights_dir(weights_dir)
    rows = [
        {
            "name": spec.name,
            "arch": spec.arch,
            "family": spec.family,
            "filter_size": spec.filter_size,
            "weights": spec.weights.file_name if spec.weights else None,
            "cached": is_cached(spec, mirror),
            "licence": spec.weights.licence if spec.weights else None,
            "preprocessing": asdict(spec.preprocessing),
        }
        for spec in available_models()
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title="aabench models (also: torchvision:<name>, timm:<name>)")
    for column in ("name", "arch", "k", "weights", "cached", "licence"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row["name"],
            row["arch"],
            str(row["filter_size"] or "-"),
            row["weights"] or "- (--weights PATH)",
            "yes" if row["cached"] else "no",
            row["licence"] or "-",
        )
    Console().print(table)


@command()
def run(
    model: str = MODEL,
    suite: str = typer.Option(..., "--suite", "-s", help="Suite name(s), comma-separated."),
    weights: str = WEIGHTS,
    weights_dir: str = WEIGHTS_DIR,
    data: str = DATA,
    device: str = DEVICE,
    batch_size: int = BATCH_SIZE,
    workers: int = WORKERS,
    amp: str = AMP,
    channels_last: bool = CHANNELS_LAST,
    compile_model: bool = COMPILE,
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
) -> None:
    """Run benchmark suites on a model and write tidy tables with provenance."""
    from benchmark import distributed
    from benchmark.checkpoint import CheckpointOptions
    from benchmark.data.folder import open_image_folder
    from benchmark.engine import EngineOptions
    from benchmark.models.zoo import create_model
    from benchmark.runner import check_unfinished, run_suite
    from results.files import check_writable
    from suites.params import build_suites
    from suites.registry import get_suite

    # First: under torchrun, an error from here on stops every rank together.
    world = distributed.start(device)
    checkpoints = CheckpointOptions(resume=resume, restart=restart, every=checkpoint_every)
    names = [name.strip() for name in suite.split(",") if name.strip()]
    if not names:
        raise UserError("--suite is empty: name at least one suite (`aabench suites`)")
    for flag, given, assignment, takers in (
        ("--imagenet-c", imagenet_c, f"imagenet_c={imagenet_c}", ("imagenet-c",)),
        ("--imagenet-p", imagenet_p, f"imagenet_p={imagenet_p}", ("imagenet-p",)),
        ("--normalize-by", normalize_by, f"normalize_by={normalize_by}", ("imagenet-p",)),
        ("--generate", generate, "generate=true", ("imagenet-c", "imagenet-p")),
    ):
        if given:
            if not any(name in takers for name in names):
                raise UserError(f"{flag} is for --suite {' or '.join(takers)}: add it to --suite")
            assignments = [*assignments, assignment]
    suite_objects = build_suites(names, [get_suite(name) for name in names], assignments)
    options = EngineOptions(
        device=world.device,
        batch_size=batch_size,
        workers=workers,
        amp=amp,
        channels_last=channels_last,
        compile=compile_model,
        quiet=quiet or as_json or not world.is_main,
        skip_bad_images=skip_bad_images,
    )
    folder = open_image_folder(data, limit=limit)
    loaded = create_model(model, weights=weights, weights_dir_path=weights_dir, init_seed=seed)
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
            print(f"aabench: skipped {len(skipped)} bad image(s): {skipped[:3]}", file=sys.stderr)
    world.close()
    if not world.is_main:
        return
    if as_json:
        rows = [row for result in summaries for row in _headline(result.table)]
        typer.echo(json.dumps(rows, indent=1))
        return
    for result in summaries:
        _print_summary(result)


def _headline(table) -> list[dict]:
    """Rows that are not broken down by a dimension (the suite's overall numbers)."""
    dimensions = [c for c in table.columns if c not in (*_TIDY, "note")]
    overall = table[table[dimensions].isna().all(axis=1)] if dimensions else table
    return json.loads(overall[list(_TIDY)].to_json(orient="records"))


def _print_summary(result) -> None:
    console = Console()
    provenance = result.provenance
    table = Table(
        title=f"{provenance['model']} / {provenance['suite']} "
        f"(n={provenance['n']}, weights {result.table['weights'].iloc[0]})"
    )
    for column in ("metric", "value", "unit"):
        table.add_column(column)
    for row in _headline(result.table):
        value = "-" if row["value"] is None else f"{row['value']:.2f}"
        table.add_row(row["metric"], value, row["unit"])
    console.print(table)
    console.print(f"table: {result.paths['table']}  ({provenance['images_per_second']:.1f} img/s)")


@command("compare")
def compare_command(
    paths: list[str] = typer.Argument(
        ..., help="Tables (<suite>.csv) or run directories; the first is the reference."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Write a report: report.html or .md."),
    metric: list[str] = typer.Option([], "--metric", help="Only these metrics (repeatable)."),
    published: str = typer.Option(
        None, "--published", help="Compare against published numbers (e.g. antialiased-cnns)."
    ),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Compare runs of different protocols or data anyway."
    ),
    all_rows: bool = typer.Option(
        False, "--all-rows", help="Also print rows broken down by a dimension (per offset...)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap replicates."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = JSON,
) -> None:
    """Compare runs: aligned values, deltas, and whether each difference is real."""
    from results.compare import compare_groups, dimension_columns, load_runs

    groups = load_runs(paths)
    if published:
        from results.published import published_reference

        groups = [[published_reference(published, group[0]), *group] for group in groups]
    elif len(paths) < 2:
        raise UserError("compare needs two or more tables or run directories (or --published)")
    comparison = compare_groups(
        groups,
        allow_mismatch=allow_mismatch,
        metrics=metric or None,
        replicates=bootstrap,
        seed=seed,
    )
    dims = dimension_columns(groups)
    if out is not None:
        from results.report import write_report

        write_report(comparison, out)
    if as_json:
        typer.echo(comparison.rows.to_json(orient="records", indent=1))
        return
    _print_comparison(comparison, dims, all_rows)
    if out is not None:
        Console().print(f"report: {out}")


def _print_comparison(comparison, dims: list[str], all_rows: bool) -> None:
    console = Console()
    for warning in comparison.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    rows = comparison.rows
    present = [d for d in dims if d in rows]
    if present and not all_rows:
        rows = rows[rows[present].isna().all(axis=1)]
    several = rows["candidate"].nunique() > 1
    table = Table(title=f"reference: {escape(comparison.runs[0].label)}")
    columns = ["suite", "metric", *present, "unit", "reference"]
    columns += ["candidate", "value"] if several else [escape(comparison.runs[1].label)]
    for column in [*columns, "delta", "paired test"]:
        table.add_column(column)
    for _, row in rows.iterrows():
        colour = "green" if row["improved"] else ("red" if row["delta"] != 0 else "white")
        candidate = [escape(row["candidate"])] if several else []
        table.add_row(
            row["suite"],
            row["metric"],
            *[_cell(row.get(d)) for d in present],
            row["unit"],
            f"{row['reference_value']:.2f}",
            *candidate,
            f"{row['candidate_value']:.2f}",
            f"[{colour}]{row['delta']:+.2f}[/]",
            _significance(row),
        )
    console.print(table)


def _cell(value) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else str(value)


def _significance(row) -> str:
    if not _cell(row["test"]):
        return "no paired statistics"
    mark = " *" if row["significant"] else ""
    if row["test"] == "mcnemar":
        return f"McNemar p={row['p_value']:.3g}{mark}"
    return f"95% CI [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]{mark}"


@command("gate")
def gate_command(
    reference: str = typer.Option(..., "--reference", help="Reference table or run directory."),
    candidate: str = typer.Option(..., "--candidate", help="Candidate table or run directory."),
    rules: Path = typer.Option(None, "--rules", help="Rules file (TOML); default: README's."),
    summary: Path = typer.Option(None, "--summary", help="Write a Markdown summary here."),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Gate runs of different protocols or data anyway."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap replicates."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Exit 1 when the candidate regresses beyond the rules, 0 when it does not."""
    from results.compare import compare_groups, dimension_columns, load_runs
    from results.files import write_atomic
    from results.gate import DEFAULT_RULES, apply_rules, load_rules, summary_markdown

    rule_list = load_rules(rules) if rules else list(DEFAULT_RULES)
    groups = load_runs([reference, candidate], every_reference_suite=True)
    comparison = compare_groups(
        groups, allow_mismatch=allow_mismatch, replicates=bootstrap, seed=seed
    )
    dims = dimension_columns(groups)
    result = apply_rules(comparison, rule_list, dims)
    if summary is not None:
        text = summary_markdown(result, dims)
        write_atomic(summary, lambda temporary: Path(temporary).write_text(text))
    console = Console()
    for warning in comparison.warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if result.passed:
        console.print(f"gate passed: {len(result.checked)} metric(s) within the rules")
        return
    console.print(f"[bold red]gate failed[/]: {len(result.failures)} regression(s)")
    for _, row in result.failures.iterrows():
        console.print(
            escape(
                f"  {row['suite']}.{row['metric']}: {row['reference_value']:.2f} -> "
                f"{row['candidate_value']:.2f} ({row['delta']:+.2f}); rule {row['rule']}"
            )
        )
    raise typer.Exit(1)


@command("suites")
def list_suites(
    as_json: bool = JSON,
) -> None:
    """List every suite with its parameters, defaults and metrics."""
    from suites.params import parameter_types
    from suites.registry import available_suites

    described = []
    for name, cls in available_suites().items():
        defaults = cls().parameters()
        described.append(
            {
                "name": name,
                "description": cls.description,
                "parameters": {
                    key: {"type": _type_name(kind), "default": defaults[key]}
                    for key, kind in parameter_types(cls).items()
                },
                "metrics": {key: asdict(metric) for key, metric in cls.metrics.items()},
                "dimensions": list(cls.dimensions),
            }
        )
    if as_json:
        typer.echo(json.dumps(described, indent=1))
        return
    console = Console()
    for suite in described:
        console.print(f"[bold]{suite['name']}[/bold]: {suite['description']}")
        for key, parameter in suite["parameters"].items():
            console.print(
                escape(f"  --set {key}=  ({parameter['type']}, default {parameter['default']!r})")
            )
        for key, metric in suite["metrics"].items():
            direction = "higher is better" if metric["higher_is_better"] else "lower is better"
            console.print(
                escape(f"  metric {key} [{metric['unit']}, {direction}]: {metric['description']}")
            )


def _type_name(kind: object) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


@command("make-imagenet-c")
def make_imagenet_c(
    data: str = typer.Option(None, "--data", help="ImageNet val folder (<root>/<wnid>/<image>)."),
    out: Path = typer.Option(None, "--out", help="Output directory (released layout)."),
    corruptions: str = typer.Option(
        "common",
        "--corruptions",
        help="Comma-separated names, or common, extra, all, noise, blur, weather, digital.",
    ),
    severities: str = typer.Option("1,2,3,4,5", "--severities", help="Comma-separated, 1..5."),
    limit: int = typer.Option(None, "--limit", help="A deterministic subset of N images."),
    workers: int = typer.Option(
        None, "--workers", help="Processes (default: cores-1; 0: in-process)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of every corruption's random draws."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = JSON,
) -> None:
    """Generate ImageNet-C from ImageNet val in the released layout (resumable)."""
    from benchmark.data.corruptions import parse_corruptions, parse_severities
    from benchmark.data.make_imagenet_c import make_imagenet_c as generate

    if data is None:
        raise UserError("--data is required: pass the ImageNet val folder (<root>/<wnid>/<image>)")
    if out is None:
        raise UserError("--out is required: pass the directory to write ImageNet-C into")
    manifest = generate(
        data,
        out,
        corruptions=parse_corruptions(corruptions),
        severities=parse_severities(severities),
        limit=limit,
        workers=workers,
        seed=seed,
        quiet=quiet or as_json,
    )
    if as_json:
        typer.echo(json.dumps(manifest, indent=1))
        return
    typer.echo(
        f"{out}: {manifest['written']} file(s) written, {manifest['skipped']} kept, "
        f"{manifest['images']} image(s) x {manifest['files'] // max(manifest['images'], 1)} "
        f"cell(s) in {manifest['seconds']:.1f} s ({manifest['images_per_second']:.2f} images/s, "
        f"{manifest['files_per_second']:.1f} files/s)"
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

    from benchmark.bench import bench
    from benchmark.data.folder import open_image_folder
    from benchmark.engine import EngineOptions, resolve_device
    from benchmark.models.zoo import create_model
    from suites.params import build_suites
    from suites.registry import get_suite

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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2.

    Typer runs in standalone mode, so usage errors, --help and --version exit through
    SystemExit with click's own codes; only our UserError is translated here.
    """
    _state["debug"] = bool(os.environ.get("AABENCH_DEBUG"))
    try:
        app(args=argv, prog_name="aabench")
    except UserError as error:
        if _state["debug"]:
            _other_ranks_stop(error.exit_code, str(error))
            raise
        _exit(error.exit_code, f"aabench: error: {error}", str(error))
    except Interrupted:
        _exit(
            INTERRUPTED,
            "aabench: interrupted: outputs already written are kept; nothing was written "
            "for the unfinished step (a run keeps its finished images: --resume continues it)",
            "interrupted",
        )
    except Exception as error:
        # A bug, not bad input: show everything, and never exit 1, which `gate` reserves
        # for a regression.
        traceback.print_exc()
        _exit(
            INTERNAL_ERROR,
            f"aabench {__version__}: internal error (a bug): please report it with the "
            "traceback above",
            f"a rank hit an internal error (a bug; its traceback is in its output): "
            f"{type(error).__name__}: {error}",
        )


def _other_ranks_stop(code: int, message: str):
    """Under torchrun: tell the other ranks to stop. Imported late: only `run` starts a
    distributed world, and torch is slow to import for the other commands."""
    if "benchmark.distributed" not in sys.modules:
        return None
    world = sys.modules["benchmark.distributed"].current()
    world.stop(code, message)
    return world


def _exit(code: int, line: str, message: str):
    """Print ``line`` and exit with ``code``; under torchrun only rank 0 prints, and
    every rank stops with the same code (``message`` is what rank 0 shows for another
    rank's failure)."""
    world = _other_ranks_stop(code, message)
    if world is None or world.is_main:
        print(line, file=sys.stderr)
    if world is not None:
        world.leave(line)
    sys.exit(code)


if __name__ == "__main__":
    main()
