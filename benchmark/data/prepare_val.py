"""Sort the official flat ImageNet val archive into ``<out>/<wnid>/<image>`` folders.

What is read, from ``archive_dir``:
- the val images: the files ``ILSVRC2012_val_<8 digits>.JPEG`` directly in it, or, if
  there are none, the members of that name in ``ILSVRC2012_img_val.tar``;
- the devkit: ``ILSVRC2012_devkit_t12/data/meta.mat`` (ILSVRC2012_ID 1..1000 -> WNID) and
  ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt`` (line i: the
  ILSVRC2012_ID of val image i), from the extracted folder ``ILSVRC2012_devkit_t12/`` or,
  if there is none, from ``ILSVRC2012_devkit_t12.tar.gz`` (read in place).

Everything is checked before anything is written: the devkit, every image's place, and
what already lies at each destination. Images are hard-linked from a flat folder on the
same file system (copied otherwise, or with ``copy=True``) and extracted from the tar;
each file appears under its final name only once complete. A file already in place
(the same file, or identical bytes) is kept, so a second run changes nothing.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aabench.data.classes import wnid_to_index
from aabench.errors import UserError

VAL_IMAGES = 50_000
CLASSES = 1000
DEVKIT = "ILSVRC2012_devkit_t12"
DEVKIT_ARCHIVE = f"{DEVKIT}.tar.gz"
META = f"{DEVKIT}/data/meta.mat"
GROUND_TRUTH = f"{DEVKIT}/data/ILSVRC2012_validation_ground_truth.txt"
VAL_ARCHIVE = "ILSVRC2012_img_val.tar"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
# Errors of os.link that mean "this file system cannot link here": copy instead.
_CANNOT_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


@dataclass(frozen=True)
class Prepared:
    out: Path
    linked: int
    copied: int  # copied from the flat folder or extracted from the tar
    kept: int  # already in place
    classes: int  # class folders that hold images

    @property
    def images(self) -> int:
        return self.linked + self.copied + self.kept

    @property
    def changed(self) -> bool:
        return bool(self.linked or self.copied)


@dataclass(frozen=True)
class _Image:
    name: str  # ILSVRC2012_val_00000001.JPEG
    number: int  # 1-based, the line of the ground truth
    size: int
    path: Path | None = None  # in the flat folder
    member: tarfile.TarInfo | None = None  # in the tar


def prepare_val(
    archive_dir: str | Path,
    out: str | Path,
    copy: bool = False,
    partial: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Prepared:
    """Sort the val images of ``archive_dir`` into ``out/<wnid>/``; ``partial`` accepts
    an archive with only some of the 50 000 images (classes without images get no
    folder). ``progress(done, total)`` is called as images are placed."""
    archive_dir = Path(archive_dir).expanduser()
    out = Path(out).expanduser()
    if not archive_dir.is_dir():
        raise UserError(
            f"--archive-dir {archive_dir} is not a directory: pass the folder that holds "
            f"the val images (or {VAL_ARCHIVE}) and {DEVKIT_ARCHIVE} (or {DEVKIT}/)"
        )
    id_to_wnid, truth = read_devkit(archive_dir)
    tar, images = _find_images(archive_dir)
    try:
        _check_complete(images, partial, archive_dir)
        plan = [(image, out / id_to_wnid[truth[image.number - 1]] / image.name) for image in images]
        _check_writable(out)
        todo = [(image, dest) for image, dest in plan if not _in_place(image, dest, tar)]
        linked = copied = 0
        can_link = not copy and tar is None
        for done, (image, dest) in enumerate(todo, 1):
            try:
                dest.parent.mkdir(exist_ok=True)
                if can_link:
                    try:
                        _place(dest, functools.partial(os.link, image.path))
                        linked += 1
                    except OSError as error:
                        if error.errno not in _CANNOT_LINK:
                            raise
                        can_link = False  # another file system: copy this and the rest
                if not can_link:
                    _place(dest, functools.partial(_copy, image, tar))
                    copied += 1
            except OSError as error:
                raise UserError(
                    f"cannot write {dest} ({error.strerror or error}): the images placed so "
                    "far are complete; free space or fix permissions and run again to finish"
                ) from None
            if progress:
                progress(done, len(todo))
    finally:
        if tar is not None:
            tar.close()
    classes = len({dest.parent for _, dest in plan})
    return Prepared(out, linked, copied, len(plan) - len(todo), classes)


def read_devkit(archive_dir: Path) -> tuple[dict[int, str], list[int]]:
    """(ILSVRC2012_ID -> wnid for IDs 1..1000, the ID of every val image in order)."""
    meta, truth = _devkit_files(archive_dir)
    return _parse_meta(meta), _parse_ground_truth(truth)


def _devkit_files(archive_dir: Path) -> tuple[bytes, bytes]:
    folder, archive = archive_dir / DEVKIT, archive_dir / DEVKIT_ARCHIVE
    if folder.is_dir():
        found = []
        for name in (META, GROUND_TRUTH):
            path = archive_dir / name
            if not path.is_file():
                raise UserError(
                    f"devkit file {path} is missing: {folder} must be the extracted "
                    f"{DEVKIT_ARCHIVE} (or remove it and put the .tar.gz there instead)"
                )
            found.append(path.read_bytes())
        return found[0], found[1]
    if not archive.is_file():
        raise UserError(
            f"no devkit in {archive_dir}: put {DEVKIT_ARCHIVE} (the official ILSVRC2012 "
            f"devkit) or its extracted folder {DEVKIT}/ there"
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
            found = []
            for name in (META, GROUND_TRUTH):
                if name not in members:
                    raise UserError(
                        f"{archive} has no {name}: it is not the ILSVRC2012 devkit "
                        f"({DEVKIT_ARCHIVE}); download that one"
                    )
                found.append(tar.extractfile(members[name]).read())
            return found[0], found[1]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"cannot read {archive} ({error}): download it again") from None


def _parse_meta(data: bytes) -> dict[int, str]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(
            f"reading {META} needs scipy, which is not installed: pip install scipy"
        ) from None
    try:
        synsets = loadmat(io.BytesIO(data), squeeze_me=True)["synsets"]
        pairs = [
            (int(i), str(w))
            for i, w in zip(synsets["ILSVRC2012_ID"].ravel(), synsets["WNID"].ravel(), strict=True)
        ]
    except Exception as error:  # a broken or foreign .mat: whatever scipy raises
        raise UserError(
            f"{META} is not the ILSVRC2012 devkit's synset table ({type(error).__name__}: "
            f"{error}): download {DEVKIT_ARCHIVE} again"
        ) from None
    # IDs above 1000 are the WordNet nodes above the 1000 leaf classes.
    leaves = [(i, w) for i, w in pairs if 1 <= i <= CLASSES]
    id_to_wnid = dict(leaves)
    if len(leaves) != CLASSES or sorted(id_to_wnid) != list(range(1, CLASSES + 1)):
        raise UserError(
            f"{META} must map each ILSVRC2012_ID 1..1000 to one wnid, but has "
            f"{len(leaves)} entries for {len(id_to_wnid)} distinct IDs: is it the 2012 devkit?"
        )
    known = wnid_to_index()
    unknown = sorted(set(id_to_wnid.values()) - set(known))
    if unknown or len(set(id_to_wnid.values())) != CLASSES:
        shown = ", ".join(unknown[:3]) or "a wnid given twice"
        raise UserError(
            f"{META} does not name the 1000 ImageNet-1k wnids ({shown}): it is not the "
            f"ILSVRC2012 devkit; download {DEVKIT_ARCHIVE}"
        )
    return id_to_wnid


def _parse_ground_truth(data: bytes) -> list[int]:
    lines = data.decode("ascii", errors="replace").split()
    if len(lines) != VAL_IMAGES:
        raise UserError(
            f"{GROUND_TRUTH} has {len(lines)} lines, the ILSVRC2012 val set has "
            f"{VAL_IMAGES}: use the file of the ILSVRC2012 devkit ({DEVKIT_ARCHIVE})"
        )
    ids = []
    for number, text in enumerate(lines, 1):
        if not text.isdigit() or not 1 <= int(text) <= CLASSES:
            raise UserError(
                f"{GROUND_TRUTH} line {number} is {text!r}, not an ILSVRC2012_ID in 1..1000: "
                f"use the file of the ILSVRC2012 devkit ({DEVKIT_ARCHIVE})"
            )
        ids.append(int(text))
    return ids


def _find_images(archive_dir: Path) -> tuple[tarfile.TarFile | None, list[_Image]]:
    """The val images: the flat JPEGs in ``archive_dir``, else the val tar's members."""
    images = []
    for path in archive_dir.iterdir():
        if VAL_NAME.fullmatch(path.name) and path.is_file():
            images.append(_Image(path.name, _number(path.name), path.stat().st_size, path=path))
    if images:
        return None, sorted(images, key=lambda image: image.number)
    archive = archive_dir / VAL_ARCHIVE
    if not archive.is_file():
        raise UserError(
            f"no val images in {archive_dir}: expected the flat files "
            f"ILSVRC2012_val_00000001.JPEG ... or {VAL_ARCHIVE}"
        )
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 - the caller reads and closes it
        members = [m for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as error:
        raise UserError(f"cannot read {archive} ({error}): download it again") from None
    for member in members:
        name = member.name.rsplit("/", 1)[-1]
        if VAL_NAME.fullmatch(name):
            images.append(_Image(name, _number(name), member.size, member=member))
    if not images:
        tar.close()
        raise UserError(f"{archive} holds no ILSVRC2012_val_*.JPEG images: is it the val tar?")
    return tar, sorted(images, key=lambda image: image.number)


def _number(name: str) -> int:
    number = int(VAL_NAME.fullmatch(name).group(1))
    if not 1 <= number <= VAL_IMAGES:
        raise UserError(f"val image {name}: the ILSVRC2012 val images are numbered 1..50000")
    return number


def _check_complete(images: list[_Image], partial: bool, archive_dir: Path) -> None:
    numbers = [image.number for image in images]
    if len(set(numbers)) != len(numbers):
        raise UserError(f"{archive_dir}: the val tar holds an image twice: download it again")
    if partial or len(images) == VAL_IMAGES:
        return
    present = set(numbers)
    first = next(n for n in range(1, VAL_IMAGES + 1) if n not in present)
    raise UserError(
        f"{VAL_IMAGES - len(images)} of the {VAL_IMAGES} val images are missing from "
        f"{archive_dir} (first: ILSVRC2012_val_{first:08d}.JPEG): add them, or pass "
        "--partial to sort only those present"
    )


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory for the sorted val folders")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".aabench-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write to --out {out} ({error.strerror or error}): pass a writable directory"
        ) from None


def _in_place(image: _Image, dest: Path, tar: tarfile.TarFile | None) -> bool:
    """True if ``dest`` already holds this image; an error if it holds something else."""
    if not dest.exists() and not dest.is_symlink():
        return False
    if dest.is_file():
        if image.path is not None and os.path.samefile(image.path, dest):
            return True
        if dest.stat().st_size == image.size and _same_bytes(image, dest, tar):
            return True
    raise UserError(
        f"{dest} exists and is not {image.name} of the archive: move it away (or choose "
        "another --out) and run again"
    )


def _same_bytes(image: _Image, dest: Path, tar: tarfile.TarFile | None) -> bool:
    with _open_source(image, tar) as source, dest.open("rb") as existing:
        while True:
            a, b = source.read(1 << 20), existing.read(1 << 20)
            if a != b:
                return False
            if not a:
                return True


def _open_source(image: _Image, tar: tarfile.TarFile | None):
    return image.path.open("rb") if image.path is not None else tar.extractfile(image.member)


def _copy(image: _Image, tar: tarfile.TarFile | None, tmp: Path) -> None:
    with _open_source(image, tar) as source, tmp.open("xb") as target:
        shutil.copyfileobj(source, target, 1 << 20)


def _place(dest: Path, write: Callable[[Path], None]) -> None:
    """``write`` the file under a hidden temporary name beside ``dest``, then rename it
    into place: ``dest`` never holds a half-written file."""
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
