"""What every error-catalogue test checks: one line, exit code 2, no traceback, and what
is left on disk. Shared by the catalogue's test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import GOLDFISH, TENCH, make_image_folder, solid

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = ("--device", "cpu", "--workers", "0", "--quiet")
TINY = ("--model", "resnet18_aa", "--weights", "none", *FAST)

# Root reads every file whatever its mode; without these two capabilities it is refused
# like any user, so "permission denied" can be tested in CI, which runs as root.
_NO_OVERRIDE = (
    "--bounding-set=-dac_override,-dac_read_search",
    "--inh-caps=-dac_override,-dac_read_search",
)


def user_error(result: tuple[int, str, str], *words: str) -> str:
    """Assert exit 2 with exactly one line on stderr holding every word; return it."""
    code, out, err = result
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err == lines[0] + "\n"
    line = lines[0]
    assert line.startswith("aabench: error: ")
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    assert out == ""
    return line


def files_under(root: Path) -> list[str]:
    """Every file under ``root`` (hidden temporaries too), relative, sorted."""
    if not root.exists():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in files_under(root)}


def tiny_folder(root: Path) -> Path:
    return make_image_folder(root, {TENCH: [solid(40, 90)], GOLDFISH: [solid(40, 200)]})


def unprivileged(*args: str, cwd: Path | None = None, env: dict | None = None):
    """Run ``aabench *args`` in a subprocess that cannot read what its mode forbids (a
    user, not root): returns (exit code, stdout, stderr)."""
    command = [sys.executable, "-m", "aabench", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop the read override")
        command = ["setpriv", *_NO_OVERRIDE, *command]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    return result.returncode, result.stdout, result.stderr
