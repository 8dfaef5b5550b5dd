"""Finding, downloading, verifying and safely loading checkpoint files.

Files are looked up by name in a local mirror directory first (``--weights-dir`` or
``AABENCH_WEIGHTS_DIR``), then in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``),
and only then downloaded into that cache. A SHA-256 prefix in a file name (torch.hub's
``<stem>-<hash>.pth`` convention) is verified every time, for cached files too: the
released bucket has served broken files before, and a wrong file gives wrong numbers.
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
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

import torch

from aabench.errors import UserError

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
    url: str | None = None

    @property
    def random(self) -> bool:
        return self.file is None

    @property
    def label(self) -> str:
        """Short form for tables: the file name, or "none" for random initialisation."""
        return Path(self.file).name if self.file else "none"


RANDOM_WEIGHTS = WeightsRecord(name="none", file=None, sha256=None, licence="n/a")


def cache_dir() -> Path:
    """torch.hub's checkpoint cache: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


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


def resolve_source(source: WeightsSource, mirror: Path | None = None) -> tuple[Path, str]:
    """The local file for a known weights source and its SHA-256, downloading if needed."""
    file_name = source.file_name
    hash_prefix = expected_hash_prefix(file_name)
    cached = cache_dir() / file_name
    for candidate in ([mirror / file_name] if mirror else []) + [cached]:
        if candidate.exists():
            return candidate, verified_sha256(candidate, hash_prefix)
    digest = download(source.url, cached, hash_prefix, licence=source.licence, mirror=mirror)
    return cached, digest


def download(
    url: str,
    destination: Path,
    hash_prefix: str | None,
    licence: str | None = None,
    mirror: Path | None = None,
) -> str:
    """Download ``url`` to ``destination`` atomically, verifying the hash prefix first.

    Returns the SHA-256. Nothing is left at ``destination`` unless the file is complete
    and verified.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    note = f" (licence: {licence})" if licence else ""
    digest = hashlib.sha256()
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=".download-")
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                with urlopen(url, timeout=60) as response:
                    # Only once connected: offline, the error must be the one line printed.
                    print(f"downloading {url} -> {destination}{note}", file=sys.stderr)
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (URLError, OSError, TimeoutError) as error:
                where = f"{mirror} or {destination.parent}" if mirror else destination.parent
                raise UserError(
                    f"could not download {url} ({getattr(error, 'reason', error)}): download "
                    f"it yourself and put {destination.name} in {where} (or a directory "
                    f"given by --weights-dir / {WEIGHTS_DIR_ENV}), or pass --weights PATH"
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
