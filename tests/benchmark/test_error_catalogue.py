"""Issue 9, the error catalogue: every bad input gets one clear line and exit code 2.

One test per numbered item of the catalogue (sub-items share a parametrized test). Each
runs the CLI as a user would and checks the exit code, the key words of the message
(what is wrong and the fix), that stderr is that one line and no traceback, and what
the output directory holds afterwards: nothing new, nothing half-written, earlier
outputs intact.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from aabench.cli import main
from aabench.errors import UserError
from tests.catalogue import FAST, TINY, files_under, snapshot, tiny_folder, user_error
from tests.helpers import GOLDFISH, TENCH, make_image_folder, solid

REPO_ROOT = Path(__file__).resolve().parents[2]
RELEASED_URL = (
    "https://antialiased-cnns.s3.us-east-2.amazonaws.com/weights_v0.1/"
    "resnet18_lpf4_finetune-8cc58f59.pth"
)


# 1. Unknown model name.


def test_1_unknown_model_suggests_the_closest_names(cli, tmp_path):
    out = tmp_path / "runs"
    user_error(
        cli("run", "--model", "resnet81_aa", "--suite", "accuracy", *FAST, "--out", str(out)),
        "unknown model 'resnet81_aa'",
        "did you mean resnet18_aa",
        "`aabench models` lists every name",
    )
    assert files_under(out) == []


# 2. Unknown suite; unknown --set key; --set value of the wrong type.


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ("--suite", "shfit"),
            ("unknown suite 'shfit'", "did you mean shift", "accuracy, shift", "aabench suites"),
        ),
        (
            ("--suite", "shift", "--set", "epoch=1"),
            ("unknown --set key epoch", "valid keys are", "epochs", "max_shift"),
        ),
        (
            ("--suite", "shift", "--set", "epochs=five"),
            ("--set epochs='five'", "expected int", "aabench suites"),
        ),
        (
            ("--suite", "shift", "--set", "per_batch=maybe"),
            ("--set per_batch='maybe'", "expected bool", "aabench suites"),
        ),
    ],
    ids=["unknown-suite", "unknown-set-key", "set-wrong-type-int", "set-wrong-type-bool"],
)
def test_2_unknown_suite_or_set_key_or_wrong_type(cli, tmp_path, args, words):
    out = tmp_path / "runs"
    user_error(cli("run", *TINY, *args, "--out", str(out)), *words)
    assert files_under(out) == []


# 3. --data: missing, a file, no wnid folders, non-wnid folders, an empty class folder.


def _data_missing(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    return tmp_path / "nowhere", ("does not exist", "--data", "<wnid>", "--data sample")


def _data_file(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    path = tmp_path / "val.tar"
    path.write_bytes(b"not a directory")
    return path, ("is a file", "pass the ImageNet val directory", "n01440764")


def _data_flat(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    root = tmp_path / "flat"
    root.mkdir()
    Image.fromarray(solid(40, 90)).save(root / "ILSVRC2012_val_00000001.png")
    return root, ("holds no class folders", "expected ImageNet val in folder layout <root>/<wnid>")


def _data_not_wnids(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    root = make_image_folder(tmp_path / "pets", {"cats": [solid(40, 90)], TENCH: [solid(40, 9)]})
    return root, ("1 folders that are not ImageNet wnids (cats)", "must be named by wnid")


def _data_empty_class(tmp_path: Path) -> tuple[Path, tuple[str, ...]]:
    root = tiny_folder(tmp_path / "val")
    (root / "n01494475").mkdir()
    return root, ("n01494475 holds no JPEG or PNG images", "add its images or remove the folder")


@pytest.mark.parametrize(
    "make",
    [_data_missing, _data_file, _data_flat, _data_not_wnids, _data_empty_class],
    ids=["missing", "file", "no-wnid-folders", "not-wnids", "empty-class"],
)
def test_3_bad_data_directory(cli, tmp_path, make):
    data, words = make(tmp_path)
    out = tmp_path / "runs"
    line = user_error(
        cli("run", *TINY, "--suite", "accuracy", "--data", str(data), "--out", str(out)), *words
    )
    assert str(data) in line
    assert files_under(out) == []


# 4. Corrupt or truncated images: reported by path; --skip-bad-images records them.


def _corrupt_jpeg(folder: Path) -> Path:
    path = folder / TENCH / "broken.JPEG"
    path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"not really a jpeg" * 8)
    return path


def _truncated_png(folder: Path) -> Path:
    path = folder / GOLDFISH / "cut.png"
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    return path


@pytest.mark.parametrize("make_bad", [_corrupt_jpeg, _truncated_png], ids=["jpeg", "png"])
def test_4_bad_image_stops_the_run_unless_skipped_and_recorded(cli, tmp_path, make_bad):
    data = tiny_folder(tmp_path / "val")
    bad = make_bad(data)
    out = tmp_path / "runs"
    args = ("run", *TINY, "--suite", "accuracy", "--data", str(data), "--out", str(out))

    user_error(cli(*args), f"cannot decode image {bad}", "fix or remove it", "--skip-bad-images")
    assert files_under(out) == []

    code, _, err = cli(*args, "--skip-bad-images")
    assert code == 0, err
    assert "skipped 1 bad image(s)" in err and "Traceback" not in err
    provenance = json.loads((out / "resnet18_aa" / "accuracy.json").read_text())
    skipped = provenance["data"]["skipped_images"]
    relative = bad.relative_to(data).as_posix()
    assert len(skipped) == 1 and skipped[0].startswith(f"{relative}: ")
    assert provenance["n"] == 2
    assert files_under(out) == [
        "resnet18_aa/accuracy.csv",
        "resnet18_aa/accuracy.json",
        "resnet18_aa/accuracy.samples.csv.gz",
    ]


# 5. Checkpoints given with --weights PATH.


class Pickled:
    """A custom class: a checkpoint holding it needs arbitrary unpickling to load."""

    def __init__(self):
        self.weight = torch.zeros(2)


@pytest.fixture(scope="module")
def resnet18_state():
    from aabench.models.zoo import create_model

    return create_model("resnet18", weights="none").module.state_dict()


def _missing_keys(tmp_path, state):
    state = dict(state)
    del state["fc.bias"]
    path = tmp_path / "missing.pth"
    torch.save(state, path)
    return "resnet18", path, ("does not fit resnet18", "1 missing keys (fc.bias)", "trained for")


def _unexpected_keys(tmp_path, state):
    path = tmp_path / "unexpected.pth"
    torch.save({**state, "head.weight": torch.zeros(3)}, path)
    return "resnet18", path, ("1 unexpected keys (head.weight)", "trained for this model name")


def _wrong_shapes(tmp_path, state):
    path = tmp_path / "ten_classes.pth"
    torch.save({**state, "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}, path)
    return "resnet18", path, ("wrongly shaped keys (fc.weight (10, 512) != (1000, 512)",)


def _wrong_filter_size(tmp_path, state):
    from aabench.models.zoo import create_model

    path = tmp_path / "resnet18_aa3_mine.pth"
    torch.save(create_model("resnet18_aa3", weights="none").module.state_dict(), path)
    return (
        "resnet18_aa",
        path,
        ("filter size 3 but resnet18_aa means filter size 4", "use --model resnet18_aa3"),
    )


def _arbitrary_unpickling(tmp_path, state):
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": Pickled()}, path)
    return (
        "resnet18",
        path,
        ("needs arbitrary unpickling", "refused", "torch.save(model.state_dict(), path)"),
    )


def _tampered(tmp_path, state):
    path = tmp_path / "resnet18_lpf4_finetune-8cc58f59.pth"
    torch.save({"fc.bias": torch.ones(1000)}, path)
    return "resnet18_aa", path, ("corrupt or tampered", "name says 8cc58f59", "download it again")


def _zero_bytes(tmp_path, state):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    return "resnet18", path, ("is empty (0 bytes)", "fetch it again")


def _directory(tmp_path, state):
    path = tmp_path / "checkpoints"
    path.mkdir()
    return "resnet18", path, ("is a directory", "pass the checkpoint file inside it")


def _nonexistent(tmp_path, state):
    words = ("does not exist", "check the path given to --weights")
    return "resnet18", tmp_path / "nope.pth", words


@pytest.mark.parametrize(
    "make",
    [
        _missing_keys,
        _unexpected_keys,
        _wrong_shapes,
        _wrong_filter_size,
        _arbitrary_unpickling,
        _tampered,
        _zero_bytes,
        _directory,
        _nonexistent,
    ],
    ids=[
        "missing-keys",
        "unexpected-keys",
        "wrong-shapes",
        "wrong-filter-size",
        "arbitrary-unpickling",
        "tampered",
        "zero-bytes",
        "directory",
        "nonexistent",
    ],
)
def test_5_bad_checkpoint(cli, tmp_path, resnet18_state, make):
    model, path, words = make(tmp_path, resnet18_state)
    out = tmp_path / "runs"
    line = user_error(
        cli(
            "run",
            "--model",
            model,
            "--weights",
            str(path),
            "--suite",
            "accuracy",
            *FAST,
            "--out",
            str(out),
        ),
        *words,
    )
    assert str(path) in line or "does not fit" in line or "filter size" in line
    assert files_under(out) == []


def test_5_tampered_file_in_the_cache_is_refused_before_any_download(cli, tmp_path):
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    cached = cache / "resnet18_lpf4_finetune-8cc58f59.pth"
    cached.write_bytes(b"\x00" * 64)
    out = tmp_path / "runs"
    user_error(
        cli("run", "--model", "resnet18_aa", "--suite", "accuracy", *FAST, "--out", str(out)),
        f"{cached} is corrupt or tampered",
        "delete it and download it again",
    )
    assert files_under(out) == []


# 6. Weights not cached and no network.


@pytest.fixture
def offline_transport(monkeypatch):
    from aabench.models import weights

    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights, "urlopen", fail)
    return calls


@pytest.mark.parametrize("mirror", [False, True], ids=["cache", "mirror"])
def test_6_weights_not_cached_without_network(cli, tmp_path, offline_transport, mirror):
    cache = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    mirror_dir = tmp_path / "mirror"
    mirror_dir.mkdir()
    extra = ("--weights-dir", str(mirror_dir)) if mirror else ()
    out = tmp_path / "runs"
    line = user_error(
        cli(
            "run",
            "--model",
            "resnet18_aa",
            *extra,
            "--suite",
            "accuracy",
            *FAST,
            "--out",
            str(out),
        ),
        f"could not download {RELEASED_URL}",
        "Temporary failure in name resolution",
        "download it yourself and put resnet18_lpf4_finetune-8cc58f59.pth in",
        str(cache),
        "--weights-dir",
        "--weights PATH",
    )
    assert (str(mirror_dir) in line) is mirror
    assert offline_transport == [RELEASED_URL]
    assert files_under(cache) == [] and files_under(mirror_dir) == []
    assert files_under(out) == []


# 7. ImageNet-C: a missing cell, a wrong layout.


def _c_incomplete_cell(c: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    (c / "gaussian_noise" / "1" / TENCH).mkdir(parents=True)
    return (
        ("--set", "corruptions=gaussian_noise", "--set", "severities=1"),
        ("cell gaussian_noise/1 has no file for n01440764/img0.png", "re-extract it"),
    )


def _c_requested_cells_missing(c: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    (c / "gaussian_noise" / "1" / TENCH).mkdir(parents=True)
    return (
        ("--set", "corruptions=brightness", "--set", "severities=1"),
        ("has none of the requested cells", "check --set corruptions / severities"),
    )


def _c_wrong_layout(c: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    (c / "gaussian-noise" / "severity1" / TENCH).mkdir(parents=True)
    return (), ("holds no ImageNet-C cells (found folders: gaussian-noise)", "expected <root>/")


def _c_not_a_directory(c: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    c.rmdir()
    c.write_bytes(b"imagenet-c.tar")
    return (), ("is a file", "point it at ImageNet-C laid out as <root>/<corruption>/")


@pytest.mark.parametrize(
    "make",
    [_c_incomplete_cell, _c_requested_cells_missing, _c_wrong_layout, _c_not_a_directory],
    ids=["incomplete-cell", "requested-cells-missing", "wrong-layout", "a-file"],
)
def test_7_imagenet_c_missing_cell_or_wrong_layout(cli, tmp_path, make):
    data = make_image_folder(tmp_path / "val", {TENCH: [solid(40, 90)]})
    c = tmp_path / "imagenet-c"
    c.mkdir()
    extra, words = make(c)
    out = tmp_path / "runs"
    line = user_error(
        cli(
            "run",
            *TINY,
            "--suite",
            "imagenet-c",
            "--imagenet-c",
            str(c),
            "--data",
            str(data),
            *extra,
            "--out",
            str(out),
        ),
        *words,
    )
    assert str(c) in line
    assert files_under(out) == []


def _video_unreadable(root: Path):
    from tests.benchmark.data.test_imagenet_p_videos import make_imagenet_p

    make_imagenet_p(root, {"rotate": 31}, images=1)
    (root / "rotate" / TENCH / "ILSVRC2012_val_00000001.mp4").write_bytes(b"\x00" * 64)
    return ["cannot decode image", "ILSVRC2012_val_00000001.mp4", "--skip-bad-images"]


def _video_wrong_frame_count(root: Path):
    from tests.benchmark.data.test_imagenet_p_videos import make_imagenet_p

    make_imagenet_p(root, {"rotate": 29}, images=1)
    return ["ILSVRC2012_val_00000001.mp4", "29 frames, not the 31 of rotate", "--skip-bad-images"]


def _video_folder_missing(root: Path):
    from tests.benchmark.data.test_imagenet_p_videos import make_imagenet_p

    make_imagenet_p(root, {"scale": 31}, images=1)
    return ["lacks rotate/", "found: scale", "--set perturbations="]


@pytest.mark.parametrize(
    "make", [_video_unreadable, _video_wrong_frame_count, _video_folder_missing]
)
def test_7_imagenet_p_video_unreadable_wrong_frame_count_or_missing(cli, tmp_path, make):
    p = tmp_path / "imagenet-p"
    words = make(p)
    out = tmp_path / "runs"
    args = ("--suite", "imagenet-p", "--imagenet-p", str(p), "--set", "perturbations=rotate")
    model = ("--model", "alexnet", "--weights", "none", *FAST)
    user_error(cli("run", *model, *args, "--out", str(out)), *words)
    assert files_under(out) == []


# 8. compare: different suites, protocols or data; a CSV that is not an aabench table.


@dataclass
class Runs:
    accuracy: Path  # --limit 2
    more_data: Path  # --limit 3
    other_protocol: Path  # --set crop_size=192
    shift: Path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("catalogue_runs")

    def run(name: str, *args: str) -> Path:
        with pytest.raises(SystemExit) as exited:
            main(["run", *TINY, "--out", str(root / name), *args])
        assert exited.value.code in (0, None)
        return root / name / "resnet18_aa"

    return Runs(
        accuracy=run("a", "--suite", "accuracy", "--limit", "2") / "accuracy.csv",
        more_data=run("b", "--suite", "accuracy", "--limit", "3") / "accuracy.csv",
        other_protocol=run("c", "--suite", "accuracy", "--limit", "2", "--set", "crop_size=192")
        / "accuracy.csv",
        shift=run("d", "--suite", "shift", "--limit", "2", "--set", "epochs=1") / "shift.csv",
    )


@pytest.mark.parametrize(
    "candidate, words",
    [
        ("other_protocol", ("accuracy protocol parameters differ", "crop_size")),
        ("more_data", ("different data", "different n: [2] vs [3]")),
    ],
    ids=["protocol", "data"],
)
def test_8_compare_refuses_mismatched_runs_unless_allowed(cli, tmp_path, runs, candidate, words):
    other = getattr(runs, candidate)
    report = tmp_path / "report.md"
    args = ("compare", str(runs.accuracy), str(other), "--bootstrap", "10", "--out", str(report))
    user_error(
        cli(*args), "are not comparable", *words, "same protocol and data", "--allow-mismatch"
    )
    assert files_under(tmp_path) == []

    code, out, err = cli(*args, "--allow-mismatch")
    assert code == 0, err
    flat = " ".join(out.split())  # rich wraps long lines
    assert "warning:" in flat and words[0] in flat
    assert report.is_file()


def test_8_compare_refuses_different_suites_even_when_mismatch_is_allowed(cli, tmp_path, runs):
    report = tmp_path / "report.md"
    for allow in ((), ("--allow-mismatch",)):
        line = user_error(
            cli("compare", str(runs.accuracy), str(runs.shift), "--out", str(report), *allow),
            "are not comparable: different suites: accuracy vs shift",
            "compare tables of the same suite",
        )
        assert "pass --allow-mismatch" not in line
        assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    "content, words",
    [
        ("a,b\n1,2\n", ("is not an aabench table", "lacks the columns run_id")),
        ("", ("is not a CSV table",)),
    ],
    ids=["other-columns", "empty"],
)
def test_8_compare_a_csv_that_is_not_an_aabench_table(cli, tmp_path, runs, content, words):
    stranger = tmp_path / "spreadsheet.csv"
    stranger.write_text(content)
    user_error(
        cli("compare", str(runs.accuracy), str(stranger)),
        str(stranger),
        *words,
        "pass a",
        "written by `aabench run`",
    )
    assert files_under(tmp_path) == ["spreadsheet.csv"]


# 9. gate: a malformed rules file; a rule naming an unknown metric.


@pytest.mark.parametrize(
    "rules, words",
    [
        (
            '[[rule]\nmetric = "top1"\n',
            ("is not valid TOML", "line 1", "fix it", '[[rule]] metric = "consistency"'),
        ),
        (
            '[[rule]]\nmetric = "top_1"\nmax_regression = 0.5\n',
            ("rule 1: unknown metric 'top_1'", "valid metrics are", "top1", "consistency"),
        ),
        (None, ("cannot read rules file", "pass a TOML file to --rules")),
    ],
    ids=["bad-toml", "unknown-metric", "a-directory"],
)
def test_9_gate_bad_rules(cli, tmp_path, runs, rules, words):
    path = tmp_path / "rules.toml"
    if rules is None:
        path.mkdir()
    else:
        path.write_text(rules)
    summary = tmp_path / "summary.md"
    line = user_error(
        cli(
            "gate",
            "--reference",
            str(runs.accuracy),
            "--candidate",
            str(runs.accuracy),
            "--rules",
            str(path),
            "--summary",
            str(summary),
        ),
        *words,
    )
    assert str(path) in line
    assert files_under(tmp_path) == ([] if rules is None else ["rules.toml"])


# 10. --out not writable; disk full while writing.


def test_10_out_below_a_file_is_not_writable(cli, tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    out = blocker / "runs"
    user_error(
        cli("run", *TINY, "--suite", "accuracy", "--limit", "1", "--out", str(out)),
        f"cannot write {out / 'resnet18_aa'}",
        "choose a writable --out directory",
    )
    assert blocker.read_text() == "keep me"
    assert files_under(tmp_path) == ["results.txt"]


def test_10_an_unwritable_out_is_refused_before_any_image_is_evaluated(cli, tmp_path, monkeypatch):
    from aabench import engine

    def never(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(engine, "evaluate", never)
    monkeypatch.setattr("aabench.runner.evaluate", never)
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    user_error(
        cli("run", *TINY, "--suite", "accuracy", "--out", str(blocker / "runs")),
        "cannot write",
        "choose a writable --out directory",
    )


@pytest.mark.parametrize("failing", [1, 2, 3], ids=["samples", "provenance", "table"])
def test_10_disk_full_leaves_no_partial_file_and_earlier_outputs_intact(
    cli, tmp_path, monkeypatch, failing
):
    import aabench.results.files

    out = tmp_path / "runs"
    args = ("run", *TINY, "--suite", "accuracy", "--limit", "1", "--out", str(out))
    code, _, err = cli(*args)
    assert code == 0, err
    before = snapshot(out)
    assert sorted(before) == [
        "resnet18_aa/accuracy.csv",
        "resnet18_aa/accuracy.json",
        "resnet18_aa/accuracy.samples.csv.gz",
    ]

    real_fsync = os.fsync
    outputs = ["accuracy.samples.csv.gz", "accuracy.json", "accuracy.csv"]
    calls = []

    def fill_the_disk(fd):
        # Only the final outputs hit the full disk; checkpoints of finished images
        # (under .partial/) are written before them.
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if any(name.startswith(f".{output}.") for output in outputs):
            calls.append(name)
            if len(calls) == failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(aabench.results.files.os, "fsync", fill_the_disk)
    user_error(
        cli(*args, "--seed", "1"),
        "cannot write",
        "No space left on device",
        "free space",
        "files written before are intact",
    )
    after = snapshot(out)
    # The earlier outputs are intact; what is new is only the finished work, kept for
    # --resume.
    assert {name: data for name, data in after.items() if "/.partial/" not in name} == before
    assert all(
        name.startswith("resnet18_aa/.partial/accuracy/") for name in set(after) - set(before)
    )


# 11. Ctrl-C during a run.


def test_11_ctrl_c_inside_the_engine_keeps_finished_suites(cli, tmp_path, monkeypatch):
    from aabench import engine

    real_reduce = engine.PreparedModel.reduce_later
    models = []

    def interrupt_the_second_suite(self, *args, **kwargs):
        if self not in models:
            models.append(self)
        if len(models) > 1:
            raise KeyboardInterrupt
        return real_reduce(self, *args, **kwargs)

    monkeypatch.setattr(engine.PreparedModel, "reduce_later", interrupt_the_second_suite)
    out = tmp_path / "runs"
    code, _, err = cli(
        "run", *TINY, "--suite", "accuracy,shift", "--set", "epochs=1", "--limit", "2",
        "--out", str(out),
    )  # fmt: skip
    assert code == 130
    assert "Traceback" not in err
    assert err.splitlines() == [
        "aabench: interrupted: outputs already written are kept; nothing was written for the "
        "unfinished step (a run keeps its finished images: --resume continues it)"
    ]
    assert len(models) == 2
    assert files_under(out) == [
        "resnet18_aa/accuracy.csv",
        "resnet18_aa/accuracy.json",
        "resnet18_aa/accuracy.samples.csv.gz",
    ]
    assert json.loads((out / "resnet18_aa" / "accuracy.json").read_text())["n"] == 2

    # --resume keeps the finished suite as it is and runs the interrupted one.
    finished = snapshot(out)
    monkeypatch.setattr(engine.PreparedModel, "reduce_later", real_reduce)
    code, _, err = cli(
        "run", *TINY, "--suite", "accuracy,shift", "--set", "epochs=1", "--limit", "2",
        "--out", str(out), "--resume",
    )  # fmt: skip
    assert code == 0, err
    assert {name: snapshot(out)[name] for name in finished} == finished
    assert "resnet18_aa/shift.csv" in files_under(out)
    assert not (out / "resnet18_aa" / ".partial").exists()


# 12. --device cuda without a GPU.


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_12_cuda_without_a_gpu(cli, tmp_path, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "runs"
    user_error(
        cli(
            "run",
            "--model",
            "resnet18_aa",
            "--weights",
            "none",
            "--suite",
            "accuracy",
            "--device",
            device,
            "--workers",
            "0",
            "--quiet",
            "--out",
            str(out),
        ),
        f"--device {device} asked for a GPU but PyTorch sees none",
        "use --device cpu (or auto)",
    )
    assert files_under(out) == []


# --debug: the same errors, with their traceback.


DEBUG_CASES = {
    "unknown-model": ("run", "--model", "resnet81_aa", "--suite", "accuracy", *FAST),
    "unknown-suite": ("run", *TINY, "--suite", "shfit"),
    "wrong-set-type": ("run", *TINY, "--suite", "shift", "--set", "epochs=five"),
    "missing-data": ("run", *TINY, "--suite", "accuracy", "--data", "/nonexistent/aabench"),
    "missing-weights": (
        "run",
        "--model",
        "resnet18",
        "--weights",
        "/nonexistent/w.pth",
        *FAST,
        "--suite",
        "accuracy",
    ),
    "missing-imagenet-c": ("run", *TINY, "--suite", "imagenet-c", "--imagenet-c", "/nonexistent"),
    "compare-missing-table": ("compare", "/nonexistent/a.csv", "/nonexistent/b.csv"),
    "gate-missing-rules": (
        "gate",
        "--reference",
        "a.csv",
        "--candidate",
        "b.csv",
        "--rules",
        "/nonexistent/rules.toml",
    ),
}


@pytest.mark.parametrize("argv", list(DEBUG_CASES.values()), ids=list(DEBUG_CASES))
def test_debug_lets_the_error_and_its_traceback_through(tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError):
        main(["--debug", *argv])
    monkeypatch.setenv("AABENCH_DEBUG", "1")
    with pytest.raises(UserError):
        main(list(argv))


def test_debug_prints_the_traceback_in_a_real_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("AABENCH_DEBUG", None)
    argv = [sys.executable, "-m", "aabench.cli", "--debug", *DEBUG_CASES["unknown-suite"]]
    debug = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert debug.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in debug.stderr
    assert "aabench.errors.UserError: unknown suite 'shfit'" in debug.stderr
