"""Issue 16: `--model python:FILE.py:FACTORY` (or python:module:FACTORY) evaluates a
module of the user's, with explicit preprocessing; every bad factory is one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import aabench
from aabench.cli import main
from aabench.errors import UserError
from aabench.models import custom
from aabench.runner import TIMING_FIELDS
from tests.benchmark.test_fast_start import assert_torch_free, run_importtime, user_error_line

# A model circularly shift-invariant by construction: circular padding, stride 1, ReLU
# and a global max (exact whatever the order of the positions), so a rolled input gives
# bit-identical logits. And a strided CNN whose flattened features move with the input.
FACTORIES = """
import torch
from torch import nn


class Circular(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            nn.Conv2d(width, 16, 3, padding=1, padding_mode="circular"), nn.ReLU(),
        )
        self.head = nn.Linear(16, 1000)

    def forward(self, x):
        return self.head(self.features(x).amax(dim=(2, 3)))


class Strided(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 4, stride=4)
        self.head = nn.Linear(4 * 8 * 8, 1000)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def circular(width: int = 8):
    return Circular(width)


def strided():
    return Strided()


def with_preprocessing():
    return Strided(), {"resize": 40, "crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25,) * 3}


def anything(depth, scale=1.0, name="x"):
    return Circular(), {"resize": 40, "crop": 32}
"""
SMALL = ("--resize", "40", "--crop", "32")  # the strided model's head wants 32 x 32
BASE = ("--suite", "shift", "--workers", "0", "--quiet", *SMALL)
QUICK = (*BASE, "--set", "epochs=1")
CIRCULAR = ("--set", "mode=circular")


@pytest.fixture
def factories(tmp_path) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORIES)
    return path


def run_cli(cli, factory: str, out: Path, *extra: str, epochs: int = 1):
    # A --set key may be given once: the epochs are the caller's choice.
    quick = (*BASE, "--set", f"epochs={epochs}")
    return cli("run", "--model", factory, *quick, "--out", str(out), *extra)


def table(out: Path, model: str, suite: str = "shift") -> pd.DataFrame:
    return pd.read_csv(out / model / f"{suite}.csv")


def value(frame: pd.DataFrame, metric: str) -> float:
    return float(frame.loc[frame["metric"] == metric, "value"].iloc[0])


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"test_factories_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------- measuring a factory


def test_a_circular_model_is_exactly_100_percent_circularly_consistent(cli, factories, tmp_path):
    out = tmp_path / "runs"
    for factory in ("circular", "strided"):
        code, _, err = run_cli(cli, f"python:{factories}:{factory}", out, *CIRCULAR, epochs=5)
        assert code == 0, err
    assert value(table(out, "circular"), "consistency") == 100.0
    # The strided model sees different pixels at every non-multiple-of-4 roll.
    assert value(table(out, "strided"), "consistency") < 100.0
    provenance = json.loads((out / "circular" / "shift.json").read_text())
    assert provenance["model"] == "circular"  # the factory's name
    assert provenance["factory"]["factory"] == f"python:{factories}:circular"
    digest = custom.sha256_of(factories)
    assert provenance["factory"]["factory_files"] == [{"file": str(factories), "sha256": digest}]
    assert provenance["model_source"]["source_files"] == [
        {"file": str(factories), "sha256": digest}
    ]
    assert provenance["weights"]["name"] == "module's own"  # no --weights: the factory's own
    assert provenance["random_weights"] is False
    assert provenance["preprocessing_overrides"] == {"resize_size": 40, "crop_size": 32}
    assert provenance["preprocessing"]["crop_size"] == 32


def test_weights_load_strictly_and_a_changed_file_changes_the_run_id(cli, factories, tmp_path):
    torch.manual_seed(5)
    checkpoint = tmp_path / "strided.pt"
    state = import_file(factories).strided().state_dict()
    # The reference script's container and DataParallel prefix, as for every model.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, checkpoint)
    out = tmp_path / "runs"
    code, _, err = run_cli(cli, f"python:{factories}:strided", out, "--weights", str(checkpoint))
    assert code == 0, err
    provenance = json.loads((out / "strided" / "shift.json").read_text())
    assert provenance["weights"]["sha256"] == custom.sha256_of(checkpoint)
    assert table(out, "strided")["weights"].unique().tolist() == ["strided.pt"]
    first = provenance["run_id"]
    factories.write_text(FACTORIES + "\n# a comment: different code, a different measurement\n")
    code, _, err = run_cli(
        cli, f"python:{factories}:strided", tmp_path / "again", "--weights", str(checkpoint)
    )
    assert code == 0, err
    again = json.loads((tmp_path / "again" / "strided" / "shift.json").read_text())
    assert again["run_id"] != first
    assert (table(tmp_path / "again", "strided")["value"] == table(out, "strided")["value"]).all()
    # A checkpoint of another model is refused like any other: strictly, one line.
    wrong = tmp_path / "circular.pt"
    torch.save(import_file(factories).circular().state_dict(), wrong)
    code, _, err = run_cli(
        cli, f"python:{factories}:strided", tmp_path / "x", "--weights", str(wrong)
    )
    assert code == 2
    assert "checkpoint does not fit factory strided" in err
    assert not (tmp_path / "x").exists()


def test_factory_args_are_typed_and_recorded_and_name_overrides(cli, factories, tmp_path):
    out = tmp_path / "runs"
    args = ("--factory-arg", "width=4", "--name", "circular-w4")
    code, _, err = run_cli(cli, f"python:{factories}:circular", out, *args)
    assert code == 0, err
    provenance = json.loads((out / "circular-w4" / "shift.json").read_text())
    assert provenance["factory"]["factory_args"] == {"width": 4}
    assert provenance["model"] == "circular-w4"
    assert table(out, "circular-w4")["model"].unique().tolist() == ["circular-w4"]


def test_a_factory_may_return_its_preprocessing_and_flags_override_it(cli, factories, tmp_path):
    out = tmp_path / "runs"
    factory = f"python:{factories}:with_preprocessing"
    code, _, err = cli("run", "--model", factory, "--suite", "accuracy", "--workers", "0",
                       "--quiet", "--out", str(out), "--std", "0.5,0.5,0.5")  # fmt: skip
    assert code == 0, err
    provenance = json.loads((out / "with_preprocessing" / "accuracy.json").read_text())
    assert provenance["preprocessing"] == {
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "resize_size": 40, "crop_size": 32,
        "interpolation": "bilinear",
    }  # fmt: skip
    assert provenance["preprocessing_overrides"] == {"std": [0.5, 0.5, 0.5]}


def test_a_module_name_target_finds_its_file_without_importing(
    cli, factories, tmp_path, monkeypatch
):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('the package is not imported')\n")
    (package / "models.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)  # a module name is looked up in the current directory too
    target = custom.parse_target("python:mypkg.models:circular")
    assert target.is_module and target.file == (package / "models.py").resolve()
    custom.check_target(target)  # parsed, not imported: the package's __init__ never ran
    # Imported for real, the package's __init__ runs and its error is one line.
    code, _, err = run_cli(cli, "python:mypkg.models:circular", tmp_path / "runs")
    assert code == 2
    assert "cannot import factory module" in err and "the package is not imported" in err


# ---------------------------------------------------------- the API gives the same


def test_evaluate_and_save_write_what_run_writes(cli, factories, tmp_path):
    torch.manual_seed(3)
    checkpoint = tmp_path / "weights.pt"
    torch.save(import_file(factories).strided().state_dict(), checkpoint)
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    code, _, err = run_cli(
        cli, f"python:{factories}:strided", cli_out, "--weights", str(checkpoint)
    )
    assert code == 0, err
    module = import_file(factories).strided()  # the same file, imported by the test
    result = aabench.evaluate(
        module, "shift", preprocessing={"resize": 40, "crop": 32}, weights=str(checkpoint),
        name="strided", workers=0, epochs=1,
    )  # fmt: skip
    result.save(api_out)
    for name in ("shift.csv", "shift.samples.csv.gz"):
        assert (api_out / "strided" / name).read_bytes() == (
            cli_out / "strided" / name
        ).read_bytes()
    ours = json.loads((api_out / "strided" / "shift.json").read_text())
    theirs = json.loads((cli_out / "strided" / "shift.json").read_text())
    # What may differ: when and how fast it ran, the command line, and the factory
    # (the API was given a module, not told how it was made).
    differing = {key for key in {*ours, *theirs} if ours.get(key) != theirs.get(key)}
    assert differing <= {*TIMING_FIELDS, "command", "factory"}
    assert "factory" not in ours and "factory" in theirs
    assert ours["run_id"] == theirs["run_id"]


# ------------------------------------------------------------------- bad factories


BROKEN = {
    "imports": "import no_such_module_anywhere\n\ndef build():\n    pass\n",
    "raises": "def build():\n    return 1 / 0\n",
    "returns": "def build():\n    return [1, 2]\n",
    "none": "def build():\n    pass\n",
    "syntax": "def build(:\n",
    "absent": "def other():\n    pass\n",
    "not_callable": "build = 3\n",
}


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("imports", ["cannot import factory file", "ModuleNotFoundError", "line 1"]),
        ("raises", ["factory build() raised ZeroDivisionError", "line 2"]),
        ("returns", ["factory build returned a list, not a torch.nn.Module"]),
        ("none", ["factory build returned None"]),
        ("syntax", ["syntax error at line 1"]),
        ("absent", ["defines no 'build'", "other"]),
        ("not_callable", ["is a int, not a function"]),
    ],
)
def test_a_bad_factory_is_one_line_exit_2(cli, tmp_path, case, words):
    path = tmp_path / f"{case}.py"
    path.write_text(BROKEN[case])
    code, _, err = run_cli(cli, f"python:{path}:build", tmp_path / "runs")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aabench: error: "), err
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_factorys_own_error(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text(BROKEN["raises"])
    with pytest.raises(UserError) as raised:
        main(["--debug", "run", "--model", f"python:{path}:build", *QUICK, "--out", str(tmp_path)])
    assert isinstance(raised.value.__cause__, ZeroDivisionError)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--factory-arg", "depth"], ["--factory-arg 'depth' is not key=value"]),
        (
            ["--factory-arg", "depth=1", "--factory-arg", "nosuch=2"],
            ["no parameter 'nosuch'", "depth, scale, name"],
        ),
        (["--factory-arg", "scale=2"], ["cannot be called", "depth"]),  # depth is required
    ],
    ids=["no-equals", "unknown-key", "missing-required"],
)
def test_bad_factory_args_are_one_line(cli, factories, tmp_path, args, words):
    code, _, err = run_cli(cli, f"python:{factories}:anything", tmp_path / "runs", *args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err


def test_an_annotated_parameter_refuses_a_value_of_another_type(cli, factories, tmp_path):
    code, _, err = run_cli(
        cli, f"python:{factories}:circular", tmp_path / "r", "--factory-arg", "width=wide"
    )
    assert code == 2
    assert "--factory-arg width='wide': circular's parameter width is int" in err


def test_factory_args_without_annotations_are_literals():
    assert custom.literal("3") == 3 and custom.literal("0.5") == 0.5
    assert custom.literal("None") is None and custom.literal("none") is None
    assert custom.literal("true") is True and custom.literal("False") is False
    assert custom.literal("(1, 2)") == (1, 2) and custom.literal("'a b'") == "a b"
    assert custom.literal("resnet18") == "resnet18"  # not a literal: the text itself
    assert custom.typed_value("18", int, "depth", "f") == 18
    assert custom.typed_value("none", int | None, "depth", "f") is None
    assert custom.typed_value("yes", bool, "flag", "f") is True
    assert custom.typed_value("1", "float", "scale", "f") == 1.0  # a string annotation
    assert custom.typed_value("3", str, "tag", "f") == "3"


def test_factory_args_are_only_for_factories(cli, tmp_path):
    code, _, err = cli("run", "--model", "resnet18", "--weights", "none", *QUICK,
                       "--out", str(tmp_path), "--factory-arg", "a=1")  # fmt: skip
    assert code == 2 and "--factory-arg is for python: models" in err


# ----------------------------------------------- checked before torch is imported


@pytest.mark.parametrize(
    ("model", "extra", "words"),
    [
        ("python:missing.py:build", [], ["factory file missing.py does not exist"]),
        ("python:broken.py:build", [], ["syntax error at line 1"]),
        ("python:ok.py:nosuch", [], ["defines no 'nosuch'", "build"]),
        ("python:ok.py", [], ["names no factory"]),
        ("python:ok.py:build", ["--factory-arg", "x"], ["not key=value"]),
        ("python:ok.py:build", ["--crop", "300", "--resize", "256"], ["crop 300 is larger"]),
        ("python:ok.py:build", ["--mean", "0.5,0.5"], ["--mean must be three finite numbers"]),
        ("python:ok.py:build", ["--std", "1,1,nan"], ["--std must be three finite numbers"]),
        ("python:ok.py:build", ["--interpolation", "cubic"], ["bilinear or bicubic"]),
        ("python:no_such_package.models:build", [], ["no module named"]),
        ("python:ok.os:build", [], ["'ok' is a module, not a package"]),
    ],
    ids=[
        "missing",
        "syntax",
        "absent",
        "no-factory",
        "arg",
        "crop",
        "mean",
        "nan",
        "interp",
        "module",
        "below-a-module",
    ],
)
def test_factory_name_errors_import_no_torch(tmp_path, model, extra, words):
    (tmp_path / "broken.py").write_text(BROKEN["syntax"])
    (tmp_path / "ok.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Identity()\n"
    )
    result = run_importtime(
        tmp_path, "-m", "aabench", "run", "--model", model, "--suite", "shift", *extra
    )
    line = user_error_line(result)
    for word in words:
        assert word in line
    assert_torch_free(result)


def test_importing_aabench_imports_no_torch(tmp_path):
    result = run_importtime(tmp_path, "-c", "import aabench; aabench.__version__")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_torch_free(result)


# ------------------------------------------------------------------ compare


def test_compare_refuses_runs_of_different_preprocessing(cli, factories, tmp_path):
    for crop, out in (("32", "a"), ("24", "b")):
        code, _, err = cli("run", "--model", f"python:{factories}:circular", *QUICK,
                           "--out", str(tmp_path / out), "--crop", crop)  # fmt: skip
        assert code == 0, err
    code, _, err = cli(
        "compare", str(tmp_path / "a" / "circular"), str(tmp_path / "b" / "circular")
    )
    assert code == 2
    assert "different preprocessing: crop_size 32 vs 24" in err
