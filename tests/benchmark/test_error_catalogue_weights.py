"""The error catalogue, second pass (issue 15), for weights: the download cache, the
checkpoint formats, and what a checkpoint may hold.

Every test runs the CLI as a user would, with only the transport faked (``urlopen`` in
:mod:`aabench.models.weights`) or, for a full disk, the one system call that reports it.
Each checks the exit code, the one line, no traceback, and what is left in the cache and
the output directory: nothing half-written, nothing unverified under a final name.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import io
import json
import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from aabench.models import weights
from tests.catalogue import FAST, files_under, tiny_folder, unprivileged, user_error

RELEASED_URL = (
    "https://antialiased-cnns.s3.us-east-2.amazonaws.com/weights_v0.1/"
    "resnet18_lpf4_finetune-8cc58f59.pth"
)
# A model small enough that every run here takes a fraction of a second. Its state dict
# has parameters and BatchNorm buffers: 0.weight, 0.bias, 0.running_mean,
# 0.running_var, 0.num_batches_tracked, 3.weight (1000 x 3), 3.bias (1000).
FACTORY = """
from torch import nn


def tiny():
    return nn.Sequential(
        nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000)
    )
"""
SMALL = ("--resize", "40", "--crop", "32")


class Served:
    """What ``urlopen`` returns: a readable body and its headers."""

    def __init__(self, body: bytes, content_type: str | None) -> None:
        self._body = io.BytesIO(body)
        self.headers = {"Content-Type": content_type} if content_type else {}

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc_info: object) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)


class Web:
    """Stands in for the network: serves what a test registered, nothing else."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pages: dict[str, tuple[bytes, str | None]] = {}
        self.online = True

    def serve(self, url: str, body: bytes, content_type: str | None = None) -> None:
        self.pages[url] = (body, content_type)

    def __call__(self, url: str, timeout: float | None = None) -> Served:
        self.calls.append(url)
        if not self.online:
            raise URLError("[Errno -3] Temporary failure in name resolution")
        body, content_type = self.pages[url]
        return Served(body, content_type)


@pytest.fixture
def web(monkeypatch) -> Web:
    fake = Web()
    monkeypatch.setattr(weights, "urlopen", fake)
    return fake


@pytest.fixture
def torch_home() -> Path:
    return Path(os.environ["TORCH_HOME"])


@pytest.fixture
def factory(tmp_path) -> str:
    path = tmp_path / "models.py"
    path.write_text(FACTORY)
    return f"python:{path}:tiny"


@pytest.fixture
def data(tmp_path) -> Path:
    return tiny_folder(tmp_path / "data")


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(
        torch.nn.BatchNorm2d(3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(3, 1000),
    )
    module[0].running_mean.uniform_(0, 1)  # differ from the default buffers too
    return module.state_dict()


def torch_bytes(obj: object, **options) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **options)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(cli, model: str, weights_spec: str, data: Path, out: Path, *extra: str):
    return cli(
        "run",
        "--model",
        model,
        "--weights",
        weights_spec,
        "--suite",
        "accuracy",
        "--data",
        str(data),
        *SMALL,
        *FAST,
        "--out",
        str(out),
        *extra,
    )


def provenance(out: Path) -> dict:
    return json.loads((out / "tiny" / "accuracy.json").read_text())


def store(torch_home: Path) -> Path:
    return torch_home / "hub" / "checkpoints" / "aabench"


def url_entry(url: str) -> str:
    return f"hub/checkpoints/aabench/urls/{sha256(url.encode())}.json"


# 1. --weights URL is kept by content: two URLs with one file name never share a file.


def test_url_weights_are_cached_by_content_and_work_offline(
    cli, web, torch_home, factory, data, tmp_path
):
    first, second = torch_bytes(tiny_state(1)), torch_bytes(tiny_state(2))
    one, two = "https://one.example/run/model.pth", "https://two.example/run/model.pth"
    web.serve(one, first, "application/octet-stream")
    web.serve(two, second)
    runs = []
    for url in (one, two, one):
        if len(runs) == 2:
            web.online = False  # the third run finds the first URL's file with no network
        out = tmp_path / f"runs{len(runs)}"
        code, _, err = run(cli, factory, url, data, out)
        assert code == 0, err
        runs.append(provenance(out)["weights"])

    assert web.calls == [one, two]
    expected = [(one, first), (two, second), (one, first)]
    for record, (url, content) in zip(runs, expected, strict=True):
        file = store(torch_home) / "sha256" / sha256(content) / "model.pth"
        assert record["url"] == url
        assert record["sha256"] == sha256(content)
        assert record["file"] == str(file)
        assert record["format"] == "torch.save"
        assert file.read_bytes() == content
    assert files_under(torch_home) == sorted(
        [
            f"hub/checkpoints/aabench/sha256/{sha256(first)}/model.pth",
            f"hub/checkpoints/aabench/sha256/{sha256(second)}/model.pth",
            url_entry(one),
            url_entry(two),
        ]
    )
    assert json.loads((torch_home / url_entry(two)).read_text()) == {
        "url": two,
        "sha256": sha256(second),
        "file": f"sha256/{sha256(second)}/model.pth",
    }


def test_a_damaged_cached_download_is_fetched_again(cli, web, torch_home, factory, data, tmp_path):
    content = torch_bytes(tiny_state(3))
    url = "https://host.example/model.pth"
    web.serve(url, content)
    code, _, err = run(cli, factory, url, data, tmp_path / "a")
    assert code == 0, err
    cached = store(torch_home) / "sha256" / sha256(content) / "model.pth"
    cached.write_bytes(content[:100])  # a disk error, a stray edit

    code, _, err = run(cli, factory, url, data, tmp_path / "b")
    assert code == 0, err
    assert web.calls == [url, url]
    assert cached.read_bytes() == content
    assert provenance(tmp_path / "b")["weights"]["sha256"] == sha256(content)


# 2. A URL that answers with a web page: refused, and nothing lands in the cache.


@pytest.mark.parametrize(
    ("url", "body", "content_type", "evidence"),
    [
        ("http://host.example/", b"<!DOCTYPE html><html></html>", "text/html", "Content-Type"),
        ("http://host.example", b"<html></html>", "text/html; charset=utf-8", "Content-Type"),
        (
            "https://host.example/files/model.pth",
            b"\n  <html><body>Please sign in</body></html>",
            "application/octet-stream",
            "its content is HTML",
        ),
    ],
    ids=["no-file-name", "no-path", "html-body"],
)
def test_a_web_page_is_refused_and_nothing_is_cached(
    cli, web, torch_home, factory, data, tmp_path, url, body, content_type, evidence
):
    web.serve(url, body, content_type)
    out = tmp_path / "runs"
    user_error(
        run(cli, factory, url, data, out),
        f"{url} returned a web page, not a checkpoint ({evidence}",
        "the file itself (a direct download link",
        "nothing was saved",
    )
    assert files_under(torch_home) == []
    assert files_under(out) == []

    # The same URL, now serving a checkpoint: the cache was left usable.
    content = torch_bytes(tiny_state())
    web.serve(url, content, "application/octet-stream")
    code, _, err = run(cli, factory, url, data, out)
    assert code == 0, err
    name = "model.pth" if url.endswith("model.pth") else "checkpoint.pth"
    assert files_under(store(torch_home) / "sha256") == [f"{sha256(content)}/{name}"]
    assert provenance(out)["weights"]["sha256"] == sha256(content)


# 3. A checkpoint that needs code to load is refused on purpose; a damaged one is not.


class Config(argparse.Namespace):
    pass


def _module(path: Path) -> tuple[str, ...]:
    module = torch.nn.Sequential(torch.nn.Linear(3, 2))
    path.write_bytes(torch_bytes(module))
    return ("holds Python objects (torch.nn.modules.container.Sequential",)


def _namespace_protocol_4(path: Path) -> tuple[str, ...]:
    checkpoint = {"state_dict": tiny_state(), "args": argparse.Namespace(lr=0.1)}
    path.write_bytes(torch_bytes(checkpoint, pickle_protocol=4))
    return ("holds Python objects (argparse.Namespace)",)


def _legacy_with_a_class(path: Path) -> tuple[str, ...]:
    checkpoint = {"state_dict": tiny_state(), "config": Config(lr=0.1)}
    path.write_bytes(torch_bytes(checkpoint, _use_new_zipfile_serialization=False))
    return (f"holds Python objects ({__name__}.Config)",)


CODE = ("refused on purpose", "not corrupt", "torch.save(model.state_dict(), path)", "safetensors")


@pytest.mark.parametrize(
    "make", [_module, _namespace_protocol_4, _legacy_with_a_class], ids=lambda f: f.__name__[1:]
)
def test_a_checkpoint_that_needs_code_is_refused_on_purpose(cli, factory, data, tmp_path, make):
    path = tmp_path / "checkpoint.pth"
    words = make(path)
    out = tmp_path / "runs"
    line = user_error(run(cli, factory, str(path), data, out), str(path), *words, *CODE)
    assert "weights_only" not in line and "fetch" not in line and "truncated" not in line
    assert files_under(out) == []


def test_an_intact_protocol_4_state_dict_is_refused_for_what_it_is(cli, factory, data, tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(torch_bytes(tiny_state(), pickle_protocol=4))
    out = tmp_path / "runs"
    line = user_error(
        run(cli, factory, str(path), data, out),
        f"{path} is an intact torch.save file written with pickle protocol 4",
        "safe loader cannot read (Unsupported operand 149)",
        "refused on purpose",
        "save it again with torch.save's default protocol",
    )
    assert "weights_only" not in line and "Python objects" not in line
    assert files_under(out) == []


def _truncated_zip(path: Path) -> tuple[str, ...]:
    content = torch_bytes(tiny_state())
    path.write_bytes(content[: len(content) // 2])
    return ("is not a readable PyTorch checkpoint (zip archive without its end",)


def _truncated_legacy(path: Path) -> tuple[str, ...]:
    content = torch_bytes(tiny_state(), _use_new_zipfile_serialization=False)
    path.write_bytes(content[:-20])
    return ("is not a readable PyTorch checkpoint", "unexpected EOF")


def _truncated_safetensors(path: Path) -> tuple[str, ...]:
    content = safetensors_bytes(dict(tiny_state()))
    path.write_bytes(content[:-20])
    return ("is not a readable safetensors checkpoint", "incomplete metadata")


@pytest.mark.parametrize(
    "make",
    [_truncated_zip, _truncated_legacy, _truncated_safetensors],
    ids=lambda f: f.__name__[1:],
)
def test_a_truncated_checkpoint_is_called_so(cli, factory, data, tmp_path, make):
    path = tmp_path / "checkpoint.pth"
    words = make(path)
    out = tmp_path / "runs"
    line = user_error(
        run(cli, factory, str(path), data, out),
        str(path),
        *words,
        "corrupt or truncated",
        "fetch or save it again",
    )
    assert "weights_only" not in line and "refused" not in line
    assert files_under(out) == []


# 4. safetensors checkpoints load like torch.save state dicts.


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("tiny.safetensors", ""), ("tiny.pth", ""), ("tiny.bin", "module.")],
    ids=["extension", "named-like-pth", "data-parallel-prefix"],
)
def test_safetensors_checkpoints_load_like_state_dicts(cli, factory, data, tmp_path, name, prefix):
    state = tiny_state(4)
    reference = tmp_path / "reference.pth"
    reference.write_bytes(torch_bytes(state))
    code, _, err = run(cli, factory, str(reference), data, tmp_path / "reference")
    assert code == 0, err

    path = tmp_path / name
    path.write_bytes(safetensors_bytes({f"{prefix}{k}": v for k, v in state.items()}))
    out = tmp_path / "runs"
    code, _, err = run(cli, factory, str(path), data, out)
    assert code == 0, err
    record = provenance(out)["weights"]
    assert record["format"] == "safetensors"
    assert record["sha256"] == sha256(path.read_bytes())
    assert record["file"] == str(path)
    assert provenance(tmp_path / "reference")["weights"]["format"] == "torch.save"
    # The same tensors give the same predictions, whatever the file format.
    samples = "tiny/accuracy.samples.csv.gz"
    assert (out / samples).read_bytes() != b""
    assert _predictions(out / samples) == _predictions(tmp_path / "reference" / samples)


def _predictions(path: Path) -> list:
    import pandas as pd

    return pd.read_csv(path).drop(columns=["run_id"], errors="ignore").values.tolist()


# 5, 7, 8. What a checkpoint may hold: named tensors with values, all finite.


def _meta(state: dict) -> dict:
    return {key: value.to("meta") for key, value in state.items()}


def _integer_keys(state: dict) -> dict:
    return dict(enumerate(state.values()))


def _nan_and_inf(state: dict) -> dict:
    state["3.bias"][[3, 5]] = torch.tensor([float("nan"), float("inf")])
    return state


def _all_nan(state: dict) -> dict:
    return {key: value.float().fill_(float("nan")) for key, value in state.items()}


def _nan_running_var(state: dict) -> dict:
    state["0.running_var"][1] = float("nan")
    return state


NOT_FINITE = "every prediction would be meaningless: use a checkpoint from before training "


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            _meta,
            ": tensor 0.weight is on the meta device, so it has a shape but no values (the "
            "model was saved before its weights were materialised or loaded): save the state "
            "dict of a model with real weights",
        ),
        (
            _integer_keys,
            " is not a state dict: 7 keys are not names (0, 1, 2, ...); a state dict maps "
            "parameter names to tensors: save the model's state_dict()",
        ),
        (
            _nan_and_inf,
            " holds non-finite weights: 3.bias has 2 NaN or infinite values of 1000; "
            f"{NOT_FINITE}diverged, or fetch the file again",
        ),
        (
            _all_nan,
            " holds non-finite weights: 0.weight has 3 NaN or infinite values of 3; 7 tensors "
            f"in all; {NOT_FINITE}diverged, or fetch the file again",
        ),
        (
            _nan_running_var,
            " holds non-finite weights: 0.running_var has 1 NaN or infinite values of 3; "
            f"{NOT_FINITE}diverged, or fetch the file again",
        ),
    ],
    ids=["meta", "integer-keys", "nan-and-inf", "all-nan", "nan-running-var"],
)
def test_a_checkpoint_must_hold_named_finite_tensors(cli, factory, data, tmp_path, make, reason):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(torch_bytes(make(dict(tiny_state()))))
    out = tmp_path / "runs"
    line = user_error(run(cli, factory, str(path), data, out))
    assert line == f"aabench: error: {path}{reason}"  # the whole reason, on one line
    assert files_under(out) == []


# 6. A full disk where the weights are cached: said so, and nothing partial kept.


@pytest.fixture
def full_disk(monkeypatch):
    """The disk fills up under downloads (their temporary files): fsync reports ENOSPC,
    as it does when the blocks written earlier cannot be allocated."""
    real_fsync = os.fsync
    failed = []

    def fsync(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".download-"):
            failed.append(fd)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(weights.os, "fsync", fsync)
    return failed


@pytest.mark.parametrize("which", ["released", "url", "fetch"])
def test_a_full_disk_says_so_and_keeps_nothing(
    cli, web, full_disk, torch_home, factory, data, tmp_path, which
):
    url = "https://host.example/model.pth"
    web.serve(url, torch_bytes(tiny_state()))
    web.serve(RELEASED_URL, b"PK\x03\x04 bytes that never reach the disk")
    out = tmp_path / "runs"
    cache = torch_home / "hub" / "checkpoints"
    if which == "released":
        result = cli("run", "--model", "resnet18_aa", "--suite", "accuracy", "--data", str(data),
                     *FAST, "--out", str(out))  # fmt: skip
        where, elsewhere = cache, "point TORCH_HOME at a disk with room"
    elif which == "url":
        result = run(cli, factory, url, data, out)
        where, elsewhere = store(torch_home) / "sha256", "point TORCH_HOME at a disk with room"
    else:
        where = tmp_path / "weights"
        result = cli("weights", "fetch", "resnet18_aa", "--weights-dir", str(where))
        elsewhere = "choose a --weights-dir on a disk with room"
    line = user_error(
        result,
        f"the disk is full: no space left on device for the download of {web.calls[-1]} in "
        f"{where} (nothing was kept); free space there, or {elsewhere}",
    )
    assert "could not download" not in line
    assert len(full_disk) == 1
    assert files_under(torch_home) == [] and files_under(tmp_path / "weights") == []
    assert files_under(out) == []


# 9. Weights the user may not read (CI runs as root: the read override is dropped).


@pytest.mark.parametrize("where", ["file", "folder", "cache"])
def test_unreadable_weights_are_one_line(tmp_path, torch_home, data, where):
    checkpoint = tmp_path / "locked" / "mine.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(torch_bytes(tiny_state()))
    model, spec, locked = "resnet18", str(checkpoint), checkpoint
    if where == "folder":
        locked = checkpoint.parent
    elif where == "cache":
        cached = torch_home / "hub" / "checkpoints" / "resnet18_lpf4_finetune-8cc58f59.pth"
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"PK\x03\x04")
        model, spec, locked, checkpoint = "resnet18_aa", None, cached, cached
    out = tmp_path / "runs"
    locked.chmod(0)
    try:
        weights_args = ("--weights", spec) if spec else ()
        result = unprivileged("run", "--model", model, *weights_args, "--suite", "accuracy",
                              "--data", str(data), *FAST, "--out", str(out))  # fmt: skip
    finally:
        locked.chmod(0o700)
    user_error(
        result,
        f"cannot read weights {checkpoint}: permission denied",
        "make it readable (chmod) or point at a copy you can read",
    )
    assert files_under(out) == []
