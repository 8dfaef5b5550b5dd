"""The released ImageNet-P layout: MP4s read back with OpenCV frame-exact in count and
shape, RGB order, difficulty folders, and clear errors for damaged sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aabench.data.imagenet_p import (
    ReleasedImageNetP,
    directory_name,
    find_layout,
    read_video,
    video_folder,
)
from aabench.engine import BadImage
from aabench.errors import UserError
from tests.helpers import GOLDFISH, TENCH


def write_video(path: Path, frames: np.ndarray) -> Path:
    """An MP4 (mp4v) of RGB uint8 frames, as OpenCV writes it (BGR on disk)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def red_to_green(count: int, size: int = 224) -> np.ndarray:
    """Flat frames going from pure red to pure green."""
    frames = np.zeros((count, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, count).astype(np.uint8)
    frames[..., 0] = (255 - ramp)[:, None, None]
    frames[..., 1] = ramp[:, None, None]
    return frames


def make_imagenet_p(root: Path, perturbations: dict[str, int], images=2) -> Path:
    """``root/<dir>/<wnid>/ILSVRC2012_val_<i>.mp4`` with ``perturbations[dir]`` frames."""
    for directory, count in perturbations.items():
        for i in range(images):
            wnid = (TENCH, GOLDFISH)[i % 2]
            write_video(
                root / directory / wnid / f"ILSVRC2012_val_{i + 1:08d}.mp4", red_to_green(count)
            )
    return root


def test_a_video_reads_back_frame_exact_in_count_and_shape_and_in_rgb(tmp_path):
    frames = red_to_green(31)
    read = read_video(write_video(tmp_path / "v.mp4", frames))
    assert read.shape == (31, 224, 224, 3)
    assert read.dtype == np.uint8
    # Lossy codec, but the colours stay where they were: first red, last green.
    assert np.abs(read.astype(int) - frames).mean() < 8
    assert read[0, ..., 0].mean() > 200 and read[0, ..., 1].mean() < 50
    assert read[-1, ..., 1].mean() > 200 and read[-1, ..., 0].mean() < 50


def test_translate_videos_have_41_frames(tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"translate": 41, "rotate": 31}, images=1)
    layout = find_layout(root, ("translate", "rotate"), 1)
    folder = video_folder(layout)
    sequences = ReleasedImageNetP(layout, folder).images(folder.samples[0])
    assert sequences["translate"].shape[0] == 41
    assert sequences["rotate"].shape[0] == 31


def test_noise_difficulties_read_the_numbered_folders():
    assert directory_name("gaussian_noise", 1) == "gaussian_noise"
    assert directory_name("gaussian_noise", 2) == "gaussian_noise_2"
    assert directory_name("shot_noise", 3) == "shot_noise_3"
    assert directory_name("rotate", 3) == "rotate"  # a stride, not another folder


def test_samples_are_the_videos_labelled_by_their_wnid(tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"scale": 31}, images=3)
    folder = video_folder(find_layout(root, ("scale",), 1))
    assert [s.path for s in folder.samples] == [
        f"{TENCH}/ILSVRC2012_val_00000001.mp4",
        f"{TENCH}/ILSVRC2012_val_00000003.mp4",
        f"{GOLDFISH}/ILSVRC2012_val_00000002.mp4",
    ]
    assert [s.label for s in folder.samples] == [0, 0, 1]
    assert len(video_folder(find_layout(root, ("scale",), 1), limit=2).samples) == 2


def test_a_video_with_the_wrong_frame_count_is_a_bad_image_named_by_path(tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 30}, images=1)
    layout = find_layout(root, ("rotate",), 1)
    folder = video_folder(layout)
    with pytest.raises(BadImage, match=r"30 frames, not the 31 of rotate") as raised:
        ReleasedImageNetP(layout, folder).images(folder.samples[0])
    assert raised.value.path == root / "rotate" / folder.samples[0].path


def test_a_video_missing_from_another_perturbation_is_found_before_the_run(tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 31, "scale": 31}, images=2)
    (root / "scale" / GOLDFISH / "ILSVRC2012_val_00000002.mp4").unlink()
    with pytest.raises(UserError, match=r"scale lacks 1 of the 2 videos .*ILSVRC2012_val_00000002"):
        video_folder(find_layout(root, ("rotate", "scale"), 1))


def test_an_unreadable_video_is_a_bad_image(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"not a video" * 100)
    with pytest.raises(BadImage) as raised:
        read_video(path)
    assert raised.value.path == path


def test_a_missing_perturbation_folder_names_what_is_there(tmp_path):
    root = make_imagenet_p(tmp_path / "p", {"rotate": 31}, images=1)
    with pytest.raises(UserError, match=r"lacks gaussian_noise_2/.*found: rotate"):
        find_layout(root, ("gaussian_noise", "rotate"), 2)
    with pytest.raises(UserError, match="does not exist"):
        find_layout(tmp_path / "nowhere", ("rotate",), 1)
