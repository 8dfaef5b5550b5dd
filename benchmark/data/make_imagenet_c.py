"""Generate ImageNet-C from ImageNet val, in the released layout, resumably and reproducibly.

``<out>/<corruption>/<severity>/<wnid>/<stem>.JPEG``: 224 x 224 JPEGs made by
Resize(256) -> CenterCrop(224) -> corruption -> uint8 -> JPEG q85. Every file depends on
(seed, image, corruption, severity) alone, so any worker count or order gives the same
bytes; files are written atomically and kept on a rerun, so an interrupted run resumes
where it stopped. ``<out>/manifest.json`` records how the set was made.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from aabench import __version__
from aabench.data.corruptions import (
    COMMON,
    GENERATOR_VERSION,
    JPEG_QUALITY,
    PIPELINE,
    SEVERITIES,
    _functions,
    center_224,
    check_corruption,
    check_severity,
    corrupt,
    corruption_seed,
    jpeg_bytes,
)
from aabench.data.folder import open_image_folder
from aabench.errors import UserError
from aabench.results.files import write_json

MANIFEST = "manifest.json"
LAYOUT = "<corruption>/<severity>/<wnid>/<stem>.JPEG"
SUFFIX = ".JPEG"
# A manifest that differs in any of these describes files made another way: mixing them
# into one set would be silent, so a run refuses.
# generator_version: a set begun before frost was drawn as the release drew it has none.
MUST_MATCH = ("seed", "corruptions", "severities", "jpeg_quality", "pipeline", "generator_version")


@dataclass(frozen=True)
class _Config:
    out: str
    corruptions: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int


_config: _Config | None = None  # set in each worker (and in-process) by _init


def _init(config: _Config, worker: bool) -> None:
    global _config
    _config = config
    if not worker:
        return
    # One thread per process: the processes already fill the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    # Pool.terminate() sends SIGTERM: exit through `finally` so no temporary file stays.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))


def _context():
    """Workers started from a clean process, never forked from this one.

    A fork copies whatever thread pools this process has used (OpenCV's, OpenMP's) in a
    broken state: the first call into them in the child can hang forever. The fork server
    imports the heavy modules once, before any pool exists, so workers still start fast.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, "aabench.engine", "imagecorruptions"])
    return context


def output_path(out: Path, corruption: str, severity: int, sample_path: str) -> Path:
    """Where the released layout puts one image's corrupted copy."""
    relative = Path(sample_path)
    return out / corruption / str(severity) / relative.parent.name / (relative.stem + SUFFIX)


def _exists(path: Path) -> bool:
    # An empty file (a crash of the machine between rename and flush) is made again.
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def _make_one(job: tuple[str, str, int]) -> tuple[int, int]:
    """Write the missing corrupted copies of one image; returns (written, skipped)."""
    from aabench.engine import BadImage, decode

    source, sample_path, key = job
    config = _config
    out = Path(config.out)
    cells = [(c, s) for c in config.corruptions for s in config.severities]
    todo = [(c, s, output_path(out, c, s, sample_path)) for c, s in cells]
    todo = [(c, s, path) for c, s, path in todo if not _exists(path)]
    skipped = len(cells) - len(todo)
    if not todo:
        return 0, skipped
    try:
        clean = center_224(decode(Path(source)))
    except BadImage as error:
        raise UserError(
            f"cannot decode source image {source} ({getattr(error, 'reason', error)}): "
            "replace or remove it and rerun "
            "(files already written are kept)"
        ) from None
    for corruption, severity, path in todo:
        seed = corruption_seed(config.seed, key, corruption, severity)
        _write(path, jpeg_bytes(corrupt(clean, corruption, severity, seed), JPEG_QUALITY))
    return len(todo), skipped


def library_versions() -> dict:
    versions = {}
    for name in ("imagecorruptions-imaug", "numpy", "pillow", "scikit-image", "scipy", "numba"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import cv2

        versions["opencv"] = cv2.__version__
    except ImportError:
        versions["opencv"] = None
    return versions


def _check_out(out: Path, data_root: Path, manifest: dict) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory for the generated set")
    resolved, root = out.resolve(), data_root.resolve()
    if resolved == root or root in resolved.parents:
        raise UserError(f"--out {out} is inside --data {data_root}: pass a directory outside it")
    path = out / MANIFEST
    if not path.exists():
        if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise UserError(
                f"--out {out} already holds files but no {MANIFEST}: it was not made by "
                "`aabench make-imagenet-c`; use another --out (an empty or new directory)"
            )
        return
    import json

    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {path} ({error}): use another --out") from None
    differs = [key for key in MUST_MATCH if existing.get(key) != manifest[key]]
    ours = manifest["versions"]["imagecorruptions-imaug"]
    theirs = existing.get("versions", {}).get("imagecorruptions-imaug")
    if theirs != ours:
        differs.append("imagecorruptions-imaug version")
    if differs:
        detail = "; ".join(
            f"{key} {existing.get(key)!r} there, {manifest[key]!r} now"
            if key in manifest
            else f"{key} {theirs!r} there, {ours!r} now"
            for key in differs
        )
        raise UserError(
            f"{path} was made differently ({detail}): adding files would mix two sets; "
            "use another --out, or rerun with the same settings to resume"
        )


def make_imagenet_c(
    data: str | Path,
    out: str | Path,
    corruptions: tuple[str, ...] | list[str] = COMMON,
    severities: tuple[int, ...] | list[int] = SEVERITIES,
    limit: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> dict:
    """Generate (or finish) ImageNet-C for ``data`` under ``out``; returns the manifest."""
    from aabench.engine import _progress

    corruptions = tuple(check_corruption(c) for c in corruptions)
    severities = tuple(check_severity(s) for s in severities)
    if not corruptions or not severities:
        raise UserError("name at least one corruption and one severity")
    if len(set(corruptions)) != len(corruptions) or len(set(severities)) != len(severities):
        raise UserError("each corruption and severity may be named only once")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) - 1)
    if workers < 0:
        raise UserError(f"--workers must be 0 (in-process) or more, got {workers}")
    _functions()  # fails now, not in a worker, if the library lacks a corruption
    folder = open_image_folder(data, limit=limit)
    out = Path(out).expanduser()
    _check_names(folder.samples)
    cells = len(corruptions) * len(severities)
    manifest = {
        "format": "aabench ImageNet-C",
        "status": "running",
        "aabench_version": __version__,
        "seed": seed,
        "corruptions": list(corruptions),
        "severities": list(severities),
        "limit": limit,
        "data": {"root": str(folder.root), "fingerprint": folder.fingerprint()},
        "layout": LAYOUT,
        "pipeline": PIPELINE,
        "generator_version": GENERATOR_VERSION,
        "jpeg_quality": JPEG_QUALITY,
        "seeding": "np.random.seed and seed= from sha256(run seed, crc32(image path), "
        "corruption, severity)",
        "versions": library_versions(),
        "images": len(folder),
        "files": len(folder) * cells,
        "workers": workers,
        "written": None,
        "skipped": None,
        "seconds": None,
        "images_per_second": None,
        "files_per_second": None,
        "updated": None,
    }
    _check_out(out, folder.root, manifest)
    out.mkdir(parents=True, exist_ok=True)
    _save(manifest, out)  # first, so that a crashed run still says how its files were made

    config = _Config(str(out), corruptions, severities, seed)
    jobs = ((str(folder.root / s.file), s.file, s.key) for s in folder.samples)
    written = skipped = 0
    start = time.perf_counter()
    with _progress(quiet, "make-imagenet-c", len(folder)) as advance:
        if workers == 0:
            _init(config, worker=False)
            results = map(_make_one, jobs)
            for done, kept in results:
                written, skipped = written + done, skipped + kept
                advance(1)
        else:
            with _context().Pool(workers, initializer=_init, initargs=(config, True)) as pool:
                for done, kept in pool.imap_unordered(_make_one, jobs):
                    written, skipped = written + done, skipped + kept
                    advance(1)
    seconds = max(time.perf_counter() - start, 1e-6)
    manifest.update(
        status="complete",
        written=written,
        skipped=skipped,
        seconds=round(seconds, 3),
        images_per_second=round(len(folder) / seconds, 3),
        files_per_second=round(written / seconds, 3),
    )
    _save(manifest, out)
    return manifest


def _check_names(samples) -> None:
    """Two images of one class with one stem (a.png, a.jpg) would share an output file."""
    seen: dict[tuple[str, str], str] = {}
    for sample in samples:
        relative = Path(sample.path)
        name = (relative.parent.name, relative.stem)
        if name in seen:
            raise UserError(
                f"{seen[name]} and {sample.path} would both become {name[0]}/{name[1]}{SUFFIX}: "
                "rename or remove one of them"
            )
        seen[name] = sample.path


def _save(manifest: dict, out: Path) -> None:
    manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(manifest, out / MANIFEST)
