"""Atomic writes: complete files or none, never a temporary left behind."""

from __future__ import annotations

import gzip
import json
import os

import pandas as pd
import pytest

from aabench.errors import UserError
from aabench.results.files import (
    json_writer,
    table_writer,
    write_atomic,
    write_json,
    write_table,
    write_together,
)


class Exploding(pd.DataFrame):
    """A table whose CSV writer fails half way, after writing part of the file."""

    def to_csv(self, path, **kwargs):
        with open(path, "w") as out:
            out.write("run_id,model\nhalf,")
        raise OSError("disk full")


def entries(directory):
    return sorted(p.name for p in directory.iterdir())


def test_write_table_writes_csv_without_index(tmp_path):
    table = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = tmp_path / "deep" / "er" / "t.csv"
    write_table(table, path)
    assert path.read_text() == "a,b\n1,x\n2,y\n"
    assert entries(path.parent) == ["t.csv"]


def test_write_table_gzips_a_gz_name(tmp_path):
    table = pd.DataFrame({"a": [1, 2]})
    path = tmp_path / "t.samples.csv.gz"
    write_table(table, path)
    assert gzip.decompress(path.read_bytes()) == b"a\n1\n2\n"
    pd.testing.assert_frame_equal(pd.read_csv(path), table)


def test_write_json_round_trips_with_str_fallback(tmp_path):
    path = tmp_path / "p.json"
    write_json({"a": 1, "path": tmp_path, "nested": {"b": [1, 2]}}, path)
    text = path.read_text()
    assert text.endswith("}\n")
    assert json.loads(text) == {"a": 1, "path": str(tmp_path), "nested": {"b": [1, 2]}}


def test_files_get_the_permissions_of_a_plain_open(tmp_path):
    umask = os.umask(0o022)
    try:
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    finally:
        os.umask(umask)
    assert (tmp_path / "t.csv").stat().st_mode & 0o777 == 0o644


def test_a_failing_table_write_leaves_nothing(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(UserError, match=r"cannot write .*disk full"):
        write_table(Exploding({"a": [1]}), path)
    assert entries(tmp_path) == []


def test_a_failing_table_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "t.csv"
    write_table(pd.DataFrame({"a": [1]}), path)
    with pytest.raises(UserError, match=r"cannot write .*disk full"):
        write_table(Exploding({"a": [2]}), path)
    assert path.read_text() == "a\n1\n"
    assert entries(tmp_path) == ["t.csv"]


def test_a_failing_json_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "p.json"
    write_json({"ok": True}, path)
    circular: dict = {"a": [1, 2, 3]}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json(circular, path)
    assert json.loads(path.read_text()) == {"ok": True}
    assert entries(tmp_path) == ["p.json"]


def test_a_failing_json_write_leaves_nothing(tmp_path):
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(circular, tmp_path / "p.json")
    assert entries(tmp_path) == []


def test_the_destination_only_appears_complete(tmp_path):
    path = tmp_path / "t.txt"
    seen = []

    def write(temporary: str) -> None:
        with open(temporary, "w") as out:
            out.write("partial")
            out.flush()
            seen.append((path.exists(), os.path.basename(temporary)))
            out.write(" and complete")

    write_atomic(path, write)
    assert path.read_text() == "partial and complete"
    exists, temporary = seen[0]
    assert exists is False
    assert temporary.startswith(".t.txt.") and temporary.endswith(".tmp")
    assert entries(tmp_path) == ["t.txt"]


def test_out_not_writable_is_a_user_error(cli, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "accuracy",
        "--out", str(blocker), "--quiet", "--workers", "0", "--limit", "1",
    )  # fmt: skip
    assert code == 2
    assert "cannot write" in err and "Traceback" not in err


def test_write_together_renames_only_when_every_file_is_written(tmp_path):
    first, second = tmp_path / "t.csv", tmp_path / "p.json"
    write_together(
        [(first, table_writer(pd.DataFrame({"a": [1]}), first)), (second, json_writer({"n": 1}))]
    )

    def disk_full(temporary: str) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match=r"cannot write .*p\.json .*No space left"):
        write_together(
            [(first, table_writer(pd.DataFrame({"a": [2]}), first)), (second, disk_full)]
        )
    assert first.read_text() == "a\n1\n"
    assert json.loads(second.read_text()) == {"n": 1}
    assert entries(tmp_path) == ["p.json", "t.csv"]


def test_check_writable_refuses_a_path_below_a_file_and_creates_nothing(tmp_path):
    from aabench.results.files import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"cannot write .*file is a file.*writable --out"):
        check_writable(blocker / "runs" / "model")
    check_writable(tmp_path / "new" / "model")  # creatable: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # and nothing made


def test_check_writable_refuses_a_directory_without_write_permission(tmp_path, monkeypatch):
    from aabench.results.files import check_writable

    # As root a chmod stops nothing: ask os.access instead.
    monkeypatch.setattr("aabench.results.files.os.access", lambda path, mode: False)
    with pytest.raises(UserError, match="no permission to write in"):
        check_writable(tmp_path / "runs")
