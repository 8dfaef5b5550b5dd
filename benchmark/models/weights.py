"""Finding, downloading, verifying and safely loading checkpoint files.

Two kinds of file, two ways to find them:

- Known files (the released weights, torchvision's) carry a SHA-256 prefix in their name
  (torch.hub's ``<stem>-<hash>.pth`` convention). They are looked up by that name in a
  local mirror directory (``--weights-dir`` or ``AABENCH_WEIGHTS_DIR``), then in
  torch.hub's cache (``$TORCH_HOME/hub/checkpoints``), and only then downloaded into that
  cache. The prefix is verified every time, for cached files too: the released bucket
  has served broken files before, and a wrong file gives wrong numbers.
- ``--weights URL`` whose name claims no hash is kept by content: the bytes go to
  ``<cache>/aabench/sha256/<sha256>/<name>`` and ``<cache>/aabench/urls/`` remembers which
  content each URL last gave, so the same URL works offline later and two URLs with the
  same file name never share a file.

Every download streams into a temporary file in the folder it will end up in, hashing as
it goes, and is checked (not empty, not a web page, a checkpoint format, the hash prefix
when one is known) before it is renamed into place: nothing half-written or unverified
ever has a final name. Checkpoints are torch.save files (read with ``weights_only=True``,
never running code) or safetensors files, told apart by their first bytes.

Nothing here imports torch until a checkpoint is read: finding, downloading and verifying
files is plain Python, so `run` can settle its weights before it pays for torch.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.error import HTTPError, URLError
from urllib.parse import unquote, urlparse
from urllib.request import urlopen

from aabench.checks import printable, reading
from aabench.errors import UserError

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR_ENV = "AABENCH_WEIGHTS_DIR"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
# A URL's last path segment is used as a file name only when it is this tame: no hidden
# files, no separators or control characters, nothing a file system could refuse.
_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_CHUNK = 1 << 20
_HEAD = 512  # enough of a file's start to tell its format
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch.save"
TORCH_LEGACY = "torch.save (legacy)"
# safetensors refuses headers above 100 MB; a larger "length" is not a safetensors file.
_SAFETENSORS_MAX_HEADER = 100_000_000
# The first pickle of a legacy torch.save file is this number.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_WEB_PAGE_TYPES = ("text/html", "application/xhtml+xml")


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's default weights come from."""

    name: str  # e.g. "resnet18_lpf4_finetune" or "ResNet18_Weights.IMAGENET1K_V1"
    url: str
    licence: str

    @property
    def file_name(self) -> str:
        return Path(urlparse(self.url).path).name


@dataclass(frozen=True)
class WeightsRecord:
    """What was actually loaded into a model; written into every output's provenance."""

    name: str  # the source's name, "user checkpoint", or "none" (random initialisation)
    file: str | None
    sha256: str | None
    licence: str
    url: str | None = None  # where the file comes from (the mirror's URL with --weights-url)
    weights_url: str | None = None  # the --weights-url / AABENCH_WEIGHTS_URL base, if given
    format: str | None = None  # SAFETENSORS, TORCH_ZIP or TORCH_LEGACY, for files

    @property
    def random(self) -> bool:
        return self.file is None and self.name == "none"

    @property
    def label(self) -> str:
        """Short form for tables: the file name, "none" for random initialisation, or
        "state-<SHA-256 prefix>" for a module's own weights (no file: an in-memory module
        or a factory's own initialisation)."""
        if self.file:
            return Path(self.file).name
        return f"state-{self.sha256[:12]}" if self.sha256 else "none"


RANDOM_WEIGHTS = WeightsRecord(name="none", file=None, sha256=None, licence="n/a")
# A module's own weights, not read from a file: ``sha256`` is its state dict's digest.
OWN_WEIGHTS_NAME = "module's own"


def own_weights(state_sha256: str) -> WeightsRecord:
    return WeightsRecord(name=OWN_WEIGHTS_NAME, file=None, sha256=state_sha256, licence="unknown")


RANDOM_WEIGHTS_WARNING = (
    "random weights: --weights none initialises the model randomly, so its numbers "
    "measure nothing about the model (they only show that the pipeline runs)"
)


# ------------------------------------------------------------------------- places


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``$TORCH_HOME/hub/checkpoints``.

    Computed as torch.hub.get_dir() does ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else
    ~/.cache/torch), without importing torch; once torch is loaded, torch.hub is asked,
    so a torch.hub.set_dir() is honoured.
    """
    if "torch" in sys.modules:
        return Path(sys.modules["torch"].hub.get_dir()) / "checkpoints"
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.path.expanduser(os.environ.get("TORCH_HOME", os.path.join(xdg, "torch")))
    return Path(home) / "hub" / "checkpoints"


def store_dir() -> Path:
    """aabench's own part of the cache: downloads kept by content, and the URL index."""
    return cache_dir() / "aabench"


def weights_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local mirror directory: the explicit one, else ``$AABENCH_WEIGHTS_DIR``."""
    chosen = explicit or os.environ.get(WEIGHTS_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise UserError(
            f"weights directory {printable(path)} does not exist or is not a directory: "
            f"create it, or fix --weights-dir / {WEIGHTS_DIR_ENV}"
        )
    return path


# ------------------------------------------------------------------- verification


def expected_hash_prefix(path: str | os.PathLike) -> str | None:
    match = _HASH_IN_NAME.search(Path(path).name)
    return match.group(1) if match else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verified_sha256(path: Path, hash_prefix: str | None) -> str:
    """The file's SHA-256, after checking it starts with ``hash_prefix`` (when given)."""
    check_is_checkpoint_file(path)
    with reading(path, "weights"):
        digest = sha256_of(path)
    if hash_prefix and not digest.startswith(hash_prefix):
        raise UserError(
            f"{printable(path)} is corrupt or tampered: its SHA-256 starts with {digest[:8]} "
            f"but its name says {hash_prefix}; delete it and download it again"
        )
    return digest


def check_is_checkpoint_file(path: Path) -> None:
    with reading(path, "weights"):
        exists, is_dir = path.exists(), path.is_dir()
        size = path.stat().st_size if exists and not is_dir else None
    if not exists:
        raise UserError(
            f"checkpoint {printable(path)} does not exist: check the path given to --weights"
        )
    if is_dir:
        raise UserError(
            f"checkpoint {printable(path)} is a directory: pass the checkpoint file inside it"
        )
    if size == 0:
        raise UserError(
            f"checkpoint {printable(path)} is empty (0 bytes), probably an interrupted copy or "
            "download: delete it and fetch it again"
        )


def _present(path: Path) -> bool:
    with reading(path, "weights"):
        return path.exists()


# ------------------------------------------------------------------------ formats


def format_of(head: bytes) -> str | None:
    """The checkpoint format of a file starting with ``head`` (its first bytes), or None.

    safetensors: an 8-byte little-endian header length, then the JSON header. torch.save:
    a zip archive, or (before PyTorch 1.6) a pickle stream (protocol 2 or more) or a tar.
    safetensors is tried first: a header length can start with the pickle marker 0x80.
    """
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= _SAFETENSORS_MAX_HEADER:
            return SAFETENSORS
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return TORCH_LEGACY
    if head[257:262] == b"ustar":
        return TORCH_LEGACY
    return None


def looks_like_markup(head: bytes) -> bool:
    """Whether ``head`` starts like an HTML or XML page (an error page, a login page)."""
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def checkpoint_format(path: Path) -> str | None:
    """The format of the checkpoint at ``path`` (see :func:`format_of`), read from its start."""
    with reading(path, "weights"), open(path, "rb") as handle:
        return format_of(handle.read(_HEAD))


# ---------------------------------------------------------------------- downloads


def local_copy(source: WeightsSource, mirror: Path | None = None) -> Path | None:
    """Where the file already is, mirror first, then the cache; None if nowhere."""
    cached = cache_dir() / source.file_name
    for candidate in ([mirror / source.file_name] if mirror else []) + [cached]:
        if _present(candidate):
            return candidate
    return None


def resolve_source(
    source: WeightsSource, mirror: Path | None = None, wanted_by: str | None = None
) -> tuple[Path, str]:
    """The local file for a known weights source and its SHA-256, downloading if needed.

    ``wanted_by``: the model name, for the `aabench weights fetch` hint when offline.
    """
    hash_prefix = expected_hash_prefix(source.file_name)
    found = local_copy(source, mirror)
    if found is not None:
        return found, verified_sha256(found, hash_prefix)
    cached = cache_dir() / source.file_name
    digest = download(
        source.url, cached, hash_prefix, licence=source.licence, mirror=mirror, wanted_by=wanted_by
    )
    return cached, digest


def temporary_beside(destination: Path) -> tuple[int, str]:
    """A new temporary file in ``destination``'s folder (made if needed), so the finished
    file can be renamed into place; a folder that cannot be written is a UserError."""
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=destination.parent, prefix=".download-")
    except OSError as error:
        raise _write_error(error, destination.parent, "weights") from error


def download(
    url: str,
    destination: Path,
    hash_prefix: str | None,
    licence: str | None = None,
    mirror: Path | None = None,
    wanted_by: str | None = None,
    announce: bool = True,
) -> str:
    """Download ``url`` to ``destination`` atomically, verifying it first.

    Returns the SHA-256. Nothing is left at ``destination`` unless the file is complete
    and verified. ``announce``: say on stderr what is downloaded (see :func:`_fetched`).
    """
    note = f" (licence: {licence})" if licence else ""
    with _fetched(
        url,
        destination,
        hash_prefix,
        ways_out=lambda error: _ways_out(destination, mirror, wanted_by, error),
        announcement=f"{url} -> {destination}{note}" if announce else None,
    ) as (temporary, digest, _):
        _move_into_place(temporary, destination)
    return digest


@contextlib.contextmanager
def _fetched(
    url: str,
    beside: Path,
    hash_prefix: str | None,
    ways_out: Callable[[BaseException], str],
    announcement: str | None,
) -> Iterator[tuple[Path, str, str]]:
    """Stream ``url`` into a temporary file next to ``beside``, hashing it, and check it:
    yields (the temporary file, its SHA-256, its format). The temporary file is gone
    afterwards unless the caller moved it into place.

    ``announcement`` ("URL -> where"): said on a terminal while it downloads; in a log,
    once it has succeeded, so that a failed download is the error's one line there.
    """
    handle, temporary = temporary_beside(beside)
    try:
        digest, head, size = hashlib.sha256(), b"", 0
        try:
            with _connected(url, ways_out) as response:
                _refuse_web_page_type(url, response)
                # Only once connected: offline, the error must be the one line printed.
                if announcement and _on_terminal():
                    print(f"downloading {announcement}", file=sys.stderr)
                for chunk in _chunks(response, url, ways_out):
                    head += chunk[: max(0, _HEAD - len(head))]
                    digest.update(chunk)
                    size += len(chunk)
                    _write_all(handle, chunk, beside.parent, url)
            _sync(handle, beside.parent, url)
        finally:
            os.close(handle)
        found_format = _check_download(url, head, size, digest.hexdigest(), hash_prefix)
        yield Path(temporary), digest.hexdigest(), found_format
        if announcement and not _on_terminal():
            print(f"downloaded {announcement}", file=sys.stderr)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _on_terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def _connected(url: str, ways_out: Callable[[BaseException], str]):
    try:
        response = urlopen(url, timeout=60)
    except (URLError, OSError, TimeoutError, ValueError) as error:
        raise DownloadError(url, error, ways_out(error)) from error
    with response:
        yield response


def _chunks(response, url: str, ways_out: Callable[[BaseException], str]) -> Iterator[bytes]:
    import http.client

    while True:
        try:
            chunk = response.read(_CHUNK)
        except (URLError, OSError, TimeoutError, http.client.HTTPException) as error:
            raise DownloadError(url, error, ways_out(error)) from error
        if not chunk:
            return
        yield chunk


def _write_all(handle: int, data: bytes, folder: Path, url: str) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(handle, view) :]
    except OSError as error:
        raise _write_error(error, folder, f"the download of {url}") from error


def _sync(handle: int, folder: Path, url: str) -> None:
    """On disk before it is renamed: a crash must not leave a final name on empty blocks."""
    try:
        os.fsync(handle)
    except OSError as error:
        raise _write_error(error, folder, f"the download of {url}") from error


def _move_into_place(temporary: Path, destination: Path) -> None:
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, destination)
    except OSError as error:
        raise _write_error(error, destination.parent, "weights") from error


def _write_error(error: OSError, folder: Path, what: str) -> UserError:
    """A failed write in ``folder`` as one line: a full disk says so, and where to go."""
    where = printable(folder)
    if error.errno in _DISK_FULL:
        return UserError(
            f"the disk is full: no space left on device for {what} in {where} (nothing was "
            f"kept); free space there, or {_elsewhere(folder)}"
        )
    return UserError(
        f"cannot write weights to {where} ({error.strerror or error}): pass a writable "
        "--weights-dir, or point TORCH_HOME at a writable place"
    )


def _elsewhere(folder: Path) -> str:
    torch_home = cache_dir().parent.parent
    if folder == torch_home or torch_home in folder.parents:
        return f"point TORCH_HOME at a disk with room (now {printable(torch_home)})"
    return "choose a --weights-dir on a disk with room"


def _refuse_web_page_type(url: str, response) -> None:
    headers = getattr(response, "headers", None)
    content_type = (headers.get("Content-Type") or "") if headers is not None else ""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in _WEB_PAGE_TYPES:
        raise _web_page(url, f"Content-Type {media_type}")


def _web_page(url: str, evidence: str) -> UserError:
    return UserError(
        f"{printable(url)} returned a web page, not a checkpoint ({evidence}): give the URL of "
        "the file itself (a direct download link, not the page about it); nothing was saved"
    )


def _check_download(url: str, head: bytes, size: int, digest: str, hash_prefix: str | None):
    """The format of a complete download, or a UserError saying why it is not kept."""
    if size == 0:
        raise UserError(
            f"{printable(url)} returned no data (0 bytes): check the URL; nothing was saved"
        )
    found = format_of(head)
    if found is None and looks_like_markup(head):
        raise _web_page(url, "its content is HTML")
    if hash_prefix and not digest.startswith(hash_prefix):
        raise UserError(
            f"the download of {printable(url)} is corrupt or tampered: its SHA-256 starts "
            f"with {digest[:8]}, expected {hash_prefix}; try again or use a mirror "
            f"(--weights-dir)"
        )
    if found is None:
        raise UserError(
            f"{printable(url)} did not return a checkpoint (its first bytes are neither "
            "torch.save's nor safetensors'): check the URL; nothing was saved"
        )
    return found


class DownloadError(UserError):
    """A download that did not complete: the URL, why, and what the user can do."""

    def __init__(self, url: str, error: BaseException, ways_out: str) -> None:
        self.url = url
        self.reason = printable(getattr(error, "reason", error))
        super().__init__(f"could not download {printable(url)} ({self.reason}): {ways_out}")


def _ways_out(
    destination: Path, mirror: Path | None, wanted_by: str | None, error: BaseException
) -> str:
    folders = [mirror, destination.parent] if mirror else [destination.parent]
    where = " or ".join(printable(folder) for folder in folders)
    yourself = (
        f"download it yourself and put {printable(destination.name)} in {where} (or a directory "
        f"given by --weights-dir / {WEIGHTS_DIR_ENV})"
    )
    if wanted_by is None:
        return f"{yourself}, or pass --weights PATH"
    bucket = (
        ", or use a mirror of the release bucket with --weights-url BASE"
        if isinstance(error, HTTPError)
        else ""
    )
    return (
        f"on a machine with network run `aabench weights fetch {wanted_by} --weights-dir "
        f"DIR` and bring DIR here (--weights-dir DIR), or {yourself}{bucket}, or pass "
        "--weights PATH for your own checkpoint, or --weights none to try the pipeline "
        "with random weights (measures nothing)"
    )


def copy_atomically(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` through a temporary file: complete or absent."""
    handle, temporary = temporary_beside(destination)
    os.close(handle)
    try:
        try:
            with reading(source, "weights"):
                shutil.copyfile(source, temporary)
        except OSError as error:
            raise _write_error(error, destination.parent, f"a copy of {source.name}") from error
        os.replace(temporary, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# ------------------------------------------------------------- --weights PATH|URL


def resolve_user_weights(spec: str, known_file_names: frozenset[str]) -> tuple[Path, str]:
    """A ``--weights PATH|URL`` argument: the local file and its SHA-256.

    A URL is downloaded into the cache (see :func:`resolve_user_url`). A local file's
    name is only taken as a hash claim when it is the name of a known release file:
    users' own names like ``model-20240101.pth`` are not hashes.
    """
    if urlparse(spec).scheme in ("http", "https"):
        return resolve_user_url(spec, known_file_names)
    path = Path(spec).expanduser()
    hash_prefix = expected_hash_prefix(path) if path.name in known_file_names else None
    return path, verified_sha256(path, hash_prefix)


def url_file_name(url: str) -> str | None:
    """The URL's file name, when it is a tame one (see ``_SAFE_FILE_NAME``), else None."""
    name = PurePosixPath(unquote(urlparse(url).path)).name
    return name if _SAFE_FILE_NAME.match(name) else None


def resolve_user_url(url: str, known_file_names: frozenset[str] = frozenset()) -> tuple[Path, str]:
    """The local file of a ``--weights URL`` and its SHA-256, downloading it if needed.

    The name of a known release file (``name-<hash prefix>.pth``, torch.hub's
    convention) is looked up, and downloaded, by that name in the cache, its content
    checked against the prefix. Any other URL — users' own names like
    ``model-20240101.pth`` are not hashes — is looked up in the URL index (the content it
    gave last time, checked against its SHA-256), else downloaded into the content store.
    """
    name = url_file_name(url)
    hash_prefix = expected_hash_prefix(name) if name in known_file_names else None
    if hash_prefix:
        named = cache_dir() / name
        if _present(named):
            return named, verified_sha256(named, hash_prefix)
        return named, download(url, named, hash_prefix)
    remembered = _remembered(url)
    if remembered is not None:
        return remembered
    return _download_into_store(url, name)


def _download_into_store(url: str, name: str | None) -> tuple[Path, str]:
    content = store_dir() / "sha256"
    with _fetched(
        url,
        content / "download",
        None,
        ways_out=lambda error: "download it yourself and pass --weights PATH",
        announcement=f"{url} -> {content}",
    ) as (temporary, digest, found_format):
        default = "checkpoint.safetensors" if found_format == SAFETENSORS else "checkpoint.pth"
        destination = content / digest / (name or default)
        _move_into_place(temporary, destination)
    _remember(url, destination, digest)
    return destination, digest


def _index_entry(url: str) -> Path:
    return store_dir() / "urls" / f"{hashlib.sha256(url.encode()).hexdigest()}.json"


def _remembered(url: str) -> tuple[Path, str] | None:
    """The file this URL gave last time and its SHA-256, if it is still intact."""
    entry = _index_entry(url)
    try:
        with reading(entry, "the weights cache's URL index"):
            recorded = json.loads(entry.read_text(encoding="utf-8"))
        digest, relative = recorded["sha256"], PurePosixPath(recorded["file"])
    except (UserError, ValueError, KeyError, TypeError):
        return None  # never recorded, or a damaged entry: download again
    if recorded.get("url") != url or relative.is_absolute() or ".." in relative.parts:
        return None
    path = store_dir() / relative
    if not path.is_file():
        return None
    with reading(path, "weights"):
        if sha256_of(path) != digest:
            return None  # damaged in the cache: download again, replacing it
    return path, digest


def _remember(url: str, path: Path, digest: str) -> None:
    entry = _index_entry(url)
    text = json.dumps(
        {"url": url, "sha256": digest, "file": path.relative_to(store_dir()).as_posix()}
    )
    handle, temporary = temporary_beside(entry)
    try:
        try:
            os.write(handle, text.encode("utf-8"))
            os.fsync(handle)
        except OSError as error:
            raise _write_error(error, entry.parent, "the weights cache's URL index") from error
        finally:
            os.close(handle)
        os.replace(temporary, entry)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


# ------------------------------------------------------------------------ reading


def read_state_dict(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely and return its plain, checked state dict.

    torch.save files: only tensors and plain containers are unpickled
    (``weights_only=True``); a file that needs code to load is refused, never executed.
    safetensors files (found by their header, whatever the name) hold only tensors.
    Accepted containers: a bare state dict, ``{'state_dict': ...}``, ``{'model': ...}``;
    ``module.`` (DataParallel) and ``features.module.`` (the reference training script's
    AlexNet/VGG) prefixes are removed. Keys must be strings, and every tensor must hold
    values (not the meta device) that are all finite.

    ``expected_sha256``: the digest recorded for the file; the bytes loaded are hashed
    and must match it, so the provenance names exactly what was loaded.
    """
    data = _checkpoint_bytes(path, expected_sha256)
    if format_of(data[:_HEAD]) == SAFETENSORS:
        loaded = _load_safetensors(data, path)
    else:
        loaded = _load_torch(data, path)
    state = _normalise_state_dict(_unwrap(loaded, path), path)
    check_values(state, path)
    return state


def _checkpoint_bytes(path: Path, expected_sha256: str | None) -> bytes:
    """The file's bytes, read once: what is hashed is what is loaded."""
    check_is_checkpoint_file(path)
    with reading(path, "weights"):
        data = path.read_bytes()
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise UserError(
                f"{printable(path)} changed after it was verified (its SHA-256 is now "
                f"{actual[:12]}, was {expected_sha256[:12]}): something rewrote it during the "
                "run; make sure nothing else writes it, and run again"
            )
    return data


def _load_torch(data: bytes, path: Path) -> object:
    import torch

    if format_of(data[:_HEAD]) == TORCH_ZIP and not zipfile.is_zipfile(io.BytesIO(data)):
        # torch reads an archive without its end as "negative seek value": say what it is.
        raise _unreadable(path, "zip archive without its end (central directory)", data)
    try:
        with warnings.catch_warnings():
            # Said on stderr before it fails: the one line explains that failure instead.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        intact = intact_pickle(data)
        if intact is not None:
            raise _refused(path, error, *intact) from error
        raise _unreadable(path, _reason(error), data) from error
    except Exception as error:
        # A corrupt or truncated file fails deep inside the unpickler with whatever
        # exception its bytes happen to trigger (KeyError, IndexError, EOFError, ...).
        raise _unreadable(path, _reason(error), data) from error


def _load_safetensors(data: bytes, path: Path) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except Exception as error:
        raise UserError(
            f"{printable(path)} is not a readable safetensors checkpoint ("
            f"{printable(first_line(error))}): the file is corrupt or truncated; fetch or save "
            "it again"
        ) from error


def intact_pickle(data: bytes) -> tuple[list[str], int] | None:
    """For a torch.save file whose pickle parses to its end: the classes and functions it
    names beyond torch's allowlist (those need code to load) and its pickle protocol.
    None when the pickle does not parse: a corrupt or truncated file, not a refused one."""
    from torch._weights_only_unpickler import _get_allowed_globals

    opcodes = _main_pickle_opcodes(data)
    if opcodes is None:
        return None
    allowed = _get_allowed_globals()
    named = [name for name in _globals_named(opcodes) if name not in allowed]
    protocol = next((arg for opcode, arg, _ in opcodes if opcode.name == "PROTO"), 0)
    return list(dict.fromkeys(named)), protocol


def _main_pickle_opcodes(data: bytes) -> list | None:
    """Every opcode of the pickle holding the checkpoint's object, if it parses to the end."""
    import pickletools

    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                member = next(n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl")
                return list(pickletools.genops(archive.read(member)))
        stream = io.BytesIO(data)
        # A legacy file: the magic number, the protocol version, system info, the object.
        magic = list(pickletools.genops(stream))
        if not any(arg == _LEGACY_MAGIC for _, arg, _ in magic):
            return None
        for _ in range(2):
            list(pickletools.genops(stream))
        return list(pickletools.genops(stream))
    except Exception:  # any way a damaged archive or pickle stream can fail to parse
        return None


def _globals_named(opcodes: list) -> Iterator[str]:
    """``module.name`` of each GLOBAL, and of each STACK_GLOBAL whose two strings were
    pushed (or fetched from the memo) right before it."""
    memo: dict[int, object] = {}
    pushed: list[object] = []
    for opcode, arg, _ in opcodes:
        name = opcode.name
        if name == "GLOBAL":
            yield _python3_name(*arg.split(" ", 1))
        elif name == "STACK_GLOBAL" and len(pushed) >= 2:
            module, attribute = pushed[-2:]
            if isinstance(module, str) and isinstance(attribute, str):
                yield f"{module}.{attribute}"
        if name == "MEMOIZE" and pushed:
            memo[len(memo)] = pushed[-1]
        elif name in ("PUT", "BINPUT", "LONG_BINPUT") and pushed:
            memo[arg] = pushed[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif "UNICODE" in name or "STRING" in name:
            pushed.append(arg)
        elif name != "FRAME":
            pushed.append(None)
        del pushed[:-2]


def _python3_name(module: str, name: str) -> str:
    """A protocol-2 pickle's Python 2 name (``__builtin__ set``) as Python 3 finds it."""
    from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING

    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    else:
        module = IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _refused(path: Path, error: Exception, objects: list[str], protocol: int) -> UserError:
    """An intact torch.save file that the weights-only loader refuses, and why."""
    if objects:
        return UserError(
            f"{printable(path)} holds Python objects ({_shown(objects)}), not only tensors: it "
            "needs arbitrary unpickling to load, which can run code, so it was refused on "
            "purpose (the file is not corrupt); in an environment you trust, load it and save "
            "a plain state dict with torch.save(model.state_dict(), path), or as safetensors, "
            "and pass that file"
        )
    return UserError(
        f"{printable(path)} is an intact torch.save file written with pickle protocol "
        f"{protocol}, which the safe loader cannot read ({printable(_torch_reason(error))}); "
        "aabench never uses arbitrary unpickling, which can run code, so it was refused on "
        "purpose: in an environment you trust, save it again with torch.save's default "
        "protocol (torch.save(model.state_dict(), path)) or as safetensors"
    )


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {_torch_reason(error)}"


def _unreadable(path: Path, reason: str, data: bytes) -> UserError:
    if looks_like_markup(data[:_HEAD]):
        return UserError(
            f"{printable(path)} is a web page (HTML), not a checkpoint: download the file "
            "itself (a direct download link), not the page about it"
        )
    return UserError(
        f"{printable(path)} is not a readable PyTorch checkpoint ({printable(reason)}): the "
        "file is corrupt or truncated, or was not written by torch.save or safetensors; "
        "fetch or save it again"
    )


def _torch_reason(error: BaseException) -> str:
    """The loader's own reason, its first sentence, without torch's advice around it (to
    load the file unsafely, or to allowlist its classes, which aabench never does)."""
    text = str(error)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = text.strip().splitlines()
    sentence = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    return sentence or "no reason given"


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _unwrap(loaded: object, path: Path) -> dict:
    for container_key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(container_key), dict):
            return loaded[container_key]
    if isinstance(loaded, dict):
        return loaded
    raise UserError(
        f"{printable(path)} holds a {type(loaded).__name__}, not a state dict: save the "
        "model's state_dict() (or a dict with a 'state_dict' or 'model' entry)"
    )


def _shown(items: list, limit: int = 3) -> str:
    return ", ".join(printable(item) for item in items[:limit]) + (
        ", ..." if len(items) > limit else ""
    )


def _normalise_state_dict(state: dict, path: Path) -> dict[str, torch.Tensor]:
    import torch

    not_strings = [key for key in state if not isinstance(key, str)]
    if not_strings:
        raise UserError(
            f"{printable(path)} is not a state dict: {len(not_strings)} keys are not names "
            f"({_shown([repr(key) for key in not_strings])}); a state dict maps parameter "
            "names to tensors: save the model's state_dict()"
        )
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise UserError(
            f"{printable(path)} is not a state dict: entries {_shown(not_tensors, 5)} are "
            "not tensors; save the model's state_dict()"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {key.replace("features.module.", "features.", 1): value for key, value in state.items()}


def check_values(state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Every tensor holds values (not the meta device) and they are all finite.

    A NaN or infinite weight (a diverged run, a damaged file) makes every prediction
    meaningless, typically class 0 for every image; BatchNorm's running statistics are
    checked like the parameters. One pass over the tensors, in place.
    """
    import torch

    first_bad, bad_tensors = None, 0
    for key, tensor in state.items():
        if tensor.is_meta:
            raise UserError(
                f"{printable(path)}: tensor {printable(key)} is on the meta device, so it has a "
                "shape but no values (the model was saved before its weights were "
                "materialised or loaded): save the state dict of a model with real weights"
            )
        can_be_non_finite = tensor.is_floating_point() or tensor.is_complex()
        if tensor.layout != torch.strided or not can_be_non_finite:
            continue  # integers and sparse layouts hold nothing non-finite
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad_tensors += 1
            if first_bad is None:
                first_bad = (key, tensor.numel() - int(finite.sum()), tensor.numel())
    if first_bad is not None:
        key, bad, total = first_bad
        others = f"; {bad_tensors} tensors in all" if bad_tensors > 1 else ""
        raise UserError(
            f"{printable(path)} holds non-finite weights: {printable(key)} has {bad} NaN or "
            f"infinite values of {total}{others}; every prediction would be meaningless: "
            "use a checkpoint from before training diverged, or fetch the file again"
        )


# ------------------------------------------------------------------------ loading


def checkpoint_filter_size(state: dict[str, torch.Tensor]) -> int | None:
    """The BlurPool filter size stored in a state dict's ``.filt`` buffers (None if none)."""
    sizes = {key: value.shape[-1] for key, value in state.items() if key.endswith(".filt")}
    if not sizes:
        return None
    distinct = set(sizes.values())
    if len(distinct) > 1:
        raise UserError(
            f"checkpoint mixes BlurPool filter sizes {sorted(distinct)}: aabench models use "
            "one filter size throughout; check the file"
        )
    return distinct.pop()


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load every key, or refuse with one line naming what does not fit."""
    expected = model.state_dict()
    # Checkpoints saved before PyTorch 0.4 (torchvision's own DenseNet files among them)
    # lack BatchNorm's num_batches_tracked; PyTorch fills it in when loading, so do we.
    missing = [
        key for key in expected if key not in state and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrongly shaped", wrong_shape),
    ):
        if items:
            problems.append(f"{len(items)} {label} keys ({_shown(items)})")
    if problems:
        raise UserError(
            f"checkpoint does not fit {what}: {'; '.join(problems)}; check that the "
            "checkpoint was trained for this model name"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint does not fit {what}: {whole_reason(error)}") from error


def whole_reason(error: BaseException) -> str:
    """An error's whole message as one line: torch spreads load_state_dict's reasons over
    several lines, and the first alone ("Error(s) in loading state_dict for X:") says
    nothing."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return printable(" ".join(lines) or type(error).__name__)
