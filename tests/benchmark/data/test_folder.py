"""ImageNet-style folders: canonical labels, deterministic subsets, clear data errors."""

from __future__ import annotations

import os
import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from aabench.data.classes import class_name, imagenet_classes, wnid_to_index
from aabench.data.folder import (
    Sample,
    file_path,
    open_image_folder,
    recorded_path,
    sample_root,
    spread_subset,
)
from aabench.errors import UserError
from tests.helpers import make_image_folder, solid

TENCH, TABBY, CLOCK = "n01440764", "n02123045", "n04548280"


def folder_with(tmp_path, counts: dict[str, int], name: str = "data"):
    return make_image_folder(tmp_path / name, {w: [solid(8, 0)] * n for w, n in counts.items()})


def test_the_class_list_is_the_1000_sorted_wnids():
    classes = imagenet_classes()
    assert len(classes) == 1000
    wnids = [c.wnid for c in classes]
    assert wnids == sorted(wnids)
    assert class_name(281) == "tabby"


def test_three_wnids_get_their_canonical_indices(tmp_path):
    root = folder_with(tmp_path, {TENCH: 1, TABBY: 2, CLOCK: 1})
    folder = open_image_folder(root)
    assert folder.root == root
    assert folder.samples == (
        Sample("n01440764/img0.png", 0),
        Sample("n02123045/img0.png", 281),
        Sample("n02123045/img1.png", 281),
        Sample("n04548280/img0.png", 892),
    )


@pytest.mark.parametrize("wnids", [[TABBY], [CLOCK, TABBY], [TENCH, CLOCK]])
def test_indices_do_not_depend_on_which_wnids_are_present(tmp_path, wnids):
    folder = open_image_folder(folder_with(tmp_path, dict.fromkeys(wnids, 1)))
    expected = {TENCH: 0, TABBY: 281, CLOCK: 892}
    assert [s.label for s in folder.samples] == sorted(expected[w] for w in wnids)
    assert all(wnid_to_index()[s.path.split("/")[0]] == s.label for s in folder.samples)


def test_only_jpeg_and_png_files_count_and_hidden_folders_are_ignored(tmp_path):
    root = folder_with(tmp_path, {TENCH: 1})
    Image.fromarray(solid(8, 0)).save(root / TENCH / "b.JPEG")
    Image.fromarray(solid(8, 0)).save(root / TENCH / "c.jpg")
    (root / TENCH / "notes.txt").write_text("not an image")
    (root / TENCH / "sub").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    folder = open_image_folder(root)
    assert [s.path for s in folder.samples] == [
        "n01440764/b.JPEG",
        "n01440764/c.jpg",
        "n01440764/img0.png",
    ]


def test_the_embedded_sample_set(tmp_path):
    folder = open_image_folder("sample")
    assert folder.root == sample_root()
    assert len(folder) == 5
    assert folder.samples[0] == Sample("n02123045/chelsea.png", 281)
    assert {s.label for s in folder.samples} == {281, 892, wnid_to_index()["n03773504"],
                                                 wnid_to_index()["n04485082"],
                                                 wnid_to_index()["n07920052"]}  # fmt: skip


def test_limit_takes_a_round_robin_subset_in_the_original_order(tmp_path):
    root = folder_with(tmp_path, {TENCH: 3, TABBY: 2, CLOCK: 1})
    folder = open_image_folder(root, limit=4)
    assert folder.limit == 4
    assert [s.path for s in folder.samples] == [
        "n01440764/img0.png",
        "n01440764/img1.png",
        "n02123045/img0.png",
        "n04548280/img0.png",
    ]
    assert open_image_folder(root, limit=4) == folder
    three = open_image_folder(root, limit=3)
    assert [s.label for s in three.samples] == [0, 281, 892]
    five = open_image_folder(root, limit=5)
    assert [s.path for s in five.samples] == [
        "n01440764/img0.png",
        "n01440764/img1.png",
        "n02123045/img0.png",
        "n02123045/img1.png",
        "n04548280/img0.png",
    ]
    assert len(open_image_folder(root, limit=100)) == 6


def test_spread_subset_takes_one_image_per_class_before_any_second():
    samples = [Sample(f"{label}/{i}", label) for label in range(20) for i in range(50)]
    chosen = spread_subset(samples, 20)
    assert [s.label for s in chosen] == list(range(20))
    assert all(s.path.endswith("/0") for s in chosen)


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_a_user_error(tmp_path, limit):
    root = folder_with(tmp_path, {TENCH: 1})
    with pytest.raises(UserError, match=f"--limit must be at least 1, got {limit}"):
        open_image_folder(root, limit=limit)


def test_fingerprint_depends_on_the_list_only(tmp_path):
    a = open_image_folder(folder_with(tmp_path, {TENCH: 2, TABBY: 1}, "a"))
    b = open_image_folder(folder_with(tmp_path, {TENCH: 2, TABBY: 1}, "b"))
    c = open_image_folder(folder_with(tmp_path, {TENCH: 1, TABBY: 2}, "c"))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint()["count"] == 3
    assert a.fingerprint() != c.fingerprint()
    assert open_image_folder(a.root, limit=2).fingerprint() != a.fingerprint()


def test_sample_keys_are_stable_per_path():
    assert Sample("n01440764/x.png", 0).key == Sample("n01440764/x.png", 5).key
    assert Sample("n01440764/x.png", 0).key != Sample("n01440764/y.png", 0).key


def test_missing_directory(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=re.escape(f"data directory {missing} does not exist")):
        open_image_folder(missing)


def test_a_file_instead_of_a_directory(tmp_path):
    path = tmp_path / "val.tar"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=re.escape(f"--data {path} is a file")):
        open_image_folder(path)


def test_no_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("x")
    with pytest.raises(UserError, match="holds no class folders"):
        open_image_folder(tmp_path / "empty")


def test_folders_that_are_not_wnids(tmp_path):
    root = folder_with(tmp_path, {TENCH: 1, "cats": 1, "dogs": 1, "birds": 1, "fish": 1})
    with pytest.raises(UserError) as error:
        open_image_folder(root)
    message = str(error.value)
    assert "has 4 folders that are not ImageNet wnids (birds, cats, dogs, ...)" in message


def test_an_empty_class_folder(tmp_path):
    root = folder_with(tmp_path, {TENCH: 1})
    (root / TABBY).mkdir()
    (root / TABBY / "labels.txt").write_text("x")
    with pytest.raises(
        UserError, match=re.escape(f"class folder {root / TABBY} holds no JPEG or PNG")
    ):
        open_image_folder(root)


def test_imagenet_root_with_a_val_folder(tmp_path):
    make_image_folder(tmp_path / "imagenet" / "val", {TENCH: [solid(8, 0)], CLOCK: [solid(8, 0)]})
    (tmp_path / "imagenet" / "train").mkdir()
    folder = open_image_folder(tmp_path / "imagenet")
    assert folder.root == tmp_path / "imagenet" / "val"
    assert [(s.path, s.label) for s in folder.samples] == [
        (f"{TENCH}/img0.png", 0),
        (f"{CLOCK}/img0.png", 892),
    ]


# Names that are not UTF-8: recorded as text (\xNN, a backslash doubled) that leads back.

FILE_NAMES = st.binary(min_size=1, max_size=12).filter(lambda raw: not set(raw) & {0, 47})


@settings(derandomize=True, max_examples=300, deadline=None)
@given(raw=FILE_NAMES)
def test_a_recorded_path_is_utf8_text_that_leads_back_to_its_file(raw):
    name = os.fsdecode(b"n01440764/" + raw)
    text = recorded_path(name)
    text.encode("utf-8")  # always valid: every output can hold it
    assert file_path(text) == name  # invertible, so two files never share a path
    if b"\\" not in raw and _is_utf8(raw):
        assert text == name  # every ordinary name is recorded as it is


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"img\xff.png", "img\\xff.png"),
        (b"back\\slash.png", "back\\\\slash.png"),
        (b"lit\\xff.png", "lit\\\\xff.png"),
        (b"caf\xc3\xa9.png", "café.png"),
    ],
)
def test_a_folder_records_each_name_by_the_rule(tmp_path, raw, text):
    root = folder_with(tmp_path, {TENCH: 1})
    os.rename(root / TENCH / "img0.png", os.fsencode(root / TENCH) + b"/" + raw)
    (sample,) = open_image_folder(root).samples
    assert sample == Sample(f"{TENCH}/{text}", 0)
    assert os.fsencode(root / sample.file) == os.fsencode(root / TENCH) + b"/" + raw
    assert sample.key == zlib.crc32(f"{TENCH}/{text}".encode())
