"""Issue 13: `--help`, `models`, `suites` and every argument error of `run` answer before
torch is imported, and so does `run`'s refusal of weights it cannot get.

Each command runs in a fresh interpreter under ``-X importtime``, whose stderr names every
module imported; no line may name torch or torchvision. The network is unreachable
there: the proxies point at a closed local port, so nothing can be downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torchvision

from aabench.models import catalogue
from aabench.models.antialiased import ARCHITECTURES
from aabench.models.blurpool import FILTER_SIZES
from aabench.models.zoo import create_model

FORBIDDEN = {"torch", "torchvision"}
CLOSED = "http://127.0.0.1:9"  # the discard port: connection refused


def imported_modules(importtime_stderr: str) -> list[str]:
    """The module column of ``-X importtime`` lines ("import time: self | cumulative | name")."""
    names = []
    for line in importtime_stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        columns = line.removeprefix("import time:").split("|")
        if len(columns) == 3 and columns[0].strip().isdigit():
            names.append(columns[2].strip())
    return names


def test_imported_modules_reads_the_module_column():
    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |   torch._C\n"
        "import time:        50 |       5000 | torch\n"
        "import time:        10 |         10 | torchvisionish\n"
        "aabench: error: something\n"
    )
    assert imported_modules(stderr) == ["torch._C", "torch", "torchvisionish"]


def run_importtime(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "http_proxy": CLOSED,
        "https_proxy": CLOSED,
        "HTTP_PROXY": CLOSED,
        "HTTPS_PROXY": CLOSED,
        "no_proxy": "",
        "NO_PROXY": "",
    }
    env.pop("AABENCH_WEIGHTS_DIR", None)
    env.pop("AABENCH_WEIGHTS_URL", None)
    return subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )


def assert_torch_free(result: subprocess.CompletedProcess) -> None:
    modules = imported_modules(result.stderr)
    assert "aabench" in modules  # the importtime output was read
    loaded = sorted({name for name in modules if name.split(".")[0] in FORBIDDEN})
    assert loaded == [], f"imported {loaded[:5]}"


def user_error_line(result: subprocess.CompletedProcess) -> str:
    """The one non-importtime line of stderr, for a command that must exit 2."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, lines
    assert lines[0].startswith("aabench: error: ")
    return lines[0]


def test_importing_the_cli_imports_no_torch(tmp_path):
    result = run_importtime(tmp_path, "-c", "import aabench.cli")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_torch_free(result)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--help"], "models"),
        (["models"], "resnet18_aa"),
        (["suites"], "imagenet-p"),
        (["weights", "list", "--json"], "resnet18_lpf4_finetune-8cc58f59.pth"),
    ],
)
def test_listing_commands_import_no_torch(tmp_path, args, expected):
    result = run_importtime(tmp_path, "-m", "aabench", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert expected in result.stdout
    assert_torch_free(result)


RUN = ("-m", "aabench", "run", "--out", "runs")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "nosuch", "--suite", "shift"], ["unknown model 'nosuch'"]),
        (["--model", "resnet18", "--suite", "shfit"], ["unknown suite 'shfit'", "shift"]),
        (
            ["--model", "resnet18", "--suite", "shift", "--set", "nosuch=1"],
            ["unknown --set key nosuch", "max_shift"],
        ),
        (
            ["--model", "resnet18", "--suite", "shift", "--set", "epochs=many"],
            ["--set epochs='many': expected int"],
        ),
        (["--model", "resnet18_aa9", "--suite", "shift"], ["filter size", "1..7"]),
        (["--model", "resnet152_aa3", "--suite", "shift"], ["no released weights"]),
    ],
    ids=["model", "suite", "set-key", "set-type", "filter-size", "no-release"],
)
def test_run_argument_errors_import_no_torch(tmp_path, args, words):
    result = run_importtime(tmp_path, *RUN, *args)
    line = user_error_line(result)
    for word in words:
        assert word in line
    assert_torch_free(result)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "nosuch"], ["unknown model 'nosuch'"]),
        (["--model", "resnet18", "--suite", "shfit"], ["unknown suite 'shfit'"]),
        (["--model", "resnet18", "--set", "nosuch=1"], ["unknown --set key nosuch"]),
        (["--model", "resnet18", "--seconds", "0"], ["--seconds must be more than 0"]),
    ],
    ids=["model", "suite", "set-key", "seconds"],
)
def test_bench_argument_errors_import_no_torch(tmp_path, args, words):
    result = run_importtime(tmp_path, "-m", "aabench", "bench", *args)
    line = user_error_line(result)
    for word in words:
        assert word in line
    assert_torch_free(result)


def test_run_refuses_unavailable_weights_before_torch_and_data(tmp_path):
    # Not cached, no mirror, no network: one line with the three ways out, before torch
    # is imported, the data opened or any output directory made.
    result = run_importtime(
        tmp_path, *RUN, "--model", "resnet18_aa", "--suite", "shift", "--data", "missing"
    )
    line = user_error_line(result)
    for word in (
        "could not download",
        "aabench weights fetch resnet18_aa",
        "--weights-dir",
        "put resnet18_lpf4_finetune-8cc58f59.pth in",
        "--weights none",
    ):
        assert word in line
    assert "missing" not in line  # the data folder was never looked at
    assert_torch_free(result)
    assert not (tmp_path / "runs").exists()
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    assert not cache.exists() or list(cache.iterdir()) == []


# ------------------------------------------ the torch-free catalogue agrees with torch


def test_catalogue_architectures_are_the_builders():
    assert tuple(ARCHITECTURES) == catalogue.ARCHITECTURE_NAMES
    assert FILTER_SIZES is catalogue.FILTER_SIZES


@pytest.mark.parametrize("arch", catalogue.ARCHITECTURE_NAMES)
def test_baseline_specs_are_torchvisions_imagenet1k_v1(arch):
    assert catalogue.parse_model_name(arch) == catalogue.torchvision_spec(
        arch, arch, "IMAGENET1K_V1"
    )
    enum = torchvision.models.get_model_weights(arch)
    assert catalogue.parse_model_name(arch).weights.url == enum.IMAGENET1K_V1.url


def test_models_are_built_on_first_use():
    lazy = create_model("resnet18_aa", weights="none", init_seed=3, build=False)
    assert not lazy.built
    assert lazy.weights.random
    module = lazy.module
    assert lazy.built and lazy.module is module and not module.training
    eager = create_model("resnet18_aa", weights="none", init_seed=3).module.state_dict()
    assert list(module.state_dict()) == list(eager)
    assert all(module.state_dict()[key].equal(value) for key, value in eager.items())
