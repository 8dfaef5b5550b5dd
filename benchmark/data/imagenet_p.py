"""The released ImageNet-P set: ``<root>/<perturbation>[_2|_3]/<wnid>/<image>.mp4``.

``_2`` / ``_3`` hold the harder difficulties of the noise perturbations. Frames are read
with OpenCV (BGR -> RGB) and evaluated as they are: 224 x 224, never resized. The run's
samples are the videos of the first requested perturbation; every other perturbation
must hold the same videos.

:func:`h264_round_trip` puts a generated sequence through the codec the release used
(``--set encode=h264``), with the release's ffmpeg settings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aabench.data.classes import wnid_to_index
from aabench.data.folder import ImageFolder, Sample, spread_subset
from aabench.data.perturbations import H264_PIXEL_FORMAT, frame_count, h264_options, is_noise
from aabench.engine import BadImage
from aabench.errors import UserError

LAYOUT = "<root>/<perturbation>[_2|_3]/<wnid>/<image>.mp4"
VIDEO_SUFFIX = ".mp4"


def directory_name(perturbation: str, difficulty: int) -> str:
    """Noise difficulties 2 and 3 live in ``<name>_2`` / ``<name>_3``; every other
    perturbation has one directory (its difficulty is the comparison stride)."""
    if is_noise(perturbation) and difficulty > 1:
        return f"{perturbation}_{difficulty}"
    return perturbation


@dataclass(frozen=True)
class ImageNetPLayout:
    root: Path
    directories: dict[str, Path]  # perturbation -> its directory for this difficulty


def find_layout(root: str | Path, perturbations, difficulty: int) -> ImageNetPLayout:
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise UserError(f"--imagenet-p {root} {what}: point it at ImageNet-P laid out as {LAYOUT}")
    directories = {p: root / directory_name(p, difficulty) for p in perturbations}
    missing = [f"{d.name}/" for d in directories.values() if not d.is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
        raise UserError(
            f"{root} lacks {', '.join(missing)} (found: {', '.join(found) or 'nothing'}): "
            f"expected {LAYOUT}; choose the perturbations it has with --set perturbations=..."
        )
    return ImageNetPLayout(root=root, directories=directories)


def video_folder(layout: ImageNetPLayout, limit: int | None = None) -> ImageFolder:
    """The videos of the first perturbation as the run's samples (``<wnid>/<name>.mp4``)."""
    first = next(iter(layout.directories.values()))
    known = wnid_to_index()
    class_dirs = sorted(p for p in first.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [d.name for d in class_dirs if d.name not in known]
    if unknown:
        raise UserError(
            f"{first} has folders that are not ImageNet wnids ({', '.join(unknown[:3])}): "
            f"expected {LAYOUT}"
        )
    samples = [
        Sample(video.relative_to(first).as_posix(), known[class_dir.name])
        for class_dir in class_dirs
        for video in sorted(class_dir.glob("*" + VIDEO_SUFFIX))
    ]
    if not samples:
        raise UserError(f"{first} holds no <wnid>/*.mp4 videos: expected {LAYOUT}")
    # Every perturbation must hold every video: found now, not hours into the run.
    for directory in list(layout.directories.values())[1:]:
        absent = [s.path for s in samples if not (directory / s.path).is_file()]
        if absent:
            raise UserError(
                f"{directory} lacks {len(absent)} of the {len(samples)} videos in {first} "
                f"(e.g. {absent[0]}): re-extract it, or leave {directory.name} out with "
                "--set perturbations=..."
            )
    if limit is not None:
        samples = spread_subset(samples, limit)
    return ImageFolder(root=first, samples=tuple(samples), limit=limit)


def read_video(path: Path) -> np.ndarray:
    """Every frame of a video as uint8 frames x H x W x 3, RGB."""
    import cv2

    if not path.is_file():
        raise UserError(
            f"ImageNet-P video {path} does not exist: the set is incomplete; re-extract it, "
            "or leave that perturbation out with --set perturbations=..."
        )
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while capture.isOpened():
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise BadImage(path, "OpenCV cannot read any frame from this video")
    if len({frame.shape for frame in frames}) > 1:
        raise BadImage(path, "its frames differ in size")
    return np.stack(frames)


class ReleasedImageNetP:
    """Reads, for one sample, its video in every requested perturbation."""

    def __init__(self, layout: ImageNetPLayout, folder: ImageFolder):
        self.layout = layout
        self.folder = folder

    def images(self, sample: Sample) -> dict:
        sequences = {}
        for perturbation, directory in self.layout.directories.items():
            path = directory / sample.path
            frames = read_video(path)
            expected = frame_count(perturbation)
            if frames.shape[0] != expected:
                # A damaged file, like a corrupt image: --skip-bad-images may skip it.
                raise BadImage(
                    path,
                    f"{frames.shape[0]} frames, not the {expected} of {perturbation}; "
                    "re-extract it",
                )
            sequences[perturbation] = frames
        return sequences


def h264_round_trip(frames: np.ndarray, perturbation: str) -> np.ndarray:
    """uint8 frames x H x W x 3 (RGB) -> the same frames after an H.264 MP4 (1 fps)
    encode and decode, with the release's ffmpeg settings, decoded to RGB: the same
    frames give the same result with the same PyAV build. Not the release's bytes: its
    x264 build (and its CPU's SIMD paths) are not ours."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1, options=h264_options(perturbation))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = H264_PIXEL_FORMAT
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture = picture.reformat(format=H264_PIXEL_FORMAT)
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer, "r") as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if len(decoded) != len(frames):
        raise RuntimeError(f"H.264 round trip returned {len(decoded)} of {len(frames)} frames")
    return np.stack(decoded)
