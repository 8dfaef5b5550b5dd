"""The error catalogue, second pass (issue 15), for what the entry point itself does:
click's usage errors, hostile names on the terminal, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from aabench.checks import printable
from tests.catalogue import FAST, files_under, user_error


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "--model", "resnet18_aa"), ("Missing option '--suite'", "aabench run --help")),
        (("run", "--bogus"), ("No such option: --bogus", "aabench run --help")),
        (
            ("run", "--model", "m", "--suite", "shift", "--seed", "abc"),
            ("Invalid value for '--seed'", "aabench run --help"),
        ),
        (("nosuch",), ("No such command 'nosuch'", "aabench --help")),
        (("gate",), ("Missing option '--reference'", "aabench gate --help")),
    ],
    ids=["missing", "unknown-option", "not-an-integer", "unknown-command", "gate-missing"],
)
def test_usage_errors_are_one_line_with_exit_2(cli, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)  # `run` writes to ./runs by default: nothing may appear
    user_error(cli(*args), *words)
    assert files_under(tmp_path) == []


def test_names_with_newlines_and_escapes_reach_the_terminal_escaped(cli, tmp_path):
    hostile = tmp_path / "data\n\x1b[31mred\udcff"
    line = user_error(
        cli("run", "--model", "resnet18_aa", "--weights", "none", "--suite", "accuracy",
            "--data", str(hostile), *FAST, "--out", str(tmp_path / "runs")),
        "data\\n\\x1b[31mred\\xff",
    )  # fmt: skip
    assert "\x1b" not in line and "\udcff" not in line
    assert files_under(tmp_path) == []


def test_printable_escapes_exactly_the_unsafe_characters():
    assert printable("naïve 日本 ok") == "naïve 日本 ok"
    assert printable(os.fsdecode(b"a\xffb")) == "a\\xffb"
    assert printable("a\tb\rc\nd\x1b\x7f\u200b") == "a\\tb\\rc\\nd\\x1b\\x7f\\u200b"


def test_sigterm_stops_with_143_and_one_line(tmp_path):
    """A command busy in Python when SIGTERM arrives stops like Ctrl-C (its own code)."""
    code = (
        "import sys, time, typer\n"
        "from aabench.cli import app, main\n"
        "from aabench.cli.app import command\n"
        "@command('sleep-forever')\n"
        "def sleep_forever():\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "main(['sleep-forever'])\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "ready\n"
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.startswith("aabench: terminated (SIGTERM): outputs already written are kept")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
