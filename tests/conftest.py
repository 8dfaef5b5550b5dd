import pytest

from aabench.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process as a user would: returns (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        code = exited.value.code
        return (0 if code is None else code), captured.out, captured.err

    return invoke


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path_factory):
    """No test reaches the network or the user's torch.hub cache.

    Tests that exercise downloads replace the transport with a fake (see the `network`
    fixture of the model tests); anything else that tries to download fails loudly.
    """
    from aabench.models import weights

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to reach the network: {url}")

    monkeypatch.setattr(weights, "urlopen", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.delenv("AABENCH_WEIGHTS_DIR", raising=False)
