import errno
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from aabench.data import prepare_val as module
from aabench.data.classes import imagenet_classes, wnid_to_index
from aabench.data.folder import open_image_folder
from aabench.data.prepare_val import prepare_val
from aabench.errors import UserError

WNIDS = [c.wnid for c in imagenet_classes()]


def wnid_of(ilsvrc_id: int) -> str:
    """The fake devkit's order, like the real one's, is not the sorted wnid order."""
    return WNIDS[1000 - ilsvrc_id]


# Val images 1..6 over three classes; the rest of the 50 000 lines are never present.
TRUTH = [7, 500, 7, 1000, 500, 7] + [1] * (50_000 - 6)
EXPECTED = {f"ILSVRC2012_val_{i:08d}.JPEG": wnid_of(TRUTH[i - 1]) for i in range(1, 7)}


def write_meta(path: Path, rows: list[tuple[int, str, int]]) -> None:
    synsets = np.zeros(
        (len(rows),), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
    )
    for i, row in enumerate(rows):
        synsets[i] = row
    savemat(path, {"synsets": synsets})


def leaf_rows() -> list[tuple[int, str, int]]:
    # 1000 leaves and, as in the real file, nodes above them with IDs past 1000.
    return [(i, wnid_of(i), 0) for i in range(1, 1001)] + [(1001, "n00001740", 3)]


def make_archive(
    root: Path,
    truth_text: str | None = None,
    meta_rows=None,
    devkit_tar: bool = False,
    val_tar: bool = False,
    images: int = 6,
) -> Path:
    root.mkdir(parents=True)
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    write_meta(data / "meta.mat", leaf_rows() if meta_rows is None else meta_rows)
    text = "\n".join(map(str, TRUTH)) + "\n" if truth_text is None else truth_text
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text(text)
    if devkit_tar:
        with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
            tar.add(root / "ILSVRC2012_devkit_t12", arcname="ILSVRC2012_devkit_t12")
        shutil.rmtree(root / "ILSVRC2012_devkit_t12")
    rng = np.random.default_rng(0)
    names = list(EXPECTED)[:images]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(
            root / name, format="JPEG"
        )
    if val_tar:
        with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as tar:
            for name in names:
                tar.add(root / name, arcname=name)
                (root / name).unlink()
    return root


def tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root``: (inode, mtime, bytes)."""
    return {
        p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_sorts_into_wnid_folders_with_hard_links_and_the_folder_opens(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"
    code, stdout, err = cli(
        "prepare-val", "--archive-dir", str(archive), "--out", str(out), "--partial"
    )
    assert code == 0, err
    assert sorted(tree(out)) == sorted(f"{wnid}/{name}" for name, wnid in EXPECTED.items())
    for name, wnid in EXPECTED.items():
        assert (out / wnid / name).stat().st_ino == (archive / name).stat().st_ino
    assert "6 images in 3 class folders: 6 linked, 0 copied, 0 kept" in stdout
    assert f"ImageNet val folder: {out}" in stdout
    folder = open_image_folder(out)  # only the classes with images have a folder
    assert {(Path(s.path).name, s.label) for s in folder.samples} == {
        (name, wnid_to_index()[wnid]) for name, wnid in EXPECTED.items()
    }


def test_a_second_run_changes_nothing_and_says_so(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"
    args = ("prepare-val", "--archive-dir", str(archive), "--out", str(out), "--partial")
    assert cli(*args)[0] == 0
    before = tree(out)
    code, stdout, _ = cli(*args)
    assert code == 0
    assert stdout.startswith(f"nothing to do: all 6 images are already in {out}\n")
    assert "0 linked, 0 copied, 6 kept" in stdout
    assert tree(out) == before


def test_copy_makes_independent_files_that_a_linking_run_keeps(tmp_path):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"
    first = prepare_val(archive, out, copy=True, partial=True)
    assert (first.linked, first.copied, first.kept) == (0, 6, 0)
    for name, wnid in EXPECTED.items():
        dest = out / wnid / name
        assert dest.stat().st_ino != (archive / name).stat().st_ino
        assert dest.read_bytes() == (archive / name).read_bytes()
    again = prepare_val(archive, out, partial=True)  # identical bytes: kept, not linked
    assert (again.linked, again.copied, again.kept) == (0, 0, 6)


def test_another_file_system_falls_back_to_copies(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "archive")

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    result = prepare_val(archive, tmp_path / "val", partial=True)
    assert (result.linked, result.copied, result.kept) == (0, 6, 0)


def test_devkit_tar_gz_and_val_tar_are_read_in_place(tmp_path):
    archive = make_archive(tmp_path / "archive", devkit_tar=True, val_tar=True)
    out = tmp_path / "val"
    result = prepare_val(archive, out, partial=True)
    assert (result.linked, result.copied, result.kept, result.classes) == (0, 6, 0, 3)
    with tarfile.open(archive / "ILSVRC2012_img_val.tar") as tar:
        for name, wnid in EXPECTED.items():
            assert (out / wnid / name).read_bytes() == tar.extractfile(name).read()
    assert sorted(p.name for p in archive.iterdir()) == [
        "ILSVRC2012_devkit_t12.tar.gz",
        "ILSVRC2012_img_val.tar",
    ]
    again = prepare_val(archive, out, partial=True)
    assert (again.linked, again.copied, again.kept) == (0, 0, 6)


def test_a_write_that_fails_leaves_no_half_written_file(tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"

    def disk_full(source, target, length=0):
        target.write(source.read(5))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with pytest.raises(UserError, match="No space left on device"):
        prepare_val(archive, out, copy=True, partial=True)
    assert [p for p in out.rglob("*") if p.is_file()] == []


def assert_one_line_error(result, *texts: str) -> None:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert err.startswith("aabench: error: ") and err.count("\n") == 1, err
    for text in texts:
        assert text in err


def run(cli, archive: Path, out: Path, *extra: str):
    return cli("prepare-val", "--archive-dir", str(archive), "--out", str(out), *extra)


def test_a_different_file_at_the_destination_is_an_error_naming_it(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"
    name = "ILSVRC2012_val_00000004.JPEG"
    (out / EXPECTED[name]).mkdir(parents=True)
    (out / EXPECTED[name] / name).write_bytes(b"something else")
    assert_one_line_error(run(cli, archive, out, "--partial"), str(out / EXPECTED[name] / name))
    assert sorted(tree(out)) == [f"{EXPECTED[name]}/{name}"]  # nothing else written


def test_a_file_where_a_class_folder_goes_is_an_error_naming_it(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    out = tmp_path / "val"
    name = "ILSVRC2012_val_00000004.JPEG"
    out.mkdir()
    (out / EXPECTED[name]).write_bytes(b"a file, not a folder")
    assert_one_line_error(run(cli, archive, out, "--partial"), str(out / EXPECTED[name]))
    assert (out / EXPECTED[name]).read_bytes() == b"a file, not a folder"


def test_missing_devkit_files(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    (archive / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").unlink()
    out = tmp_path / "val"
    assert_one_line_error(
        run(cli, archive, out, "--partial"), "ILSVRC2012_validation_ground_truth.txt is missing"
    )
    shutil.rmtree(archive / "ILSVRC2012_devkit_t12")
    assert_one_line_error(run(cli, archive, out, "--partial"), "ILSVRC2012_devkit_t12.tar.gz")
    assert not out.exists()


@pytest.mark.parametrize(
    ("truth", "text"),
    [
        ("1\n" * 49_999, "has 49999 lines, the ILSVRC2012 val set has 50000"),
        ("1\n" * 3 + "0\n" + "1\n" * 49_996, "line 4 is '0', not an ILSVRC2012_ID in 1..1000"),
        ("1\n" * 9 + "1001\n" + "1\n" * 49_990, "line 10 is '1001'"),
    ],
)
def test_a_wrong_ground_truth_file(cli, tmp_path, truth, text):
    archive = make_archive(tmp_path / "archive", truth_text=truth)
    out = tmp_path / "val"
    assert_one_line_error(run(cli, archive, out, "--partial"), text)
    assert not out.exists()


@pytest.mark.parametrize(
    ("rows", "text"),
    [
        (leaf_rows()[:999], "has 999 entries for 999 distinct IDs"),
        (
            [(1, "n99999999", 0), *leaf_rows()[1:]],
            "does not name the 1000 ImageNet-1k wnids (n99999999)",
        ),
    ],
)
def test_a_meta_mat_that_is_not_the_2012_devkit(cli, tmp_path, rows, text):
    archive = make_archive(tmp_path / "archive", meta_rows=rows, devkit_tar=True)
    assert_one_line_error(run(cli, archive, tmp_path / "val", "--partial"), text)
    assert not (tmp_path / "val").exists()


def test_missing_val_images_need_partial(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    (archive / "ILSVRC2012_val_00000002.JPEG").unlink()
    out = tmp_path / "val"
    assert_one_line_error(
        run(cli, archive, out),
        "49995 of the 50000 val images are missing",
        "first: ILSVRC2012_val_00000002.JPEG",
        "--partial",
    )
    assert not out.exists()
    for image in archive.glob("*.JPEG"):
        image.unlink()
    assert_one_line_error(run(cli, archive, out, "--partial"), "no val images in")


def test_an_output_that_cannot_be_written(cli, tmp_path):
    archive = make_archive(tmp_path / "archive")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(run(cli, archive, blocker, "--partial"), f"--out {blocker} is a file")
    assert_one_line_error(
        run(cli, archive, blocker / "val", "--partial"), f"cannot write to --out {blocker / 'val'}"
    )
    assert blocker.read_text() == ""


def test_json_report(cli, tmp_path):
    archive = make_archive(tmp_path / "archive", images=2)
    code, out, err = run(cli, archive, tmp_path / "val", "--partial", "--json")
    assert code == 0, err
    assert json.loads(out) == {
        "out": str(tmp_path / "val"),
        "images": 2,
        "linked": 2,
        "copied": 0,
        "kept": 0,
        "classes": 2,
        "changed": True,
    }


def test_meta_maps_ids_to_wnids_and_skips_the_nodes_above_the_leaves(tmp_path):
    path = tmp_path / "meta.mat"
    write_meta(path, leaf_rows())
    table = module._parse_meta(path.read_bytes())
    assert table == {i: wnid_of(i) for i in range(1, 1001)}


@pytest.mark.parametrize("given", [("--out", "val"), ("--archive-dir", "archive")])
def test_both_folders_are_required(cli, tmp_path, given):
    missing = "--archive-dir" if given[0] == "--out" else "--out"
    assert_one_line_error(cli("prepare-val", *given), f"{missing} is required")
