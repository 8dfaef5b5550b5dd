"""Finding, downloading, verifying and safely reading checkpoint files (no network)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn

from aabench.errors import UserError
from aabench.models.weights import (
    SAFETENSORS,
    TORCH_LEGACY,
    TORCH_ZIP,
    WeightsSource,
    cache_dir,
    check_values,
    checkpoint_filter_size,
    download,
    expected_hash_prefix,
    format_of,
    load_strict,
    read_state_dict,
    resolve_source,
    resolve_user_weights,
    store_dir,
    url_file_name,
    verified_sha256,
    weights_dir,
    whole_reason,
)

pytestmark = pytest.mark.usefixtures("cache", "network")

HOST = "https://example.invalid/weights/"


# --------------------------------------------------------------------------- helpers


def small_state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "bn1.weight": torch.rand(4, generator=generator),
        "bn1.bias": torch.randn(4, generator=generator),
        "bn1.running_mean": torch.randn(4, generator=generator),
        "bn1.running_var": torch.rand(4, generator=generator) + 0.5,
        "bn1.num_batches_tracked": torch.tensor(1234, dtype=torch.int64),
        "layer1.0.downsample.filt": torch.full((4, 1, 3, 3), 1.0 / 9),
        "fc.weight": torch.randn(10, 4, generator=generator),
        "fc.bias": torch.randn(10, generator=generator),
    }


def assert_same_state(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    # the test's premise: legacy files really are the old, non-zip format
    assert zipfile.is_zipfile(path) is (not legacy)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checkpoint_bytes(tmp_path: Path, state: dict | None = None) -> bytes:
    return save(state if state is not None else small_state(), tmp_path / "blob.pth").read_bytes()


def hashed_copy(blob: bytes, directory: Path, stem: str) -> Path:
    """Write ``blob`` as ``<stem>-<first 8 hex of its SHA-256>.pth`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}-{hashlib.sha256(blob).hexdigest()[:8]}.pth"
    path.write_bytes(blob)
    return path


def wrong_prefix(blob: bytes) -> str:
    """An 8-hex prefix that ``blob``'s SHA-256 does not start with."""
    digest = hashlib.sha256(blob).hexdigest()
    return "deadbeef" if not digest.startswith("deadbeef") else "0badf00d"


# ------------------------------------------------------------------- read_state_dict

TRAINING_SCRIPT_OPTIMIZER = {
    "state": {0: {"momentum_buffer": torch.ones(4, 3, 3, 3)}, 1: {"momentum_buffer": None}},
    "param_groups": [
        {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "params": [0, 1]}
    ],
}

CONTAINERS = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd},
    "model": lambda sd: {"model": sd},
    # the reference training script: torch.save({'epoch', 'arch', 'state_dict', ...})
    "training_script": lambda sd: {
        "epoch": 3,
        "arch": "resnet18",
        "state_dict": sd,
        "best_acc1": torch.tensor(71.25),
        "optimizer": TRAINING_SCRIPT_OPTIMIZER,
    },
    "data_parallel": lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    "data_parallel_bare": lambda sd: {f"module.{k}": v for k, v in sd.items()},
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("container", list(CONTAINERS))
def test_read_state_dict_accepts_every_container(tmp_path, container, legacy):
    state = small_state()
    path = save(CONTAINERS[container](state), tmp_path / "checkpoint.pth", legacy=legacy)
    assert_same_state(read_state_dict(path), state)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_state_dict_removes_features_module_prefix(tmp_path, legacy):
    # the reference script wraps only AlexNet's/VGG's .features in DataParallel
    original = {
        "features.0.weight": torch.randn(8, 3, 3, 3),
        "features.0.bias": torch.randn(8),
        "features.2.filt": torch.full((8, 1, 4, 4), 1 / 16),
        "classifier.1.weight": torch.randn(10, 8),
        "classifier.1.bias": torch.randn(10),
    }
    wrapped = {
        key.replace("features.", "features.module.", 1): value for key, value in original.items()
    }
    assert "features.module.0.weight" in wrapped and "classifier.1.weight" in wrapped
    path = save({"state_dict": wrapped, "epoch": 90, "arch": "alexnet"}, tmp_path / "a.pth", legacy)
    assert_same_state(read_state_dict(path), original)


def _write_marker(path: str) -> None:
    Path(path).write_text("code ran while unpickling")


class Payload:
    """Runs ``_write_marker`` when unpickled, like a malicious checkpoint would."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


@dataclass
class RunConfig:
    lr: float = 0.1
    arch: str = "resnet18"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("where", ["bare", "inside_container"])
def test_read_state_dict_refuses_code_and_never_runs_it(tmp_path, legacy, where):
    marker = tmp_path / "marker.txt"
    payload = Payload(marker)
    obj = payload if where == "bare" else {"state_dict": small_state(), "hook": payload}
    path = save(obj, tmp_path / "evil.pth", legacy=legacy)
    assert not marker.exists()

    with pytest.raises(UserError, match="unpickling") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)
    assert "refused" in str(caught.value)
    assert not marker.exists(), "the checkpoint's code ran during read_state_dict"

    # the payload is live: a plain unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran while unpickling"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_read_state_dict_refuses_pickled_dataclass(tmp_path, legacy):
    path = save({"state_dict": small_state(), "config": RunConfig()}, tmp_path / "c.pth", legacy)
    with pytest.raises(UserError, match="arbitrary unpickling"):
        read_state_dict(path)
    path = save(RunConfig(lr=0.5), tmp_path / "bare.pth", legacy)
    with pytest.raises(UserError, match="arbitrary unpickling"):
        read_state_dict(path)


def test_read_state_dict_refuses_containers_that_are_not_state_dicts(tmp_path):
    path = save([torch.zeros(2), torch.ones(2)], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds a list, not a state dict"):
        read_state_dict(path)

    path = save({"weight": torch.zeros(2), "epoch": 3, "note": "hello"}, tmp_path / "mixed.pth")
    with pytest.raises(UserError, match="entries epoch, note are not tensors"):
        read_state_dict(path)


def test_read_state_dict_zero_byte_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.touch()
    with pytest.raises(UserError, match=r"empty \(0 bytes\)") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_read_state_dict_directory(tmp_path):
    path = tmp_path / "checkpoints.pth"
    path.mkdir()
    with pytest.raises(UserError, match="is a directory") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_read_state_dict_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "model.pth"
    with pytest.raises(UserError, match="does not exist") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


def test_read_state_dict_truncated_checkpoint(tmp_path):
    blob = checkpoint_bytes(tmp_path)
    path = tmp_path / "truncated.pth"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint") as caught:
        read_state_dict(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "content",
    [
        # seeds picked for the different ways torch.load fails on 4 KiB of random bytes
        pytest.param(random.Random(195).randbytes(4096), id="random-195"),
        pytest.param(random.Random(0).randbytes(4096), id="random-0"),
        pytest.param(random.Random(2).randbytes(4096), id="random-2"),
        pytest.param(random.Random(20).randbytes(4096), id="random-20"),
        pytest.param(b"hello world\n", id="text"),
        pytest.param(b"PK\x03\x04" + bytes(100), id="broken-zip"),
    ],
)
def test_read_state_dict_garbage_is_a_clear_user_error(tmp_path, content):
    path = tmp_path / "garbage.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert str(path) in message
    assert "not a readable PyTorch checkpoint" in message, message


# ---------------------------------------------------------------- hash verification


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("resnet18-f37072fd.pth", "f37072fd"),
        ("resnet18_lpf4_finetune-8cc58f59.pth", "8cc58f59"),
        ("/some/dir/densenet121-a639ec97.pth", "a639ec97"),
        ("model-20240101.pth", "20240101"),  # looks like one; see resolve_user_weights
        ("model.pth", None),
        ("resnet18_lpf4_finetune.pth", None),
        ("resnet18-f37072.pth", None),  # shorter than 8
        ("resnet18-F37072FD.pth", None),  # torch.hub's hashes are lower case
    ],
)
def test_expected_hash_prefix(name, prefix):
    assert expected_hash_prefix(name) == prefix


def test_verified_sha256(tmp_path):
    path = save(small_state(), tmp_path / "a.pth")
    digest = sha256(path)
    assert verified_sha256(path, None) == digest
    assert verified_sha256(path, digest[:8]) == digest
    assert verified_sha256(path, digest) == digest
    bad = wrong_prefix(path.read_bytes())
    with pytest.raises(UserError, match="tampered") as caught:
        verified_sha256(path, bad)
    assert f"starts with {digest[:8]}" in str(caught.value)
    assert f"says {bad}" in str(caught.value)


def test_cache_dir_follows_torch_home(cache):
    assert cache_dir() == cache


@pytest.mark.parametrize(
    "env",
    [{"TORCH_HOME": "~/th"}, {"XDG_CACHE_HOME": "/xdg"}, {}],
    ids=["torch-home", "xdg", "default"],
)
def test_cache_dir_without_torch_is_torch_hubs(env, monkeypatch):
    # Computed without torch (for `run`'s up-front check) exactly as torch.hub does.
    import sys

    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected = Path(torch.hub.get_dir()) / "checkpoints"
    monkeypatch.delitem(sys.modules, "torch")
    assert cache_dir() == expected


def test_download_error_for_a_model_names_the_three_ways_out(tmp_path, network):
    network.fail(URLError("offline"))
    with pytest.raises(UserError) as caught:
        download(HOST + "tiny-00000000.pth", tmp_path / "tiny-00000000.pth", None, wanted_by="m")
    message = str(caught.value)
    assert message.startswith(f"could not download {HOST}tiny-00000000.pth (offline): ")
    assert "aabench weights fetch m --weights-dir DIR" in message
    assert f"put tiny-00000000.pth in {tmp_path}" in message
    assert "--weights none" in message
    assert "--weights-url" not in message  # only when the server answered (HTTP 403 ...)
    assert list(tmp_path.iterdir()) == []


def test_tampered_cached_file_is_refused(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    bad = wrong_prefix(blob)
    cache.mkdir(parents=True)
    (cache / f"tiny-{bad}.pth").write_bytes(blob)
    source = WeightsSource(name="tiny", url=f"{HOST}tiny-{bad}.pth", licence="test")
    with pytest.raises(UserError, match="corrupt or tampered") as caught:
        resolve_source(source)
    message = str(caught.value)
    assert str(cache / f"tiny-{bad}.pth") in message
    assert bad in message and hashlib.sha256(blob).hexdigest()[:8] in message
    assert network.calls == []


def test_verified_cached_file_is_used(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    cached = hashed_copy(blob, cache, "tiny")
    source = WeightsSource(name="tiny", url=HOST + cached.name, licence="test")
    assert resolve_source(source) == (cached, hashlib.sha256(blob).hexdigest())
    assert network.calls == []


def test_mirror_is_looked_up_before_the_cache(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    mirror = tmp_path / "mirror"
    in_mirror = hashed_copy(blob, mirror, "tiny")
    # the cache holds a broken file of the same name: it must not even be looked at
    cache.mkdir(parents=True)
    (cache / in_mirror.name).write_bytes(b"broken")
    source = WeightsSource(name="tiny", url=HOST + in_mirror.name, licence="test")
    assert resolve_source(source, mirror) == (in_mirror, hashlib.sha256(blob).hexdigest())
    assert network.calls == []


def test_mirror_without_the_file_falls_back_to_the_cache(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cached = hashed_copy(blob, cache, "tiny")
    source = WeightsSource(name="tiny", url=HOST + cached.name, licence="test")
    assert resolve_source(source, mirror) == (cached, hashlib.sha256(blob).hexdigest())
    assert network.calls == []


def test_tampered_file_in_mirror_is_refused(tmp_path, cache):
    blob = checkpoint_bytes(tmp_path)
    bad = wrong_prefix(blob)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / f"tiny-{bad}.pth").write_bytes(blob)
    source = WeightsSource(name="tiny", url=f"{HOST}tiny-{bad}.pth", licence="test")
    with pytest.raises(UserError, match="tampered") as caught:
        resolve_source(source, mirror)
    assert str(mirror / f"tiny-{bad}.pth") in str(caught.value)


def test_weights_dir(tmp_path, monkeypatch):
    assert weights_dir() is None
    assert weights_dir(tmp_path) == tmp_path
    monkeypatch.setenv("AABENCH_WEIGHTS_DIR", str(tmp_path))
    assert weights_dir() == tmp_path
    missing = tmp_path / "no-such-dir"
    with pytest.raises(UserError, match="--weights-dir") as caught:
        weights_dir(missing)
    assert str(missing) in str(caught.value)
    assert "AABENCH_WEIGHTS_DIR" in str(caught.value)


# ------------------------------------------------------------------------- download


def listing(directory: Path) -> list[str]:
    """Every entry, hidden ones (temporary downloads) included."""
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_download_into_cache(tmp_path, cache, network):
    # over 1 MiB, so the download is read in several chunks
    state = {"big.weight": torch.arange(700_000, dtype=torch.float32)}
    blob = checkpoint_bytes(tmp_path, state)
    assert len(blob) > 2 * (1 << 20)
    digest = hashlib.sha256(blob).hexdigest()
    name = f"big-{digest[:8]}.pth"
    network.serve(HOST + name, blob)
    source = WeightsSource(name="big", url=HOST + name, licence="test licence")

    assert resolve_source(source) == (cache / name, digest)
    assert network.calls == [HOST + name]
    assert listing(cache) == [name]
    assert (cache / name).read_bytes() == blob
    assert_same_state(read_state_dict(cache / name), state)

    # the second time it comes from the cache
    assert resolve_source(source) == (cache / name, digest)
    assert network.calls == [HOST + name]


def test_download_with_wrong_hash_leaves_nothing(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    url = f"{HOST}tiny-{wrong_prefix(blob)}.pth"
    network.serve(url, blob)
    source = WeightsSource(name="tiny", url=url, licence="test")
    with pytest.raises(UserError, match="corrupt or tampered") as caught:
        resolve_source(source)
    assert url in str(caught.value)
    assert network.calls == [url]
    assert cache.is_dir()
    assert listing(cache) == []


def test_download_failure_names_url_cache_and_option(tmp_path, cache, network):
    network.fail(URLError("Temporary failure in name resolution"))
    url = f"{HOST}tiny-0123abcd.pth"
    source = WeightsSource(name="tiny", url=url, licence="test")
    with pytest.raises(UserError, match="could not download") as caught:
        resolve_source(source)
    message = str(caught.value)
    assert url in message
    assert str(cache) in message
    assert "tiny-0123abcd.pth" in message
    assert "--weights-dir" in message
    assert "Temporary failure in name resolution" in message
    assert network.calls == [url]
    assert listing(cache) == []


def test_download_failure_names_the_mirror_too(tmp_path, cache, network):
    network.fail(URLError("offline"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    source = WeightsSource(name="tiny", url=f"{HOST}tiny-0123abcd.pth", licence="test")
    with pytest.raises(UserError, match="could not download") as caught:
        resolve_source(source, mirror)
    assert str(mirror) in str(caught.value)
    assert str(cache) in str(caught.value)
    assert listing(mirror) == [] and listing(cache) == []


def test_download_interrupted_midway_leaves_nothing(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path, {"w": torch.zeros(600_000)})
    digest = hashlib.sha256(blob).hexdigest()
    url = f"{HOST}w-{digest[:8]}.pth"
    network.serve(url, blob, fail_after=1 << 20)
    with pytest.raises(UserError, match="connection reset") as caught:
        download(url, cache / f"w-{digest[:8]}.pth", digest[:8])
    assert url in str(caught.value)
    assert listing(cache) == []


def test_download_without_hash_claim(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    url = HOST + "plain.pth"
    network.serve(url, blob)
    destination = cache / "plain.pth"
    assert download(url, destination, None) == hashlib.sha256(blob).hexdigest()
    assert destination.read_bytes() == blob
    assert listing(cache) == ["plain.pth"]


# -------------------------------------------------------------- resolve_user_weights


def test_download_of_nothing_or_of_something_else_is_not_kept(tmp_path, cache, network):
    network.serve(HOST + "empty.pth", b"")
    network.serve(HOST + "notes.pth", b"these are not weights")
    with pytest.raises(UserError, match=r"returned no data \(0 bytes\)"):
        download(HOST + "empty.pth", cache / "empty.pth", None)
    with pytest.raises(UserError) as caught:
        download(HOST + "notes.pth", cache / "notes.pth", None)
    assert str(caught.value) == (
        f"{HOST}notes.pth did not return a checkpoint (its first bytes are neither "
        "torch.save's nor safetensors'): check the URL; nothing was saved"
    )
    assert listing(cache) == []


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://h.example/runs/model.pth", "model.pth"),
        ("https://h.example/runs/model.pth?sig=abc#frag", "model.pth"),
        ("https://h.example/runs/my%20model.pth", None),  # a space: not a tame name
        ("https://h.example/", None),
        ("https://h.example", None),
        ("https://h.example/.hidden.pth", None),
        ("https://h.example/a/%2e%2e", None),
        ("https://h.example/x%0a%1b[31m.pth", None),
    ],
)
def test_url_file_name_takes_only_tame_names(url, name):
    assert url_file_name(url) == name


def test_a_damaged_url_index_entry_means_download_again(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    digest = hashlib.sha256(blob).hexdigest()
    url = HOST + "plain.pth"
    network.serve(url, blob)
    path, found = resolve_user_weights(url, frozenset())
    assert (path, found) == (store_dir() / "sha256" / digest / "plain.pth", digest)
    (entry,) = (store_dir() / "urls").iterdir()
    outside = {"url": url, "sha256": digest, "file": "../../x"}
    for damage in ("{not json", json.dumps(outside)):
        entry.write_text(damage)
        assert resolve_user_weights(url, frozenset()) == (path, digest)
    assert network.calls == [url, url, url]
    assert json.loads(entry.read_text())["file"] == f"sha256/{digest}/plain.pth"
    assert listing(store_dir() / "sha256") == [digest]


def test_a_url_keeps_the_content_it_gave_last(tmp_path, cache, network):
    first = checkpoint_bytes(tmp_path, {"w": torch.zeros(3)})
    second = checkpoint_bytes(tmp_path, {"w": torch.ones(3)})
    url = HOST + "latest.pth"
    network.serve(url, first)
    assert resolve_user_weights(url, frozenset())[1] == hashlib.sha256(first).hexdigest()
    network.serve(url, second)  # the server's file changed: the cache answers, as torch.hub's
    assert resolve_user_weights(url, frozenset())[1] == hashlib.sha256(first).hexdigest()
    assert network.calls == [url]


def test_read_state_dict_refuses_bytes_other_than_those_verified(tmp_path):
    path = save(small_state(), tmp_path / "a.pth")
    digest = sha256(path)
    assert_same_state(read_state_dict(path, digest), small_state())
    save({"other": torch.zeros(1)}, path)
    with pytest.raises(UserError) as caught:
        read_state_dict(path, digest)
    assert f"changed after it was verified (its SHA-256 is now {sha256(path)[:12]}, was " in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"PK\x03\x04" + bytes(20), TORCH_ZIP),
        (b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", TORCH_LEGACY),
        # a safetensors header of 640 bytes starts with 0x80 0x02, like a pickle
        ((640).to_bytes(8, "little") + b'{"w":{}}', SAFETENSORS),
        ((84).to_bytes(8, "little") + b'{"__metadata__":{}}', SAFETENSORS),
        (bytes(257) + b"ustar" + bytes(250), TORCH_LEGACY),
        (b"<!DOCTYPE html>", None),
        ((0).to_bytes(8, "little") + b"{}", None),
        (b"", None),
    ],
    ids=["zip", "pickle", "safetensors-0x80", "safetensors", "tar", "html", "no-header", "empty"],
)
def test_format_of(head, expected):
    assert format_of(head) == expected


def test_check_values_counts_non_finite_values_and_skips_integers():
    state = {
        "steps": torch.tensor(2**62, dtype=torch.int64),
        "w": torch.tensor([1.0, float("-inf"), float("nan"), 0.0]),
        "half": torch.tensor([float("nan")], dtype=torch.float16),
    }
    with pytest.raises(UserError) as caught:
        check_values(state, "ckpt.pth")
    assert str(caught.value).startswith(
        "ckpt.pth holds non-finite weights: w has 2 NaN or infinite values of 4; 2 tensors in all;"
    )
    check_values({"steps": state["steps"], "ok": torch.zeros(3)}, "ckpt.pth")


def test_whole_reason_keeps_every_line_of_a_multi_line_error():
    error = RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for fc.")
    assert whole_reason(error) == "Error(s) in loading state_dict for Net: size mismatch for fc."


def test_user_url_is_kept_by_content_whatever_its_name_looks_like(tmp_path, cache, network):
    """A user's name like ``model-20240101.pth`` is not a hash claim: the file is kept
    in the content store and not downloaded again."""
    blob = checkpoint_bytes(tmp_path)
    digest = hashlib.sha256(blob).hexdigest()
    url = f"{HOST}model-20240101.pth"
    network.serve(url, blob)
    stored = cache / "aabench" / "sha256" / digest / "model-20240101.pth"
    assert resolve_user_weights(url, frozenset()) == (stored, digest)
    assert network.calls == [url]
    assert resolve_user_weights(url, frozenset()) == (stored, digest)
    assert network.calls == [url]


def test_a_release_file_name_by_url_is_checked_against_its_hash(tmp_path, cache, network):
    blob = checkpoint_bytes(tmp_path)
    name = f"resnet18_lpf4_finetune-{wrong_prefix(blob)}.pth"
    url = f"{HOST}{name}"
    network.serve(url, blob)
    with pytest.raises(UserError, match="tampered"):
        resolve_user_weights(url, frozenset({name}))
    assert listing(cache) == []


def test_user_path_with_date_in_name_is_not_a_hash_claim(tmp_path, network):
    blob = checkpoint_bytes(tmp_path)
    assert not hashlib.sha256(blob).hexdigest().startswith("20240101")
    path = tmp_path / "model-20240101.pth"
    path.write_bytes(blob)
    known = frozenset({"resnet18_lpf4_finetune-8cc58f59.pth"})
    assert resolve_user_weights(str(path), known) == (path, hashlib.sha256(blob).hexdigest())
    assert network.calls == []


def test_user_path_named_like_a_release_is_verified(tmp_path):
    blob = checkpoint_bytes(tmp_path)
    name = f"resnet18_lpf4_finetune-{wrong_prefix(blob)}.pth"
    path = tmp_path / name
    path.write_bytes(blob)
    with pytest.raises(UserError, match="tampered"):
        resolve_user_weights(str(path), frozenset({name}))


def test_user_path_that_does_not_exist(tmp_path):
    path = tmp_path / "typo.pth"
    with pytest.raises(UserError, match=r"does not exist.*--weights") as caught:
        resolve_user_weights(str(path), frozenset())
    assert str(path) in str(caught.value)


# ------------------------------------------------------------ checkpoint_filter_size


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_checkpoint_filter_size(k):
    state = {
        "conv1.weight": torch.zeros(8, 3, 7, 7),
        "maxpool.1.filt": torch.zeros(8, 1, k, k),
        "layer2.0.conv1.1.filt": torch.zeros(16, 1, k, k),
    }
    assert checkpoint_filter_size(state) == k


def test_checkpoint_filter_size_without_filters():
    assert checkpoint_filter_size({"conv1.weight": torch.zeros(8, 3, 7, 7)}) is None
    assert checkpoint_filter_size({}) is None


def test_checkpoint_filter_size_mixed():
    state = {"a.filt": torch.zeros(8, 1, 3, 3), "b.filt": torch.zeros(8, 1, 5, 5)}
    with pytest.raises(UserError, match=re.escape("mixes BlurPool filter sizes [3, 5]")):
        checkpoint_filter_size(state)


# ----------------------------------------------------------------------- load_strict


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_load_strict_loads_a_fitting_state():
    model = tiny_model()
    state = {
        key: torch.rand_like(value.float()).to(value.dtype)
        for key, value in snapshot(model).items()
    }
    load_strict(model, state, "tiny")
    assert_same_state(model.state_dict(), state)


def test_load_strict_missing_keys():
    model = tiny_model()
    before = snapshot(model)
    state = dict(before)
    for key in ("0.weight", "0.bias", "1.weight", "3.bias"):
        del state[key]
    with pytest.raises(UserError) as caught:
        load_strict(model, state, "tiny")
    message = str(caught.value)
    assert message.startswith("checkpoint does not fit tiny: ")
    assert "4 missing keys (0.weight, 0.bias, 1.weight, ...)" in message
    assert "unexpected" not in message and "wrongly shaped" not in message
    assert_same_state(model.state_dict(), before)


def test_load_strict_unexpected_keys():
    model = tiny_model()
    before = snapshot(model)
    state = {**before, "4.weight": torch.zeros(2), "head.bias": torch.zeros(2)}
    with pytest.raises(UserError, match=re.escape("2 unexpected keys (4.weight, head.bias)")):
        load_strict(model, state, "tiny")
    assert_same_state(model.state_dict(), before)


def test_load_strict_wrong_shapes():
    model = tiny_model()
    before = snapshot(model)
    state = {**before, "0.weight": torch.zeros(5, 3, 3, 3), "3.weight": torch.zeros(2, 5)}
    with pytest.raises(UserError) as caught:
        load_strict(model, state, "tiny")
    assert (
        "2 wrongly shaped keys (0.weight (5, 3, 3, 3) != (4, 3, 3, 3), 3.weight (2, 5) != (2, 4))"
        in str(caught.value)
    )
    assert_same_state(model.state_dict(), before)


def test_load_strict_reports_every_kind_of_problem_at_once():
    model = tiny_model()
    state = snapshot(model)
    del state["1.running_var"]
    state["extra"] = torch.zeros(1)
    state["3.bias"] = torch.zeros(3)
    with pytest.raises(UserError) as caught:
        load_strict(model, state, "tiny")
    message = str(caught.value)
    assert "1 missing keys (1.running_var)" in message
    assert "1 unexpected keys (extra)" in message
    assert "1 wrongly shaped keys (3.bias (3,) != (2,))" in message
