"""Shared fixtures for the model-zoo tests: an isolated torch.hub cache and a fake network.

No test may reach the network: ``network`` replaces the transport that
``aabench.models.weights`` downloads with, serves only what a test registered, and fails
the test on any other request.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aabench.models import weights as weights_module


class FakeResponse:
    """What ``urlopen`` returns: a context manager with ``read(n)``."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self._stream = io.BytesIO(data)
        self._fail_after = fail_after
        self.read_sizes: list[int] = []

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc_info: object) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        self.read_sizes.append(n)
        if self._fail_after is not None and self._stream.tell() >= self._fail_after:
            raise ConnectionResetError("connection reset by peer")
        return self._stream.read(n)


class FakeNetwork:
    """Stands in for ``urllib.request.urlopen`` in ``aabench.models.weights``."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._payloads: dict[str, tuple[bytes, int | None]] = {}
        self._error: BaseException | None = None

    def serve(self, url: str, data: bytes, fail_after: int | None = None) -> None:
        self._payloads[url] = (data, fail_after)

    def fail(self, error: BaseException) -> None:
        self._error = error

    def __call__(self, url: str, timeout: float | None = None) -> FakeResponse:
        self.calls.append(url)
        if self._error is not None:
            raise self._error
        if url not in self._payloads:
            raise AssertionError(f"unexpected network access to {url}")
        data, fail_after = self._payloads[url]
        return FakeResponse(data, fail_after)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch.hub's checkpoint cache, in a temporary TORCH_HOME; no mirror from the env."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("AABENCH_WEIGHTS_DIR", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> FakeNetwork:
    fake = FakeNetwork()
    monkeypatch.setattr(weights_module, "urlopen", fake)
    return fake
