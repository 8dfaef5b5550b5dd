"""Generate ImageNet-C from ImageNet val, in the released layout, resumably and reproducibly.

``<out>/<corruption>/<severity>/<wnid>/<stem>.JPEG``: 224 x 224 JPEGs made by
Resize(256) -> CenterCrop(224) -> corruption -> uint8 -> JPEG q85. Every file depends on
(seed, image, corruption, severity) alone, so any worker count or order gives the same
bytes; files are written atomically and kept on a rerun, so an interrupted run resumes
where it stopped. ``<out>/manifest.json`` records how the set was made.

Workers run in a ProcessPoolExecutor: a worker that dies (killed, out of memory) breaks
the pool, which is reported at once, where multiprocessing.Pool would wait forever for
the image it lost. Workers ignore Ctrl-C, which the terminal sends to every process of
the group: the main process alone answers it, by stopping them.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from aabench import __version__, checks
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
# What every message about a stopped run ends with: what is kept, and how to go on.
KEPT = "the files already written are whole and kept"
RERUN = "rerun the same command to continue (finished files are checked and skipped)"
STOPPED = 128 + signal.SIGTERM  # a worker's exit code after SIGTERM, as a shell's
SECONDS_TO_STOP = 10  # for a stopped worker to remove its temporary file and exit


class WorkerDied(UserError):
    """A worker process ended without finishing its image (killed, out of memory). Not
    the user's input, and not a traceback to report: one line and exit code 3."""

    exit_code = 3


class WorkersTerminated(KeyboardInterrupt):
    """The workers were sent SIGTERM (Slurm, docker stop signal every process) before
    the main process saw its own: the run was terminated, not broken."""


class _Stopped(SystemExit):
    """SIGTERM in a worker. Raised in the middle of a write it unwinds through the write's
    cleanup, so no temporary file stays; raised while idle it ends the worker quietly."""


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
    # Ctrl-C reaches every process of the terminal's group: the main process answers it
    # and stops the workers (SIGTERM), so no worker prints its own traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)


def _stop(*_) -> None:
    raise _Stopped(STOPPED)


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


def _complete(path: Path) -> bool:
    """A whole JPEG is there: it starts with SOI and ends with EOI. A file cut short (the
    machine crashed between rename and flush) is made again; reading 4 bytes keeps the
    check cheap against the seconds of CPU an image's corruptions cost."""
    with checks.reading(path, "generated file"):
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < 4:
                    return False
                head = handle.read(2)
                handle.seek(-2, os.SEEK_END)
                return head == b"\xff\xd8" and handle.read(2) == b"\xff\xd9"
        except FileNotFoundError:
            return False


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place: no
    reader and no rerun ever sees a partial file, whatever stops the write."""
    with checks.writing(path, then=f"{KEPT}: {RERUN}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            _write_bytes(temporary, data)
            os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()


def _remove_stale_temporaries(path: Path) -> None:
    """A worker killed outright (SIGKILL, out of memory) cannot remove its temporary:
    the rerun that makes the file again does, so nothing partial stays for good."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _make_one(job: tuple[str, str, int]) -> tuple[int, int]:
    """Write the missing corrupted copies of one image; returns (written, skipped)."""
    from aabench.engine import BadImage, decode

    source, sample_path, key = job
    config = _config
    out = Path(config.out)
    cells = [(c, s) for c in config.corruptions for s in config.severities]
    todo = [(c, s, output_path(out, c, s, sample_path)) for c, s in cells]
    todo = [(c, s, path) for c, s, path in todo if not _complete(path)]
    skipped = len(cells) - len(todo)
    if not todo:
        return 0, skipped
    try:
        clean = center_224(decode(Path(source)))
    except BadImage as error:
        raise UserError(
            f"cannot decode source image {checks.printable(source)} "
            f"({getattr(error, 'reason', error)}): replace or remove it and rerun "
            "(files already written are kept)"
        ) from None
    for corruption, severity, path in todo:
        seed = corruption_seed(config.seed, key, corruption, severity)
        _write(path, jpeg_bytes(corrupt(clean, corruption, severity, seed), JPEG_QUALITY))
    return len(todo), skipped


def _make_one_in_worker(job: tuple[str, str, int]) -> tuple[int, int]:
    try:
        return _make_one(job)
    except _Stopped:
        # The write's cleanup has run. Handed back as a result, the stop would leave the
        # worker alive to take the next image: end it now.
        os._exit(STOPPED)


def _results(config: _Config, jobs: Iterable, workers: int) -> Iterator[tuple[int, int]]:
    """(written, skipped) of every image, in the order they finish."""
    if workers == 0:
        _init(config, worker=False)
        yield from map(_make_one, jobs)
        return
    executor = ProcessPoolExecutor(
        workers, mp_context=_context(), initializer=_init, initargs=(config, True)
    )
    try:
        yield from _pooled(executor, iter(jobs), workers)
    except BaseException:  # an error, Ctrl-C, SIGTERM, or the consumer closing us
        _stop_workers(executor)
        raise
    executor.shutdown(wait=True)


def _pooled(executor: ProcessPoolExecutor, jobs: Iterator, workers: int) -> Iterator:
    # Two images queued per worker keep every worker busy, and leave little to cancel.
    pending: set[Future] = set()
    try:
        while True:
            while len(pending) < 2 * workers and (job := next(jobs, None)) is not None:
                pending.add(executor.submit(_make_one_in_worker, job))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()  # a worker's UserError is raised here, as it was
    except BrokenProcessPool:
        raise _broken(executor) from None


def _worker_processes(executor: ProcessPoolExecutor) -> list:
    # Python 3.14 has terminate_workers(); before it, the pool's own table of processes.
    return list((getattr(executor, "_processes", None) or {}).values())


def _stop_workers(executor: ProcessPoolExecutor) -> None:
    """Cancel the queued images and stop the workers: SIGTERM unwinds a write in
    progress through its cleanup (see _Stopped), so no temporary file stays."""
    processes = _worker_processes(executor)
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.terminate()
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(SECONDS_TO_STOP)
            if process.is_alive():
                process.kill()
                process.join()
    # Only now: the pool's manager thread must see its workers gone and end before we do,
    # or it closes its wake-up pipe while the interpreter's exit writes to it.
    executor.shutdown(wait=True, cancel_futures=True)


def _broken(executor: ProcessPoolExecutor) -> BaseException:
    """What a broken pool means, from how its workers ended."""
    codes = {process.exitcode for process in _worker_processes(executor)} - {None, 0}
    # The pool sends SIGTERM to the workers left once one has died: only a pool whose
    # workers all ended by SIGTERM was terminated (Slurm, docker stop signal them all).
    deaths = codes - {STOPPED, -signal.SIGTERM}
    if codes and not deaths:
        return WorkersTerminated()
    how = ", ".join(sorted(_ending(code) for code in deaths)) or "without a word"
    return WorkerDied(
        f"a make-imagenet-c worker process died ({how}: out of memory, or killed from "
        f"outside); {KEPT}: {RERUN}"
    )


def _ending(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


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
    shown = checks.printable(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {shown} is a file: pass a directory for the generated set")
    resolved, root = out.resolve(), data_root.resolve()
    if resolved == root or root in resolved.parents:
        raise UserError(
            f"--out {shown} is inside --data {checks.printable(data_root)}: pass a "
            "directory outside it"
        )
    path = out / MANIFEST
    if not path.exists():
        with checks.reading(out, "--out directory"):
            strangers = out.exists() and any(not p.name.startswith(".") for p in out.iterdir())
        if strangers:
            raise UserError(
                f"--out {shown} already holds files but no {MANIFEST}: it was not made by "
                "`aabench make-imagenet-c`; use another --out (an empty or new directory)"
            )
        return
    import json

    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read {checks.printable(path)} ({checks.printable(error)}): use another --out"
        ) from None
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
            f"{checks.printable(path)} was made differently ({detail}): adding files would "
            "mix two sets; "
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
    corruptions = tuple(check_corruption(c) for c in corruptions)
    severities = tuple(check_severity(s) for s in severities)
    if not corruptions or not severities:
        raise UserError("name at least one corruption and one severity")
    if len(set(corruptions)) != len(corruptions) or len(set(severities)) != len(severities):
        raise UserError("each corruption and severity may be named only once")
    if workers is None:
        workers = max(1, (os.cpu_count() or 1) - 1)
    checks.workers(workers)
    checks.seed(seed)
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
    with checks.writing(out):
        out.mkdir(parents=True, exist_ok=True)
    _save(manifest, out)  # first, so that a crashed run still says how its files were made

    config = _Config(str(out), corruptions, severities, seed)
    jobs = ((str(folder.root / s.file), s.file, s.key) for s in folder.samples)
    written = skipped = 0
    start = time.perf_counter()
    from aabench.engine import _progress  # torch: only once --out has taken the manifest

    with (
        _progress(quiet, "make-imagenet-c", len(folder)) as advance,
        contextlib.closing(_results(config, jobs, workers)) as results,
    ):
        for done, kept in results:
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
