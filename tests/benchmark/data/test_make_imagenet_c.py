"""make-imagenet-c: released layout, byte-identical output whatever the workers, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aabench.data import make_imagenet_c as module
from aabench.data.corruptions import PIPELINE
from aabench.data.folder import open_image_folder
from aabench.data.make_imagenet_c import MANIFEST, make_imagenet_c
from aabench.errors import UserError
from tests.helpers import TABBY, TENCH, make_image_folder

CORRUPTIONS = ("gaussian_noise", "impulse_noise", "glass_blur", "brightness")
NOISE = ("gaussian_noise", "impulse_noise")
SEVERITIES = (1, 3)
IMAGES = {TENCH: ["img0", "img1"], TABBY: ["img0"]}


def textured(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:260, 0:300]
    base = np.stack([x * 0.8, y * 0.9, (x + y) * 0.4], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def hashes(out: Path) -> dict[str, str]:
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def generate(data, out, **kwargs) -> dict:
    options = {"corruptions": CORRUPTIONS, "severities": SEVERITIES, "workers": 0, "quiet": True}
    return make_imagenet_c(data, out, **{**options, **kwargs})


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val")
    return make_image_folder(root, {TENCH: [textured(0), textured(1)], TABBY: [textured(2)]})


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> tuple[Path, dict]:
    """One in-process run with seed 0, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference") / "imagenet-c"
    return out, generate(data, out)


def test_files_follow_the_released_layout_as_224_jpegs(data, reference):
    out, manifest = reference
    expected = {
        f"{c}/{s}/{wnid}/{stem}.JPEG"
        for c in CORRUPTIONS
        for s in SEVERITIES
        for wnid, stems in IMAGES.items()
        for stem in stems
    }
    assert set(hashes(out)) == expected
    for name in expected:
        with Image.open(out / name) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (224, 224))
    assert (manifest["written"], manifest["skipped"], manifest["images"]) == (24, 0, 3)
    assert manifest["status"] == "complete"
    assert manifest["seed"] == 0
    assert manifest["corruptions"] == list(CORRUPTIONS)
    assert manifest["severities"] == list(SEVERITIES)
    assert manifest["jpeg_quality"] == 85
    assert manifest["pipeline"] == PIPELINE
    assert manifest["versions"]["imagecorruptions-imaug"]
    assert manifest["versions"]["numpy"] == np.__version__
    assert manifest["data"]["fingerprint"] == open_image_folder(data).fingerprint()
    assert manifest["images_per_second"] > 0
    assert json.loads((out / MANIFEST).read_text()) == manifest


def test_two_workers_write_the_same_bytes_as_one_process(data, reference, tmp_path):
    out, _ = reference
    manifest = generate(data, tmp_path / "c", workers=2)
    assert manifest["written"] == 24
    assert hashes(tmp_path / "c") == hashes(out)


def test_the_same_seed_twice_gives_identical_files(data, reference, tmp_path):
    out, _ = reference
    generate(data, tmp_path / "c")
    assert hashes(tmp_path / "c") == hashes(out)


def test_another_seed_draws_other_noise(data, reference, tmp_path):
    out, _ = reference
    generate(data, tmp_path / "c", corruptions=(*NOISE, "brightness"), seed=1)
    ours, theirs = hashes(tmp_path / "c"), hashes(out)
    assert len(ours) == 18
    for name, digest in ours.items():
        if name.startswith(NOISE):
            assert digest != theirs[name], name
        else:  # brightness draws nothing at random
            assert digest == theirs[name], name


def test_a_subset_gets_the_same_files_as_the_full_run(data, reference, tmp_path):
    out, _ = reference
    manifest = generate(data, tmp_path / "c", limit=2)
    chosen = {s.path for s in open_image_folder(data, limit=2).samples}
    assert manifest["images"] == 2 and manifest["limit"] == 2
    ours, theirs = hashes(tmp_path / "c"), hashes(out)
    assert {"/".join(name.split("/")[2:]).replace(".JPEG", ".png") for name in ours} == chosen
    assert all(theirs[name] == digest for name, digest in ours.items())


def test_a_rerun_rewrites_only_the_missing_file(reference, data, tmp_path):
    source, _ = reference
    out = tmp_path / "c"
    shutil.copytree(source, out)
    before = hashes(out)
    victim = out / "glass_blur" / "3" / TABBY / "img0.JPEG"
    victim.unlink()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    manifest = generate(data, out)
    assert (manifest["written"], manifest["skipped"]) == (1, 23)
    assert json.loads((out / MANIFEST).read_text())["written"] == 1
    assert hashes(out) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert generate(data, out)["written"] == 0


def test_a_crashed_run_leaves_whole_files_and_resumes(data, reference, tmp_path, monkeypatch):
    out = tmp_path / "c"
    real, calls = module.corrupt, []

    def crash_on_the_fifth(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, "corrupt", crash_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        generate(data, out)
    assert len(hashes(out)) == 4  # no temporary or partial file
    assert json.loads((out / MANIFEST).read_text())["status"] == "running"
    monkeypatch.setattr(module, "corrupt", real)
    assert generate(data, out)["written"] == 20
    assert hashes(out) == hashes(reference[0])


def test_a_rerun_remakes_files_cut_short_and_clears_stale_temporaries(reference, data, tmp_path):
    source, _ = reference
    out = tmp_path / "c"
    shutil.copytree(source, out)
    before = hashes(out)
    cell = out / "impulse_noise" / "1" / TENCH
    cut = cell / "img0.JPEG"  # the machine crashed before the end of the file reached disk
    cut.write_bytes(cut.read_bytes()[:-300])
    (cell / "img1.JPEG").write_bytes(b"")
    garbage = out / "brightness" / "3" / TABBY / "img0.JPEG"
    garbage.write_bytes(b"\xff\xd8 not a whole JPEG")
    stale = cell / ".img0.JPEG.12345.tmp"  # a worker killed outright mid-write
    stale.write_bytes(b"\xff\xd8 half")
    manifest = generate(data, out)
    assert (manifest["written"], manifest["skipped"]) == (3, 21)
    assert hashes(out) == before
    assert not stale.exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "a" / "b.JPEG"
    with pytest.raises(TypeError):
        module._write(path, "not bytes")
    assert list(path.parent.iterdir()) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_an_undecodable_image_is_named(data, tmp_path, workers):
    broken = tmp_path / "val"
    shutil.copytree(data, broken)
    (broken / TABBY / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "c"
    with pytest.raises(UserError, match=r"cannot decode source image .*img1\.png"):
        generate(broken, out, corruptions=("brightness",), severities=(1,), workers=workers)
    assert not [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_an_out_made_with_other_settings_is_refused(data, reference, tmp_path):
    out, _ = reference
    with pytest.raises(UserError, match=r"seed 0 there, 1 now.*use another --out"):
        generate(data, out, seed=1)
    with pytest.raises(UserError, match=r"corruptions .* use another --out"):
        generate(data, out, corruptions=("brightness",))
    # A set begun by an earlier generator (frost drawn otherwise) is not added to.
    older = tmp_path / "older"
    older.mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["generator_version"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"generator_version None there, 2 now"):
        generate(data, older)
    stranger = tmp_path / "stranger"
    (stranger / "fog").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no manifest\.json"):
        generate(data, stranger)


def test_two_images_with_one_stem_are_refused(tmp_path):
    data = make_image_folder(tmp_path / "val", {TENCH: [textured(0)]}, suffix=".png")
    shutil.copy(data / TENCH / "img0.png", data / TENCH / "img0.jpg")
    with pytest.raises(UserError, match="would both become"):
        generate(data, tmp_path / "c")


def test_cli_writes_and_summarises(cli, data, tmp_path):
    out = tmp_path / "c"
    args = ["make-imagenet-c", "--data", str(data), "--out", str(out), "--workers", "0"]
    code, stdout, _ = cli(*args, "--corruptions", "brightness", "--severities", "1", "--quiet")
    assert code == 0
    assert "3 file(s) written, 0 kept" in stdout and "images/s" in stdout
    assert len(stdout.strip().splitlines()) == 1
    code, stdout, _ = cli(*args, "--corruptions", "brightness", "--severities", "1", "--json")
    assert code == 0
    assert json.loads(stdout)["skipped"] == 3
    assert (out / "brightness" / "1" / TENCH / "img1.JPEG").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corruptions", "fogg"], "unknown corruption 'fogg'"),
        (["--severities", "0"], "unknown severity 0"),
        (["--data", "DOES-NOT-EXIST"], "does not exist"),
        (["--data", None], "--data is required"),
        (["--seed", "5"], "seed 0 there, 5 now"),
        (["--seed", "-1"], "--seed must be in 0 .. 2**63-1, got -1"),
        (["--workers", "-2"], "--workers must be 0 or more, got -2"),
        (["--workers", "100000"], "--workers must be at most"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(cli, data, reference, extra, message):
    out, _ = reference
    args = {"--data": str(data), "--out": str(out), "--corruptions": ",".join(CORRUPTIONS)}
    args["--severities"] = "1,3"
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = value
    argv = ["make-imagenet-c", "--quiet"]
    argv += [item for flag, value in args.items() if value is not None for item in (flag, value)]
    code, stdout, stderr = cli(*argv)
    assert code == 2
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    assert stderr.startswith("aabench: error: ")
    assert message in stderr


@pytest.mark.parametrize(
    ("exit_codes", "how"),
    [
        ((-9, 143), "killed by SIGKILL"),
        ((None, -11), "killed by SIGSEGV"),
        ((1, 0), "exit code 1"),
        ((143, -15), None),
    ],
    ids=["one-killed-the-rest-stopped", "segfault", "exit-1", "all-terminated"],
)
def test_a_broken_pool_says_how_its_workers_ended(exit_codes, how):
    # The pool SIGTERMs the workers left once one has died: their 143 must not hide it.
    executor = SimpleNamespace(
        _processes={pid: SimpleNamespace(exitcode=code) for pid, code in enumerate(exit_codes)}
    )
    error = module._broken(executor)
    if how is None:  # every worker SIGTERMed: Slurm or docker stop signalled them all
        assert type(error) is module.WorkersTerminated
        return
    assert (type(error), error.exit_code) == (module.WorkerDied, 3)
    assert str(error) == (
        f"a make-imagenet-c worker process died ({how}: out of memory, or killed from "
        f"outside); the files already written are whole and kept: {module.RERUN}"
    )
