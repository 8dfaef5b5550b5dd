"""The typer app, the options several commands share, and the entry point that turns
user errors into one line and exit code 2."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import traceback

import typer

try:  # typer 0.2x carries its own copy of click; older releases use click itself
    from typer._click.exceptions import ClickException, UsageError
except ImportError:
    from click.exceptions import ClickException, UsageError

from aabench import __version__
from aabench.checks import printable
from aabench.errors import UserError

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
    None,
    "--channels-last/--no-channels-last",
    help="Default: the faster format measured for the device (on for CPU and CUDA).",
)
COMPILE = typer.Option(False, "--compile", help="torch.compile the model.")
BLURPOOL = typer.Option(
    "auto",
    "--blurpool",
    help="BlurPool's form: auto (the fastest measured for the device), reference, "
    "separable, cascade or fused; all give the same outputs to float rounding.",
)
FOLD_BATCHNORM = typer.Option(
    None,
    "--fold-batchnorm/--no-fold-batchnorm",
    help="Compute each BatchNorm inside the convolution before it (the same outputs to "
    "float rounding). Default: where measured faster (on for CPU).",
)
FORWARD_CHUNK = typer.Option(
    None,
    "--forward-chunk",
    help="Views per model call within a pass (0: the whole pass); the same outputs to "
    "float rounding. Default: measured for the device (8 on the CPU, whose cache then "
    "holds a chunk's activations; the whole pass on CUDA).",
)
SET = typer.Option([], "--set", help="Override a suite parameter: --set key=value (repeatable).")
JSON = typer.Option(False, "--json", help="Print JSON for machines.")
WEIGHTS_URL = typer.Option(
    None,
    "--weights-url",
    help="Base URL of a mirror of the release bucket (or $AABENCH_WEIGHTS_URL).",
)
FACTORY_ARGS = typer.Option(
    [],
    "--factory-arg",
    help="python: models: key=value for the factory (repeatable; typed by its "
    "annotations, else as Python literals).",
)
NAME = typer.Option(None, "--name", help="The model's name in the outputs (default: its own).")
RESIZE = typer.Option(None, "--resize", help="Resize the short side to N px.")
CROP = typer.Option(None, "--crop", help="Centre crop of N px (the model's input).")
INTERPOLATION = typer.Option(None, "--interpolation", help="bilinear or bicubic.")
MEAN = typer.Option(None, "--mean", help="Normalisation mean: R,G,B.")
STD = typer.Option(None, "--std", help="Normalisation std: R,G,B.")


INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C
TERMINATED = 128 + signal.SIGTERM  # ... and by SIGTERM (timeout, Slurm, docker stop)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that every path
    that keeps finished work on Ctrl-C keeps it on SIGTERM too."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, carried past click (which would turn it into exit code 1, the
    gate's "regression") to main()."""

    def __init__(self, terminated: bool = False):
        super().__init__("terminated" if terminated else "interrupted")
        self.terminated = terminated


def command(*args, **kwargs):
    """app.command, with Ctrl-C or SIGTERM inside the command becoming a clean exit."""

    def register(function):
        @functools.wraps(function)
        def interruptible(*call_args, **call_kwargs):
            try:
                return function(*call_args, **call_kwargs)
            except KeyboardInterrupt as stop:
                raise Interrupted(isinstance(stop, Terminated)) from None

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


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2.

    Typer runs outside click's standalone mode, so that usage errors reach us and get
    the same one line as any other bad input instead of click's framed box.
    """
    _state["debug"] = bool(os.environ.get("AABENCH_DEBUG"))
    with _sigterm_as_interrupt():
        try:
            code = app(args=argv, prog_name="aabench", standalone_mode=False)
        except UsageError as error:
            if not error.format_message():  # no arguments at all: the help was the answer
                sys.exit(error.exit_code)
            help_command = error.ctx.command_path if error.ctx else "aabench"
            _exit(
                UserError.exit_code,
                f"aabench: error: {error.format_message()} (see `{help_command} --help`)",
                error.format_message(),
            )
        except ClickException as error:
            _exit(UserError.exit_code, f"aabench: error: {error.format_message()}", str(error))
        except UserError as error:
            if _state["debug"]:
                _other_ranks_stop(error.exit_code, str(error))
                raise
            _exit(error.exit_code, f"aabench: error: {error}", str(error))
        except (Interrupted, typer.Abort) as error:
            terminated = isinstance(error, Interrupted) and error.terminated
            _exit(
                TERMINATED if terminated else INTERRUPTED,
                f"aabench: {'terminated (SIGTERM)' if terminated else 'interrupted'}: outputs "
                "already written are kept; nothing was written for the unfinished step (a run "
                "keeps its finished images: --resume continues it)",
                "terminated" if terminated else "interrupted",
            )
        except Exception as error:
            # A bug, not bad input: show everything, and never exit 1, which `gate`
            # reserves for a regression.
            traceback.print_exc()
            _exit(
                INTERNAL_ERROR,
                f"aabench {__version__}: internal error (a bug): please report it with the "
                "traceback above",
                f"a rank hit an internal error (a bug; its traceback is in its output): "
                f"{type(error).__name__}: {error}",
            )
    # A command's own exit code (gate's 1) arrives as typer.Exit's code.
    sys.exit(code if isinstance(code, int) else 0)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated in the main thread for as long as the CLI runs; the
    previous handler comes back after (the CLI also runs inside test processes)."""

    def terminate(signum, frame):
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _other_ranks_stop(code: int, message: str):
    """Under torchrun: tell the other ranks to stop. Imported late: only `run` starts a
    distributed world, and torch is slow to import for the other commands."""
    if "aabench.distributed" not in sys.modules:
        return None
    world = sys.modules["aabench.distributed"].current()
    world.stop(code, message)
    return world


def _exit(code: int, line: str, message: str):
    """Print ``line`` and exit with ``code``; under torchrun only rank 0 prints, and
    every rank stops with the same code (``message`` is what rank 0 shows for another
    rank's failure)."""
    world = _other_ranks_stop(code, message)
    if world is None or world.is_main:
        print(printable(line), file=sys.stderr)
    if world is not None:
        world.leave(line)
    sys.exit(code)


if __name__ == "__main__":
    main()
