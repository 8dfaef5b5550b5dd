"""Checkpoints and --resume: finished images survive Ctrl-C and kill -9, are never
evaluated again, and a resumed run writes exactly what an uninterrupted one writes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import aabench.engine
from aabench.checkpoint import PartialRun
from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions, Hooks, Part, block_size, evaluate
from aabench.suites.shift import ShiftSuite
from aabench.suites.worst_shift import WorstShiftSuite
from tests.helpers import GOLDFISH, TENCH, loaded, make_image_folder

ROOT = Path(__file__).resolve().parents[2]  # the repository: subprocesses import from it
SUITES = ("accuracy", "shift")
OUTPUTS = [f"{suite}{ext}" for suite in SUITES for ext in (".csv", ".json", ".samples.csv.gz")]
TABLES = [name for name in OUTPUTS if not name.endswith(".json")]  # no timings in them


class Tiny(nn.Module):
    """A small random convolutional net: cheap, and its outputs are real floats."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(4, 1000)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@pytest.fixture
def noise_root(tmp_path):
    rng = np.random.default_rng(0)
    images = {
        wnid: [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
        for wnid in (TENCH, GOLDFISH)
    }
    return make_image_folder(tmp_path / "noise", images)


@pytest.fixture
def toy_run(cli, noise_root, monkeypatch):
    """`aabench run` of the tiny net on six noise images: returns run(out, *extra)."""
    import aabench.models.zoo

    monkeypatch.setattr(aabench.models.zoo, "create_model", lambda *a, **k: loaded(Tiny()))

    def invoke(out: Path, *extra: str) -> tuple[int, str, str]:
        return cli(
            "run", "--model", "toy", "--suite", ",".join(SUITES), "--data", str(noise_root),
            "--set", "epochs=2", "--batch-size", "2", "--workers", "0", "--quiet",
            "--out", str(out), "--checkpoint-every", "0", *extra,
        )  # fmt: skip

    return invoke


@pytest.fixture
def reference(toy_run, tmp_path) -> Path:
    code, _, err = toy_run(tmp_path / "reference")
    assert code == 0, err
    return tmp_path / "reference" / "toy"


@pytest.fixture
def interrupted(toy_run, tmp_path, monkeypatch) -> Path:
    """A run stopped by Ctrl-C right after the shift suite's first checkpoint."""
    real_save = PartialRun.save
    calls = []

    def save_then_ctrl_c(self, part):
        real_save(self, part)
        calls.append(self.identity["suite"])
        if calls.count("shift") == 1 and calls[-1] == "shift":
            raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(PartialRun, "save", save_then_ctrl_c)
        code, _, err = toy_run(out)
    assert code == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    return out / "toy"


def ctrl_c_after_first_checkpoint(monkeypatch, run) -> int:
    """``run()``'s exit code when Ctrl-C comes right after its first checkpoint is saved."""
    real_save = PartialRun.save

    def save_then_ctrl_c(self, part):
        real_save(self, part)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(PartialRun, "save", save_then_ctrl_c)
        return run()[0]


@contextlib.contextmanager
def record_evaluated(monkeypatch):
    """The positions of the images a run reads (workers 0: in this process)."""
    evaluated: list[int] = []
    real_getitem = aabench.engine.ViewDataset.__getitem__

    def recording(self, index):
        item = real_getitem(self, index)
        evaluated.append(item["position"])
        return item

    with monkeypatch.context() as patch:
        patch.setattr(aabench.engine.ViewDataset, "__getitem__", recording)
        yield evaluated


def files(directory: Path, names=OUTPUTS) -> dict[str, bytes]:
    present = [name for name in names if (directory / name).exists()]
    return {name: (directory / name).read_bytes() for name in present}


def one_line_error(code: int, stdout: str, err: str, *expected: str) -> None:
    assert code == 2
    assert err.startswith("aabench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and stdout == ""
    for text in expected:
        assert text in err


def test_ctrl_c_keeps_finished_images_and_resume_writes_what_an_uninterrupted_run_writes(
    toy_run, reference, interrupted, monkeypatch
):
    # The accuracy suite finished and was written; shift kept its checkpoints.
    assert sorted(p.name for p in interrupted.iterdir()) == sorted([*OUTPUTS[:3], ".partial"])
    assert sorted(p.name for p in (interrupted / ".partial").iterdir()) == ["shift"]
    before = files(interrupted)
    with record_evaluated(monkeypatch) as evaluated:
        code, _, err = toy_run(interrupted.parent, "--resume")
    assert code == 0, err
    assert evaluated == [1, 2, 3, 4, 5]  # image 0 came from its checkpoint; accuracy: none
    assert files(interrupted, TABLES) == files(reference, TABLES)  # byte for byte
    assert files(interrupted)["accuracy.json"] == before["accuracy.json"]  # kept, not rerun
    provenance = json.loads((interrupted / "shift.json").read_text())
    assert provenance["resumed_images"] == 1 and provenance["n"] == 6
    # The interrupted session's settings are in the provenance beside this one's.
    (session,) = provenance["earlier_sessions"]
    assert session["batch_size"] == 2 and session["device"] == "cpu"
    assert session["world_size"] == 1 and session["started"] < provenance["started"]
    assert not (interrupted / ".partial").exists()


def test_a_run_without_resume_is_refused_while_an_unfinished_one_exists(toy_run, interrupted):
    before = files(interrupted)
    code, stdout, err = toy_run(interrupted.parent)
    one_line_error(code, stdout, err, "unfinished run", "--resume", "--restart", "1 image(s)")
    assert files(interrupted) == before
    assert (interrupted / ".partial" / "shift" / "manifest.json").exists()


@pytest.mark.parametrize(
    "change, difference",
    [
        (("--seed", "1"), "its seed was 0, this run's is 1"),
        (("--set", "max_shift=16"), "its max_shift was 32, this run's is 16"),
    ],
)
def test_resuming_with_other_options_is_refused_before_anything_runs(
    toy_run, interrupted, change, difference
):
    before = files(interrupted)
    code, stdout, err = toy_run(interrupted.parent, "--resume", *change)
    one_line_error(code, stdout, err, "cannot resume suite shift", difference, "--restart")
    assert files(interrupted) == before  # accuracy was not rerun with the other options
    assert (interrupted / ".partial" / "shift" / "manifest.json").exists()


def test_restart_discards_the_unfinished_run(toy_run, reference, interrupted):
    code, _, err = toy_run(interrupted.parent, "--restart")
    assert code == 0, err
    assert files(interrupted, TABLES) == files(reference, TABLES)
    assert json.loads((interrupted / "shift.json").read_text())["resumed_images"] == 0
    assert not (interrupted / ".partial").exists()


def test_resume_and_restart_together_are_refused(toy_run, tmp_path):
    code, stdout, err = toy_run(tmp_path / "out", "--resume", "--restart")
    one_line_error(code, stdout, err, "--resume and --restart exclude each other")


def test_checkpoints_round_trip_exactly(tmp_path):
    records = pd.DataFrame(
        {
            "sample": np.array(["n1/a.png", "n1/a.png", "n2/ü.jpg"], dtype=object),
            "view": np.array([0, 1, 0]),
            "correct": np.array([True, False, True]),
            "p_true": np.array([0.1, np.nan, 1e-8], dtype=np.float32),
            "corruption": np.array(["clean", "fog", "clean"], dtype=object),
        }
    )
    part = Part(np.array([3, 4, 7]), records, np.array([3, 3, 7]), {4: "n1/b.png: broken"})
    partial = PartialRun(tmp_path / "partial", {"suite": "x", "seed": 0})
    partial.save(part)
    (loaded_part,) = partial.prepare(resume=True, restart=False)
    pd.testing.assert_frame_equal(loaded_part.records, records, check_exact=True)
    assert np.array_equal(loaded_part.positions, part.positions)
    assert np.array_equal(loaded_part.record_positions, part.record_positions)
    assert loaded_part.skipped == part.skipped


def test_checkpoints_hold_whole_blocks_and_resuming_from_them_changes_nothing(noise_root):
    """Parts saved before the end cover whole blocks, so a resumed session packs its
    forward passes exactly as the uninterrupted run."""
    suite = ShiftSuite(max_shift=8, epochs=3)  # 6 views per image
    folder = open_image_folder(noise_root)
    options = EngineOptions(device="cpu", batch_size=4, workers=0, quiet=True)

    def evaluate_tiny(**kwargs) -> Part:
        return evaluate(loaded(Tiny()), suite, folder, options, **kwargs).finished

    saved: list[Part] = []
    whole = evaluate_tiny(hooks=Hooks(save=saved.append, save_every=0))
    block = block_size(suite, 4)  # 2 images fill 3 batches of 4 views
    assert block == 2 and len(saved) > 1
    for part in saved[:-1]:
        assert len(part.positions) % block == 0 and part.positions[0] % block == 0
    first = Part.join(saved[:1])
    rest = evaluate_tiny(positions=np.setdiff1d(np.arange(6), first.positions))
    resumed = Part.join([first, rest])
    pd.testing.assert_frame_equal(resumed.records, whole.records, check_exact=True)


def test_kill_9_after_the_first_checkpoint_resumes_without_evaluating_finished_images(
    cli, tmp_path, monkeypatch
):
    arguments = [
        "run", "--model", "resnet18", "--weights", "none", "--suite", "shift",
        "--set", "epochs=3", "--batch-size", "6", "--workers", "0", "--device", "cpu",
        "--quiet", "--checkpoint-every", "0",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    partial = killed / "resnet18" / ".partial" / "shift"
    process = subprocess.Popen(
        [sys.executable, "-m", "aabench.cli", *arguments, "--out", str(killed)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not list(partial.glob("*.npz")) and process.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it was killed"
    finished = {int(p) for chunk in partial.glob("*.npz") for p in np.load(chunk)["positions"]}
    assert finished and len(finished) < 5

    with record_evaluated(monkeypatch) as evaluated:
        code, _, err = cli(*arguments, "--out", str(killed), "--resume")
    assert code == 0, err
    assert sorted(evaluated) == sorted(set(range(5)) - finished)
    provenance = json.loads((killed / "resnet18" / "shift.json").read_text())
    assert provenance["resumed_images"] == len(finished)

    code, _, err = cli(*arguments, "--out", str(tmp_path / "whole"))
    assert code == 0, err
    for name in ("shift.csv", "shift.samples.csv.gz"):
        resumed = (killed / "resnet18" / name).read_bytes()
        assert resumed == (tmp_path / "whole" / "resnet18" / name).read_bytes(), name


def test_an_interrupted_imagenet_p_run_resumes_to_the_same_bytes(
    cli, noise_root, tmp_path, monkeypatch
):
    # Sequences are atomic runs of views and records carry text and top-5 columns: the
    # checkpoints must keep all of them exactly.
    import aabench.models.zoo

    monkeypatch.setattr(aabench.models.zoo, "create_model", lambda *a, **k: loaded(Tiny()))

    def run(out: Path, *extra: str):
        return cli(
            "run", "--model", "toy", "--suite", "imagenet-p", "--data", str(noise_root),
            "--generate", "--set", "perturbations=translate,gaussian_noise",
            "--batch-size", "80", "--workers", "0", "--quiet", "--out", str(out),
            "--checkpoint-every", "0", *extra,
        )  # fmt: skip

    code, _, err = run(tmp_path / "reference")
    assert code == 0, err
    assert ctrl_c_after_first_checkpoint(monkeypatch, lambda: run(tmp_path / "resumed")) == 130
    with record_evaluated(monkeypatch) as evaluated:
        code, _, err = run(tmp_path / "resumed", "--resume")
    assert code == 0, err
    names = ["imagenet-p.csv", "imagenet-p.samples.csv.gz"]
    assert files(tmp_path / "resumed" / "toy", names) == files(
        tmp_path / "reference" / "toy", names
    )
    provenance = json.loads((tmp_path / "resumed" / "toy" / "imagenet-p.json").read_text())
    assert provenance["resumed_images"] > 0
    assert len(evaluated) == 6 - provenance["resumed_images"]


def test_folded_worst_shift_records_checkpoint_and_resume_exactly(noise_root, tmp_path):
    """worst-shift folds each finished image's views to one row before it is saved: the
    checkpoints hold those rows, and any batch size or resumed session joins into the
    same records."""
    suite = WorstShiftSuite(grid="fraction")  # 14 views per image
    folder = open_image_folder(noise_root)

    def evaluate_tiny(batch_size: int, **kwargs) -> Part:
        options = EngineOptions(device="cpu", batch_size=batch_size, workers=0, quiet=True)
        return evaluate(loaded(Tiny()), suite, folder, options, **kwargs).finished

    saved: list[Part] = []
    whole = evaluate_tiny(4, hooks=Hooks(save=saved.append, save_every=0))
    assert len(whole.records) == 6 and whole.views == 6 * 14
    assert np.array_equal(whole.record_positions, np.arange(6))
    for other in (3, 64):
        other_part = evaluate_tiny(other)
        pd.testing.assert_frame_equal(other_part.records, whole.records, check_exact=True)
    assert len(saved) > 1 and all(len(p.records) == len(p.positions) for p in saved)
    partial = PartialRun(tmp_path / "partial", {"suite": suite.name, "seed": 0})
    partial.save(saved[0])
    (first,) = partial.prepare(resume=True, restart=False)
    pd.testing.assert_frame_equal(first.records, saved[0].records, check_exact=True)
    assert first.views == saved[0].views
    rest = evaluate_tiny(4, positions=np.setdiff1d(np.arange(6), first.positions))
    resumed = Part.join([first, rest])
    pd.testing.assert_frame_equal(resumed.records, whole.records, check_exact=True)
    assert suite.summarise(resumed.records) == suite.summarise(whole.records)


def test_an_interrupted_worst_shift_run_resumes_to_the_same_bytes(
    cli, noise_root, tmp_path, monkeypatch
):
    import aabench.models.zoo

    monkeypatch.setattr(aabench.models.zoo, "create_model", lambda *a, **k: loaded(Tiny()))

    def run(out: Path, *extra: str):
        return cli(
            "run", "--model", "toy", "--suite", "worst-shift", "--data", str(noise_root),
            "--set", "grid=fraction", "--batch-size", "4", "--workers", "0", "--quiet",
            "--out", str(out), "--checkpoint-every", "0", *extra,
        )  # fmt: skip

    code, _, err = run(tmp_path / "reference")
    assert code == 0, err
    assert ctrl_c_after_first_checkpoint(monkeypatch, lambda: run(tmp_path / "resumed")) == 130
    code, _, err = run(tmp_path / "resumed", "--resume")
    assert code == 0, err
    names = ["worst-shift.csv", "worst-shift.samples.csv.gz"]
    reference = files(tmp_path / "reference" / "toy", names)
    assert files(tmp_path / "resumed" / "toy", names) == reference and len(reference) == 2
    provenance = json.loads((tmp_path / "resumed" / "toy" / "worst-shift.json").read_text())
    assert 0 < provenance["resumed_images"] < 6
    assert provenance["views"] == 6 * 14 and provenance["n"] == 6
    samples = pd.read_csv(tmp_path / "resumed" / "toy" / "worst-shift.samples.csv.gz")
    assert len(samples) == 6 and (samples["views"] == 14).all()
