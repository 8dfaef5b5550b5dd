"""`aabench weights fetch|list`, the release-mirror override and `run`'s up-front weights
check, with the transport faked (no test reaches the network)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.error import HTTPError, URLError

import pytest

from aabench.models import released
from aabench.models import weights as weights_module
from aabench.models.weights import RANDOM_WEIGHTS, RANDOM_WEIGHTS_WARNING, WeightsRecord
from aabench.models.zoo import create_model
from aabench.runner import weights_provenance
from tests.benchmark.models.conftest import FakeNetwork

STEM = "resnet18_lpf4_finetune"
# Starts like a zip archive, as torch.save files do: a download must look like a checkpoint.
PAYLOAD = b"PK\x03\x04released weights, for the test"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
FILE = f"{STEM}-{DIGEST[:8]}.pth"
URL = released.BASE_URL + FILE
MIRROR_URL = "https://mirror.example/aa/"


@pytest.fixture
def network(monkeypatch) -> FakeNetwork:
    fake = FakeNetwork()
    monkeypatch.setattr(weights_module, "urlopen", fake)
    return fake


@pytest.fixture
def release(monkeypatch) -> None:
    """resnet18_aa's released file is PAYLOAD (its name carries PAYLOAD's hash)."""
    monkeypatch.setitem(released.RELEASED_FILES, STEM, FILE)
    monkeypatch.delenv("AABENCH_WEIGHTS_URL", raising=False)


@pytest.fixture
def cache() -> Path:
    return weights_module.cache_dir()


def everything_under(root: Path) -> list[str]:
    """Every file under ``root``, hidden temporaries too."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def one_error_line(result: tuple[int, str, str]) -> str:
    code, out, err = result
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aabench: error: ")
    return lines[0]


# ------------------------------------------------------------------------ fetch


def test_fetch_into_the_cache_writes_the_verified_file(cli, release, network, cache):
    network.serve(URL, PAYLOAD)
    code, out, err = cli("weights", "fetch", "resnet18_aa")
    assert code == 0, err
    assert out == f"{FILE}: fetched, verified (0.0 MB): {cache / FILE}\n"
    assert network.calls == [URL]
    assert everything_under(cache) == [FILE]
    assert (cache / FILE).read_bytes() == PAYLOAD

    code, out, _ = cli("weights", "fetch", "resnet18_aa")
    assert code == 0
    assert out == f"{FILE}: already present, verified: {cache / FILE}\n"
    assert network.calls == [URL]  # nothing downloaded the second time


def test_fetch_into_a_directory_creates_it(cli, release, network, tmp_path, cache):
    network.serve(URL, PAYLOAD)
    target = tmp_path / "weights"
    code, out, err = cli("weights", "fetch", "resnet18_aa", "--weights-dir", str(target))
    assert code == 0, err
    assert out.startswith(f"{FILE}: fetched, verified")
    assert everything_under(target) == [FILE]
    assert everything_under(cache) == []


def test_fetch_into_a_directory_that_cannot_be_made_is_one_line(cli, release, network, tmp_path):
    network.serve(URL, PAYLOAD)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out, err = cli("weights", "fetch", "resnet18_aa", "--weights-dir", str(blocker / "w"))
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert f"cannot write weights to {blocker / 'w'}" in line and "--weights-dir" in line
    assert "Traceback" not in err and blocker.read_text() == "not a folder"


def test_fetch_copies_a_verified_cached_file_instead_of_downloading(
    cli, release, network, tmp_path, cache
):
    cache.mkdir(parents=True)
    (cache / FILE).write_bytes(PAYLOAD)
    target = tmp_path / "weights"
    code, out, err = cli("weights", "fetch", "resnet18_aa", "--weights-dir", str(target))
    assert code == 0, err
    assert out == f"{FILE}: copied from the cache, verified: {target / FILE}\n"
    assert network.calls == []
    assert (target / FILE).read_bytes() == PAYLOAD


def test_fetch_refuses_a_wrong_hash_and_leaves_nothing(cli, release, network, cache):
    network.serve(URL, PAYLOAD + b"tampered")
    line = one_error_line(cli("weights", "fetch", "resnet18_aa"))
    assert line.startswith(f"aabench: error: {FILE}: failed: ")
    assert "corrupt or tampered" in line and DIGEST[:8] in line
    assert everything_under(cache) == []  # no file, no temporary


def test_fetch_replaces_a_corrupt_copy(cli, release, network, cache):
    cache.mkdir(parents=True)
    (cache / FILE).write_bytes(b"truncated")
    network.serve(URL, PAYLOAD)
    code, out, err = cli("weights", "fetch", "resnet18_aa")
    assert code == 0, err
    assert "replacing a corrupt copy" in out
    assert (cache / FILE).read_bytes() == PAYLOAD


def test_offline_fetch_fails_with_one_line_and_exit_2(cli, release, network, cache):
    network.fail(URLError("[Errno -3] Temporary failure in name resolution"))
    line = one_error_line(cli("weights", "fetch", "resnet18_aa"))
    assert line == (
        f"aabench: error: {FILE}: failed: could not download {URL} ([Errno -3] Temporary "
        "failure in name resolution); fetch it where there is network, or use a mirror of "
        "the bucket (--weights-url)"
    )
    assert everything_under(cache) == []


def test_fetch_reports_every_file_and_fails_if_any_did(cli, release, network, cache):
    # resnet18_aa's file is served; resnet18's (torchvision) is not: one line each.
    network.serve(URL, PAYLOAD)
    baseline_url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    network.serve(baseline_url, b"not the right bytes")
    code, out, err = cli("weights", "fetch", "resnet18_aa", "resnet18", "resnet18_aa")
    assert code == 2
    assert out.splitlines() == [f"{FILE}: fetched, verified (0.0 MB): {cache / FILE}"]
    assert len(err.splitlines()) == 1
    assert "resnet18-f37072fd.pth: failed: " in err and "corrupt or tampered" in err
    assert network.calls == [URL, baseline_url]  # a name given twice is fetched once


def test_fetch_of_a_family_selects_its_files(cli, network, monkeypatch):
    from aabench.cli import weights as weights_cli

    fetched = []

    def record(entry, target, base_url, from_cache):
        fetched.append(entry.source.file_name)
        return True, entry.source.file_name

    monkeypatch.setattr(weights_cli, "_fetch_one", record)
    assert cli("weights", "fetch", "torchvision")[0] == 0
    assert len(fetched) == 23 and all("lpf" not in name for name in fetched)
    fetched.clear()
    assert cli("weights", "fetch", "antialiased")[0] == 0
    assert sorted(fetched) == sorted(released.RELEASED_FILES.values())
    fetched.clear()
    assert cli("weights", "fetch", "all")[0] == 0
    assert len(fetched) == len(released.RELEASED_FILES) + 23
    assert network.calls == []


@pytest.mark.parametrize(
    ("name", "words"),
    [("nosuch", "unknown model 'nosuch'"), ("resnet152_aa3", "no released weights")],
)
def test_fetch_of_a_name_without_weights_is_refused_up_front(cli, network, name, words):
    line = one_error_line(cli("weights", "fetch", "resnet18_aa", name))
    assert words in line
    assert network.calls == []


# ------------------------------------------------------------- the mirror override


def test_weights_url_replaces_the_bucket_prefix(cli, release, network, cache):
    network.serve(MIRROR_URL + FILE, PAYLOAD)
    code, _, err = cli("weights", "fetch", "resnet18_aa", "--weights-url", MIRROR_URL)
    assert code == 0, err
    assert network.calls == [MIRROR_URL + FILE]


def test_weights_url_from_the_environment(cli, release, network, cache, monkeypatch):
    monkeypatch.setenv("AABENCH_WEIGHTS_URL", MIRROR_URL.rstrip("/"))  # slash added
    network.serve(MIRROR_URL + FILE, PAYLOAD)
    assert cli("weights", "fetch", "resnet18_aa")[0] == 0
    assert network.calls == [MIRROR_URL + FILE]


def test_weights_url_leaves_torchvision_urls_alone(cli, network, monkeypatch):
    monkeypatch.setenv("AABENCH_WEIGHTS_URL", MIRROR_URL)
    network.fail(URLError("offline"))
    cli("weights", "fetch", "resnet18")
    assert network.calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_a_malformed_weights_url_is_refused(cli, release, network):
    line = one_error_line(cli("weights", "fetch", "resnet18_aa", "--weights-url", "mirror"))
    assert "is not an http(s):// or file:// URL" in line
    assert network.calls == []


def test_the_mirror_is_recorded_with_the_weights(release, network, cache):
    network.serve(MIRROR_URL + FILE, PAYLOAD)
    loaded = create_model("resnet18_aa", weights_url=MIRROR_URL, build=False)
    assert loaded.weights.url == MIRROR_URL + FILE
    assert loaded.weights.weights_url == MIRROR_URL
    assert loaded.weights.sha256 == DIGEST
    assert not loaded.built
    provenance = weights_provenance(loaded.weights)
    assert provenance["weights_url"] == MIRROR_URL
    assert provenance["weights"]["url"] == MIRROR_URL + FILE
    assert (provenance["random_weights"], provenance["warnings"]) == (False, [])


def test_random_weights_are_flagged_in_provenance():
    provenance = weights_provenance(RANDOM_WEIGHTS)
    assert provenance["random_weights"] is True
    assert provenance["warnings"] == [RANDOM_WEIGHTS_WARNING]
    assert RANDOM_WEIGHTS_WARNING.startswith("random weights: ")
    assert "weights_url" not in provenance
    mine = WeightsRecord(name="user checkpoint", file="x.pth", sha256="0" * 64, licence="?")
    assert weights_provenance(mine)["random_weights"] is False


# ------------------------------------------------------------------------- list


def test_list_shows_where_each_file_is_and_whether_it_verifies(
    cli, release, network, tmp_path, cache
):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cache.mkdir(parents=True)
    (cache / FILE).write_bytes(PAYLOAD)
    (mirror / "resnet50_lpf4_finetune-cad66808.pth").write_bytes(b"not resnet50")
    code, out, err = cli("weights", "list", "--json", "--weights-dir", str(mirror))
    assert code == 0, err
    rows = {row["file"]: row for row in json.loads(out)}
    assert len(rows) == len(released.RELEASED_FILES) + 23
    assert rows[FILE] | {"url": None, "licence": None} == {
        "file": FILE,
        "models": ["resnet18_aa"],
        "family": "antialiased",
        "where": "cache",
        "path": str(cache / FILE),
        "bytes": len(PAYLOAD),
        "verified": "yes",
        "url": None,
        "licence": None,
    }
    bad = rows["resnet50_lpf4_finetune-cad66808.pth"]
    assert (bad["where"], bad["verified"], bad["bytes"]) == ("mirror", "no", 12)
    absent = rows["resnet18_lpf3-449351b9.pth"]
    assert (absent["where"], absent["path"], absent["verified"]) == (None, None, "not present")
    assert absent["models"] == ["resnet18_aa3"]
    assert rows["resnet18-f37072fd.pth"]["models"] == ["resnet18"]
    assert rows["resnet18-f37072fd.pth"]["family"] == "torchvision"
    assert sum(row["verified"] == "not present" for row in rows.values()) == len(rows) - 2
    assert network.calls == []


def test_list_table_renders(cli, network):
    code, out, _ = cli("weights", "list")
    assert code == 0
    assert "not present" in out


# ------------------------------------------------------------ run's up-front check


@pytest.mark.parametrize(
    "error", [URLError("[Errno -3] Temporary failure in name resolution"), "403"]
)
def test_run_without_weights_stops_first_with_the_three_ways_out(
    cli, release, network, cache, tmp_path, error
):
    if error == "403":
        error = HTTPError(URL, 403, "Forbidden", hdrs=None, fp=None)
    network.fail(error)
    out = tmp_path / "runs"
    result = cli(
        "run", "--model", "resnet18_aa", "--suite", "shift", "--data", str(tmp_path / "no"),
        "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet",
    )  # fmt: skip
    line = one_error_line(result)  # not the missing --data: weights come first
    assert line.startswith(f"aabench: error: could not download {URL} (")
    assert "aabench weights fetch resnet18_aa --weights-dir DIR" in line
    assert f"put {FILE} in {cache}" in line
    assert "--weights none" in line
    assert ("--weights-url" in line) is isinstance(error, HTTPError)
    assert not out.exists()
    assert everything_under(cache) == []
    assert network.calls == [URL]


def test_run_with_random_weights_warns_on_stderr_and_in_provenance(cli, network, tmp_path):
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "accuracy",
        "--limit", "1", "--device", "cpu", "--workers", "0", "--quiet", "--json",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    assert err.splitlines() == [f"aabench: warning: {RANDOM_WEIGHTS_WARNING}"]
    provenance = json.loads((tmp_path / "resnet18_aa" / "accuracy.json").read_text())
    assert provenance["random_weights"] is True
    assert provenance["warnings"] == [RANDOM_WEIGHTS_WARNING]
    assert network.calls == []
