"""Finding, downloading, verifying and safely loading checkpoint files.

Files are looked up by name in a local mirror directory first (``--weights-dir`` or
``AABENCH_WEIGHTS_DIR``), then in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
and only then downloaded into that cache (through a temporary file, verified before it is
moved into place). A SHA-256 prefix in a file name (torch.hub's
``<stem>-<hash>.pth`` convention) is verified every time, for cached files too: the
released bucket has served broken files before, and a wrong file gives wrong numbers.

Nothing here imports torch until a checkpoint is read: finding, downloading and verifying
files is plain Python, so `run` can settle its weights before it pays for torch.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import urlopen

from aabench.errors import UserError

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR_ENV = "AABENCH_WEIGHTS_DIR"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")
_CHUNK = 1 << 20
# What torch's weights-only unpickler says when a file needs a non-allowlisted class.
_UNSAFE_GLOBAL = "Unsupported global"


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


def weights_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local mirror directory: the explicit one, else ``$AABENCH_WEIGHTS_DIR``."""
    chosen = explicit or os.environ.get(WEIGHTS_DIR_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise UserError(
            f"weights directory {path} does not exist or is not a directory: "
            f"create it, or fix --weights-dir / {WEIGHTS_DIR_ENV}"
        )
    return path


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
    digest = sha256_of(path)
    if hash_prefix and not digest.startswith(hash_prefix):
        raise UserError(
            f"{path} is corrupt or tampered: its SHA-256 starts with {digest[:8]} but its "
            f"name says {hash_prefix}; delete it and download it again"
        )
    return digest


def check_is_checkpoint_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: check the path given to --weights")
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory: pass the checkpoint file inside it")
    if path.stat().st_size == 0:
        raise UserError(
            f"checkpoint {path} is empty (0 bytes), probably an interrupted copy or download: "
            "delete it and fetch it again"
        )


def local_copy(source: WeightsSource, mirror: Path | None = None) -> Path | None:
    """Where the file already is, mirror first, then the cache; None if nowhere."""
    cached = cache_dir() / source.file_name
    for candidate in ([mirror / source.file_name] if mirror else []) + [cached]:
        if candidate.exists():
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
        raise UserError(
            f"cannot write weights to {destination.parent} ({error.strerror or error}): "
            "pass a writable --weights-dir, or point TORCH_HOME at a writable place"
        ) from error


def download(
    url: str,
    destination: Path,
    hash_prefix: str | None,
    licence: str | None = None,
    mirror: Path | None = None,
    wanted_by: str | None = None,
    announce: bool = True,
) -> str:
    """Download ``url`` to ``destination`` atomically, verifying the hash prefix first.

    Returns the SHA-256. Nothing is left at ``destination`` unless the file is complete
    and verified. ``announce``: say on stderr what is being downloaded, once connected.
    """
    note = f" (licence: {licence})" if licence else ""
    digest = hashlib.sha256()
    handle, temporary = temporary_beside(destination)
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urlopen(url, timeout=60) as response:
                    # Only once connected: offline, the error must be the one line printed.
                    if announce:
                        print(f"downloading {url} -> {destination}{note}", file=sys.stderr)
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (URLError, OSError, TimeoutError) as error:
                raise DownloadError(
                    url, error, _ways_out(destination, mirror, wanted_by, error)
                ) from error
        hexdigest = digest.hexdigest()
        if hash_prefix and not hexdigest.startswith(hash_prefix):
            raise UserError(
                f"the download of {url} is corrupt or tampered: its SHA-256 starts with "
                f"{hexdigest[:8]}, expected {hash_prefix}; try again or use a mirror "
                f"(--weights-dir)"
            )
        os.replace(temporary, destination)
        return hexdigest
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class DownloadError(UserError):
    """A download that did not complete: the URL, why, and what the user can do."""

    def __init__(self, url: str, error: BaseException, ways_out: str) -> None:
        self.url = url
        self.reason = str(getattr(error, "reason", error))
        super().__init__(f"could not download {url} ({self.reason}): {ways_out}")


def _ways_out(
    destination: Path, mirror: Path | None, wanted_by: str | None, error: BaseException
) -> str:
    where = f"{mirror} or {destination.parent}" if mirror else destination.parent
    yourself = (
        f"download it yourself and put {destination.name} in {where} (or a directory "
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


def resolve_user_weights(spec: str, known_file_names: frozenset[str]) -> tuple[Path, str]:
    """A ``--weights PATH|URL`` argument: the local file and its SHA-256.

    A URL is downloaded into the cache (hash prefix in its name verified, as torch.hub
    does). A local file's name is only taken as a hash claim when it is the name of a
    known release file: users' own names like ``model-20240101.pth`` are not hashes.
    """
    if urlparse(spec).scheme in ("http", "https"):
        file_name = Path(urlparse(spec).path).name
        cached = cache_dir() / file_name
        hash_prefix = expected_hash_prefix(file_name)
        if cached.exists():
            return cached, verified_sha256(cached, hash_prefix)
        return cached, download(spec, cached, hash_prefix)
    path = Path(spec).expanduser()
    hash_prefix = expected_hash_prefix(path) if path.name in known_file_names else None
    return path, verified_sha256(path, hash_prefix)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely and return its plain state dict.

    Only tensors and plain containers are unpickled (``weights_only=True``); a file that
    needs arbitrary code to load is refused, never executed. Accepted containers: a bare
    state dict, ``{'state_dict': ...}``, ``{'model': ...}``; ``module.`` (DataParallel) and
    ``features.module.`` (the reference training script's AlexNet/VGG) prefixes are removed.
    """
    import torch

    check_is_checkpoint_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _UNSAFE_GLOBAL in str(error):
            raise UserError(
                f"{path} needs arbitrary unpickling to load (it stores Python objects, not "
                "just tensors), which could run code, so it was refused; re-save it as a "
                "state dict with torch.save(model.state_dict(), path)"
            ) from error
        raise _unreadable(path, error) from error
    except Exception as error:
        # A corrupt or truncated file fails deep inside the unpickler with whatever
        # exception its bytes happen to trigger (KeyError, IndexError, EOFError, ...).
        raise _unreadable(path, error) from error
    return _normalise_state_dict(_unwrap(loaded, path), path)


def _unreadable(path: Path, error: Exception) -> UserError:
    return UserError(
        f"{path} is not a readable PyTorch checkpoint ({type(error).__name__}: "
        f"{first_line(error)}): the file is corrupt or truncated, or was not written by "
        "torch.save; fetch or save it again"
    )


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
        f"{path} holds a {type(loaded).__name__}, not a state dict: save the model's "
        "state_dict() (or a dict with a 'state_dict' or 'model' entry)"
    )


def _normalise_state_dict(state: dict, path: Path) -> dict[str, torch.Tensor]:
    import torch

    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise UserError(
            f"{path} is not a state dict: entries {', '.join(map(str, not_tensors[:5]))} are "
            "not tensors; save the model's state_dict()"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return {key.replace("features.module.", "features.", 1): value for key, value in state.items()}


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
            shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
            problems.append(f"{len(items)} {label} keys ({shown})")
    if problems:
        raise UserError(
            f"checkpoint does not fit {what}: {'; '.join(problems)}; check that the "
            "checkpoint was trained for this model name"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"checkpoint does not fit {what}: {first_line(error)}") from error
