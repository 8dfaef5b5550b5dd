"""The released ImageNet-C layout, flat or nested under categories: which cells are there,
which are missing, and clear errors for a wrong root or an incomplete cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aabench.data.corruptions import CATEGORIES
from aabench.data.folder import open_image_folder
from aabench.data.imagenet_c import LAYOUT, ReleasedImageNetC, find_layout
from aabench.data.sources import source_for
from aabench.errors import UserError
from aabench.suites.imagenet_c import ImageNetCSuite
from tests.helpers import GOLDFISH, TENCH

FILES = [f"{TENCH}/ILSVRC2012_val_00000001.JPEG", f"{GOLDFISH}/ILSVRC2012_val_00000002.JPEG"]
CELLS = [("gaussian_noise", s) for s in (1, 2, 3, 4, 5)] + [
    ("motion_blur", 2),
    ("saturate", 5),
]
CATEGORY = {c: category for category, members in CATEGORIES.items() for c in members}


def write_jpeg(path: Path, value: int, size: int = 224) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=85)


def released(root: Path, cells=CELLS, nested: bool = False, files=FILES) -> Path:
    """``<root>/[<category>/]<corruption>/<severity>/<wnid>/<stem>.JPEG`` for every cell."""
    for corruption, severity in cells:
        top = root / CATEGORY[corruption] if nested else root
        for name in files:
            write_jpeg(top / corruption / str(severity) / name, 10 * severity)
    return root


def val_folder(root: Path, suffix: str = ".JPEG"):
    for i, name in enumerate(FILES):
        write_jpeg((root / name).with_suffix(suffix), 100 + i, size=240)
    return open_image_folder(root)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "category-nested"])
def test_both_released_layouts_give_the_same_cells(tmp_path, nested):
    root = released(tmp_path / "c", nested=nested)
    layout = find_layout(root)
    assert sorted(layout.cells) == sorted(CELLS)
    for (corruption, severity), directory in layout.cells.items():
        prefix = (CATEGORY[corruption],) if nested else ()
        assert directory == root.joinpath(*prefix, corruption, str(severity))
    assert layout.missing(["gaussian_noise", "motion_blur"], [1, 2, 3]) == [
        ("motion_blur", 1),
        ("motion_blur", 3),
    ]
    assert layout.missing(["gaussian_noise"], [1, 2, 3, 4, 5]) == []


def test_a_mixed_tree_and_stray_folders_are_read_as_cells_only(tmp_path):
    root = released(tmp_path / "c", cells=[("gaussian_noise", 1)])
    released(root, cells=[("fog", 3)], nested=True)
    (root / "gaussian_noise" / "6").mkdir()  # no severity 6
    (root / "gaussian_noise" / "README").write_text("not a cell")
    (root / "not_a_corruption" / "1").mkdir(parents=True)
    assert sorted(find_layout(root).cells) == [("fog", 3), ("gaussian_noise", 1)]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: None, "does not exist"),
        (lambda root: root.write_text("x"), "is a file"),
        (lambda root: root.mkdir(), "found folders: none"),
        # One level too deep: the tarball's own top folder left in place.
        (lambda root: released(root / "ImageNet-C"), "found folders: ImageNet-C"),
        # A category folder whose corruption has no severity folders.
        (lambda root: (root / "noise" / "gaussian_noise" / "s1").mkdir(parents=True), "noise"),
        # Severities without a corruption level.
        (lambda root: [(root / str(s)).mkdir(parents=True) for s in (1, 2)], "found folders: 1"),
    ],
    ids=["missing", "file", "empty", "too-deep", "no-severities", "no-corruption"],
)
def test_a_wrong_root_names_the_expected_layout(tmp_path, make, message):
    root = tmp_path / "c"
    make(root)
    with pytest.raises(UserError) as error:
        find_layout(root)
    assert message in str(error.value)
    assert LAYOUT in str(error.value)
    assert "<root>/<corruption>/<severity 1-5>/<wnid>/<image>" in LAYOUT
    assert "<root>/<category>/<corruption>/<severity>" in LAYOUT


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "category-nested"])
def test_each_sample_reads_its_clean_image_and_its_file_in_every_cell(tmp_path, nested):
    folder = val_folder(tmp_path / "val")
    layout = find_layout(released(tmp_path / "c", nested=nested))
    source = ReleasedImageNetC(folder, layout, CELLS)
    for sample in folder.samples:
        images = source.images(sample)
        assert list(images) == ["clean", *CELLS]
        assert images["clean"].size == (240, 240)
        for corruption, severity in CELLS:
            image = images[(corruption, severity)]
            assert image.size == (224, 224) and image.mode == "RGB"
            assert abs(int(np.asarray(image)[0, 0, 0]) - 10 * severity) <= 2


def test_a_val_copy_with_another_suffix_finds_the_released_jpeg(tmp_path):
    folder = val_folder(tmp_path / "val", suffix=".png")
    layout = find_layout(released(tmp_path / "c"))
    source = ReleasedImageNetC(folder, layout, CELLS)
    sample = folder.samples[0]
    assert sample.path == f"{TENCH}/ILSVRC2012_val_00000001.png"
    expected = layout.cells[("saturate", 5)] / FILES[0]
    assert source.cell_file(("saturate", 5), sample) == expected


def test_a_cell_lacking_one_image_names_the_file(tmp_path):
    folder = val_folder(tmp_path / "val")
    root = released(tmp_path / "c", nested=True)
    (root / "blur" / "motion_blur" / "2" / FILES[1]).unlink()
    source = ReleasedImageNetC(folder, find_layout(root), CELLS)
    source.images(folder.samples[0])  # the other image is complete
    with pytest.raises(UserError) as error:
        source.images(folder.samples[1])
    message = str(error.value)
    assert f"motion_blur/2 has no file for {FILES[1]}" in message
    assert str(root / "blur" / "motion_blur" / "2" / GOLDFISH) in message
    assert "--set corruptions=" in message


def test_the_source_records_missing_cells_and_runs_only_those_present(tmp_path):
    folder = val_folder(tmp_path / "val")
    root = released(tmp_path / "c")
    suite = ImageNetCSuite(corruptions="gaussian_noise,motion_blur", imagenet_c=str(root))
    source, description = source_for(suite, folder)
    assert isinstance(source, ReleasedImageNetC)
    assert description == {
        "kind": "released",
        "missing_cells": [f"motion_blur/{s}" for s in (1, 3, 4, 5)],
    }
    assert suite.cells() == [*CELLS[:5], ("motion_blur", 2)]
    assert source.cells == suite.cells()
    assert suite.views_per_image() == 1 + 6


def test_no_requested_cell_or_no_root_is_a_clear_error(tmp_path):
    folder = val_folder(tmp_path / "val")
    root = released(tmp_path / "c")
    with pytest.raises(UserError, match="has none of the requested cells"):
        source_for(ImageNetCSuite(corruptions="fog", imagenet_c=str(root)), folder)
    with pytest.raises(UserError, match="pass --imagenet-c DIR"):
        source_for(ImageNetCSuite(), folder)
