"""Suites by name: built-ins, and plugins registered through a real entry point."""

from __future__ import annotations

import importlib
import json
import sys

import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.table import TIDY_COLUMNS
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.base import Suite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.registry import ENTRY_POINT_GROUP, available_suites, get_suite
from aabench.suites.shift import ShiftSuite

BUILTIN_NAMES = (
    "accuracy",
    "shift",
    "diagonal",
    "imagenet-c",
    "imagenet-p",
    "equivariance",
    "fractional-shift",
    "pixel-shift",
    "worst-shift",
)

TINY_SUITE = """
from dataclasses import dataclass

from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame


@dataclass
class TinySuite(Suite):
    name = "tiny"
    description = "A test plugin: top-1 on a 64 centre crop."
    metrics = {"top1": Metric("%", True, "top-1 accuracy")}

    size: int = 64

    def prepare(self, image, preprocessing):
        return resize_and_center_crop(image, self.size, self.size, preprocessing.interpolation)

    def views(self, image, sample, position, seed):
        return Views(image[None], {})

    def terms(self, records):
        return term_frame("top1", records["sample"], records["correct"])


NOT_A_SUITE = object()


@dataclass
class Accuracy2(TinySuite):
    name = "accuracy"
"""


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """Install a distribution into tmp_path (module + dist-info) and put it on sys.path."""
    modules = []

    def install(entry: str, module: str = "aabench_tiny_plugin") -> None:
        (tmp_path / f"{module}.py").write_text(TINY_SUITE)
        info = tmp_path / f"{module}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry.format(module)}\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        modules.append(module)

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()


def test_builtins_are_listed_first_in_order():
    suites = available_suites()
    assert list(suites)[:3] == ["accuracy", "shift", "diagonal"]
    assert suites["accuracy"] is AccuracySuite
    assert get_suite("shift") is ShiftSuite
    assert get_suite("diagonal") is DiagonalSuite


def test_unknown_suite_suggests_close_names():
    with pytest.raises(UserError) as error:
        get_suite("shfit")
    message = str(error.value)
    assert "unknown suite 'shfit' (did you mean shift" in message
    assert "available suites are accuracy, shift, diagonal" in message


def test_a_plugin_suite_is_found_through_its_entry_point(install_plugin):
    install_plugin("tiny = {}:TinySuite")
    cls = get_suite("tiny")
    assert issubclass(cls, Suite)
    assert cls.__module__ == "aabench_tiny_plugin"
    assert list(available_suites()) == [*BUILTIN_NAMES, "tiny"]


def test_suites_json_lists_the_plugin(install_plugin, cli):
    install_plugin("tiny = {}:TinySuite")
    code, out, _ = cli("suites", "--json")
    assert code == 0
    described = {suite["name"]: suite for suite in json.loads(out)}
    assert list(described) == [*BUILTIN_NAMES, "tiny"]
    tiny = described["tiny"]
    assert tiny["parameters"] == {"size": {"type": "int", "default": 64}}
    assert tiny["metrics"]["top1"]["unit"] == "%"
    assert tiny["dimensions"] == []


def test_a_plugin_suite_runs_end_to_end(install_plugin, cli, tmp_path):
    install_plugin("tiny = {}:TinySuite")
    out = tmp_path / "runs"
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "tiny",
        "--out", str(out), "--quiet", "--workers", "0", "--set", "size=48",
    )  # fmt: skip
    assert code == 0, err
    table = pd.read_csv(out / "resnet18_aa" / "tiny.csv")
    assert list(table.columns) == list(TIDY_COLUMNS)
    assert table[["suite", "metric", "weights", "n"]].values.tolist() == [
        ["tiny", "top1", "none", 5]
    ]
    provenance = json.loads((out / "resnet18_aa" / "tiny.json").read_text())
    assert provenance["parameters"] == {"size": 48}


def test_an_entry_point_that_is_not_a_suite_is_a_user_error(install_plugin):
    install_plugin("broken = {}:NOT_A_SUITE", module="aabench_broken_plugin")
    with pytest.raises(UserError, match=r"suite plugin 'broken' .* is not a Suite subclass"):
        get_suite("accuracy")


def test_an_entry_point_that_does_not_load_is_a_user_error(install_plugin):
    install_plugin("missing = {}:NoSuchClass", module="aabench_missing_plugin")
    with pytest.raises(UserError, match=r"suite plugin 'missing' .* failed to load"):
        available_suites()


def test_a_plugin_may_not_reuse_a_builtin_name(install_plugin):
    install_plugin("accuracy2 = {}:Accuracy2", module="aabench_clash_plugin")
    with pytest.raises(UserError, match="reuses the built-in name 'accuracy'"):
        available_suites()


def test_plugins_are_looked_up_afresh_so_an_uninstalled_one_is_gone():
    # Runs after the plugin tests above: their tmp_path is off sys.path again.
    assert list(available_suites()) == [*BUILTIN_NAMES]
