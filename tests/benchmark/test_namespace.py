"""aabench installs one top-level name, so a user's own `benchmark.py`, `suites.py` or
`results/` in the working directory can never shadow it."""

import json
import subprocess
import sys

import pytest

SHADOWS = {
    "benchmark.py": "raise ImportError('the user benchmark.py was imported')\n",
    "suites.py": "raise ImportError('the user suites.py was imported')\n",
    "results/__init__.py": "raise ImportError('the user results package was imported')\n",
}


def aabench(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "aabench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def crowded(tmp_path):
    """A working directory holding modules named like the repository's folders."""
    for name, text in SHADOWS.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", ["benchmark", "suites", "results"])
def test_only_aabench_is_installed(tmp_path, name):
    found = subprocess.run(
        [sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec({name!r}))"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.strip() == "None"


def test_run_and_compare_from_a_directory_that_shadows_the_folders(crowded):
    listed = aabench("suites", "--json", cwd=crowded)
    assert listed.returncode == 0, listed.stderr
    assert "shift" in {suite["name"] for suite in json.loads(listed.stdout)}

    ran = aabench(
        "run", "--model", "resnet18", "--weights", "none", "--suite", "accuracy",
        "--limit", "2", "--device", "cpu", "--workers", "0", "--quiet", "--out", "runs",
        cwd=crowded,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    table = "runs/resnet18/accuracy.csv"
    compared = aabench("compare", table, table, "--json", cwd=crowded)
    assert compared.returncode == 0, compared.stderr
    assert {row["metric"] for row in json.loads(compared.stdout)} >= {"top1", "top5"}
