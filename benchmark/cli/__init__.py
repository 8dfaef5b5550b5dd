"""The `aabench` command line: parse, call the library, print. No metric is computed here.

Each command lives in a module of its own; importing it registers it on the app. The
modules import only typer and rich at the top, so `--help`, `models`, `suites` and
argument errors answer without importing torch.
"""

from importlib import import_module

from aabench.cli.app import app, main

# Registration order is the order `aabench --help` lists the commands in.
COMMAND_MODULES = (
    "run",
    "compare",
    "gate",
    "models",
    "suites",
    "weights",
    "make_imagenet_c",
    "prepare_val",
    "bench",
)
for _name in COMMAND_MODULES:
    import_module(f"aabench.cli.{_name}")

__all__ = ["app", "main"]
