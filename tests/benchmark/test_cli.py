import json

import pytest

from aabench import __version__
from aabench.cli import main
from aabench.errors import UserError

SUBCOMMANDS = [
    "run", "compare", "gate", "models", "suites", "weights", "make-imagenet-c", "prepare-val",
    "bench",
]  # fmt: skip


def test_help_lists_every_subcommand(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for name in SUBCOMMANDS:
        assert name in out


def test_version(cli):
    assert cli("--version")[:2] == (0, f"aabench {__version__}\n")


def test_unknown_command_is_a_usage_error(cli):
    code, _, err = cli("frobnicate")
    assert code == 2
    assert "No such command" in err
    assert "Traceback" not in err


def test_a_user_error_is_one_line_with_exit_2(cli):
    code, out, err = cli("make-imagenet-c", "--out", "somewhere")
    assert code == 2
    assert err.strip().splitlines() == [
        "aabench: error: --data is required: pass the ImageNet val folder (<root>/<wnid>/<image>)"
    ]
    assert out == ""


def test_debug_lets_the_exception_through():
    # Without --debug the same call exits 2 with one line (above); with it, the
    # exception propagates so the interpreter prints the full traceback.
    with pytest.raises(UserError, match="--data is required"):
        main(["--debug", "make-imagenet-c"])


def test_models_json_lists_every_name_with_weights_and_licence(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, out, _ = cli("models", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(out)}
    assert len(rows) == 23 * 9
    aa = rows["resnet50_aa"]
    assert (aa["arch"], aa["filter_size"], aa["weights"]) == (
        "resnet50",
        4,
        "resnet50_lpf4_finetune-cad66808.pth",
    )
    assert aa["licence"].startswith("CC BY-NC-SA 4.0")
    assert aa["cached"] is False
    assert rows["resnet50"]["licence"].startswith("BSD")
    assert rows["resnet50_aa3"]["weights"] == "resnet50_lpf3-a4e868d2.pth"
    assert rows["resnet152_aa3"]["weights"] is None
    assert rows["vgg16_aa"]["preprocessing"]["crop_size"] == 224


def test_models_marks_cached_files(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "resnet18_lpf4_finetune-8cc58f59.pth").write_bytes(b"x")
    code, out, _ = cli("models", "--json", "--weights-dir", str(mirror))
    cached = {row["name"] for row in json.loads(out) if row["cached"]}
    assert code == 0
    assert cached == {"resnet18_aa"}


def test_models_table_renders(cli):
    code, out, _ = cli("models")
    assert code == 0
    assert "resnet18_aa" in out


def test_ctrl_c_during_a_run_exits_130_and_keeps_finished_suites(cli, tmp_path, monkeypatch):
    import aabench.runner

    finished = []
    real_run_suite = aabench.runner.run_suite

    def interrupt_the_second(model, suite, *args, **kwargs):
        if finished:
            raise KeyboardInterrupt
        finished.append(suite.name)
        return real_run_suite(model, suite, *args, **kwargs)

    monkeypatch.setattr(aabench.runner, "run_suite", interrupt_the_second)
    out = tmp_path / "runs"
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "accuracy,shift",
        "--out", str(out), "--quiet", "--workers", "0", "--limit", "1",
    )  # fmt: skip
    assert code == 130
    assert "interrupted" in err and "Traceback" not in err
    written = sorted(p.name for p in (out / "resnet18_aa").iterdir())
    assert written == ["accuracy.csv", "accuracy.json", "accuracy.samples.csv.gz"]


def test_ctrl_c_in_gate_is_not_mistaken_for_a_regression(cli, monkeypatch):
    import aabench.results.compare

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(aabench.results.compare, "load_runs", interrupted)
    code, _, _ = cli("gate", "--reference", "a.csv", "--candidate", "b.csv")
    assert code == 130


@pytest.mark.parametrize("flag", [["--generate"], ["--imagenet-c", "somewhere"]])
def test_imagenet_c_flags_need_the_imagenet_c_suite(cli, tmp_path, flag):
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "shift",
        "--out", str(tmp_path), *flag,
    )  # fmt: skip
    assert code == 2
    assert f"{flag[0]} is for --suite imagenet-c" in err


def test_generate_flag_runs_imagenet_c_on_the_fly(cli, tmp_path):
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "imagenet-c",
        "--generate", "--set", "corruptions=brightness", "--set", "severities=1",
        "--limit", "1", "--workers", "0", "--quiet", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, err
    provenance = json.loads((tmp_path / "resnet18_aa" / "imagenet-c.json").read_text())
    assert provenance["data_source"]["kind"] == "generated"
    assert provenance["parameters"]["generate"] is True
