"""Property-based: whatever ``--set key=value`` list `run` is given (valid keys with odd
values: NaN, inf, huge, negative, empty, unicode; repeated keys; unknown keys), its
argument parsing either builds suites whose parameters fit the model, or refuses with
one UserError line. Through the real CLI: exit 0 or 2 only (1 is the gate's), never a
traceback, on 2 exactly one line, and never a file under --out (the engine's entry is
replaced, so no model runs; the parsing and every check before the run are real).
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from aabench.data.folder import Sample
from aabench.errors import UserError
from aabench.models.preprocessing import Preprocessing
from aabench.suites.params import build_suites, parameter_types
from aabench.suites.registry import BUILTIN
from tests.catalogue import files_under, tiny_folder
from tests.helpers import TENCH

# Suites that need no released data set to be built (ImageNet-C/P read theirs only when
# they run, which the CLI examples replace).
NAMES = sorted(BUILTIN)
KEYS = sorted({key for cls in BUILTIN.values() for key in parameter_types(cls)})
ODD_VALUES = [
    "nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "1", "2", "8", "0.5", "1.5", "-0.0",
    str(2**63), str(10**30), "", " ", "none", "null", "true", "false", "maybe",
    "٣", "é", "\x1b[2J", "a\nb", "\x00", "1_000", "0x10", "auto", "all", "common",
    "integer", "crop", "circular", "zhang", "aps", "fourier", "geometric",
]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(ODD_VALUES), st.sampled_from(ODD_VALUES), st.text(max_size=6),
    st.integers().map(str),
)  # fmt: skip
UNKNOWN_KEY = st.sampled_from(["epoch", "Max_Shift", "max_shift ", "ключ", "x" * 40])
NOT_KEY_VALUE = st.sampled_from(["=", "epochs", "=1"])


@st.composite
def runs(draw, unique: bool = True):
    """(suite names, --set items): keys mostly of the chosen suites, so that a suite's
    own odd combinations (pixel-shift mode=embed with scale=inf) come up."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2, unique=unique))
    own = sorted({key for name in names for key in parameter_types(BUILTIN[name])})
    key = st.one_of(*[st.sampled_from(own)] * 4, st.sampled_from(KEYS), UNKNOWN_KEY)
    item = st.builds(lambda k, v: f"{k}={v}", key, VALUES)
    return names, draw(st.lists(st.one_of(*[item] * 8, NOT_KEY_VALUE), max_size=4))


BOUNDED = settings(
    derandomize=True,
    max_examples=400,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow],
)


def one_line(message: str) -> None:
    assert message and "\n" not in message and "\r" not in message


@BOUNDED
@given(run=runs())
# Odd combinations that a random draw rarely makes, each of which once got through.
@example(run=(["pixel-shift"], ["mode=embed", "scale=nan"]))
@example(run=(["pixel-shift"], ["scale=inf", "mode=embed"]))
@example(run=(["shift"], ["max_shift=100000"]))
@example(run=(["worst-shift"], ["grid=spatial", "max_angle=inf"]))
@example(run=(["shift", "diagonal"], ["epochs=2", "epochs=3"]))
def test_set_lists_build_fitting_suites_or_one_user_error(run):
    """The parsing and every suite's checks, as `run` makes them (the model's default
    geometry): a UserError or suites that fit; nothing else escapes."""
    names, assignments = run
    try:
        suites = build_suites(names, [BUILTIN[name] for name in names], assignments)
        for suite in suites:
            suite.check_geometry(SMALL)
    except UserError as error:
        one_line(str(error))
        return
    assert [suite.name for suite in suites] == names
    for suite in suites:
        assert 1 <= suite.views_per_image() <= 100_000
        cut_views(suite)


# A small model geometry, so that cutting an image's views stays cheap.
SMALL = Preprocessing(resize_size=40, crop_size=32)
IMAGE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def cut_views(suite) -> None:
    """A suite that was accepted cuts one image's views: a parameter that passed the
    checks but breaks the views (a NaN scale, a shift past the image) shows here."""
    if suite.name in ("imagenet-c", "imagenet-p") or suite.views_per_image() > 2_000:
        return  # they read released data; too many views to cut per example
    views = suite.views_from({"clean": IMAGE}, Sample(f"{TENCH}/a.png", 0), 0, 0, SMALL)
    count = len(next(iter(views.meta.values()))) if views.on_device else len(views.images)
    assert count == suite.views_per_image()
    if not views.on_device:
        assert torch.isfinite(views.images.float()).all()


FACTORY = """
import torch
from torch import nn


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros(x.shape[0], 1000)


def make():
    return Zero()
"""


@pytest.fixture
def stubbed_run(monkeypatch, tmp_path_factory):
    """(data, factory, out, calls): a tiny folder, a python: factory that builds at once,
    and the engine's entry replaced by a recorder (None: as a rank that writes nothing)."""
    from aabench import runner

    root = tmp_path_factory.mktemp("properties")
    factory = root / "factory.py"
    factory.write_text(FACTORY)
    calls: list[str] = []

    def run_suite(loaded, suite, *args, **kwargs):
        calls.append(suite.name)
        return None

    monkeypatch.setattr(runner, "run_suite", run_suite)
    return tiny_folder(root / "val"), factory, root / "runs", calls


@settings(
    derandomize=True,
    max_examples=25,
    deadline=timedelta(seconds=30),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(run=runs(unique=False))
def test_run_exits_0_or_2_with_one_line_and_writes_nothing(cli, stubbed_run, run):
    names, assignments = run
    data, factory, out, calls = stubbed_run
    calls.clear()
    sets = list(itertools.chain.from_iterable(("--set", item) for item in assignments))
    code, stdout, err = cli(
        "run", "--model", f"python:{factory}:make", "--weights", "none",
        "--device", "cpu", "--workers", "0", "--quiet", "--limit", "1",
        "--suite", ",".join(names), "--data", str(data), "--out", str(out), *sets,
    )  # fmt: skip
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and err == lines[0] + "\n", err
        assert lines[0].startswith("aabench: error: ")
        assert stdout == ""
        assert calls == []
    else:
        assert calls == names
    assert files_under(out) == []
