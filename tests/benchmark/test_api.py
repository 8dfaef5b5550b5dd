"""Issue 16: the Python API, aabench.evaluate / Result / ShiftConsistency, and timm's
anti-aliased models in `aabench models --family timm-aa`."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

import aabench
from aabench.errors import UserError
from aabench.models.blurpool import BlurPool
from aabench.models.preprocessing import Preprocessing
from tests.benchmark.test_distributed import ROOT, TIMEOUT, environment, free_port

SMALL = {"resize": 40, "crop": 32}


class Pooled(nn.Module):
    """A strided CNN small enough for a CPU test, with a BatchNorm (train != eval)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6 * 4 * 4, 1000)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(torch.relu(self.norm(self.conv(x))), 4)
        return self.head(x.flatten(1))


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = Pooled()
    with torch.no_grad():  # running statistics that differ from a fresh BatchNorm's
        module.norm.running_mean.uniform_(-1, 1)
        module.norm.running_var.uniform_(0.5, 2)
    return module


def values(result) -> dict:
    table = result.table
    return dict(zip(table["metric"], table["value"], strict=True))


def test_evaluate_returns_the_table_provenance_and_samples():
    result = aabench.evaluate(model(), "shift", preprocessing=SMALL, workers=0, epochs=2)
    assert isinstance(result, aabench.Result)
    # (no consistency_correct row: no view of these random weights is right)
    assert set(result.table["metric"]) == {"consistency", "accuracy"}
    assert result.table["model"].unique().tolist() == ["Pooled"]  # the class name
    assert len(result.samples) == 5 * 2 * 2  # 5 sample images, 2 passes, 2 views
    assert result.provenance["n"] == 5 and result.provenance["device"] == "cpu"
    assert result.provenance["preprocessing"]["crop_size"] == 32
    assert result.provenance["weights"]["name"] == "module's own"
    assert result.provenance["random_weights"] is False


def test_preprocessing_may_be_a_dict_or_a_preprocessing():
    as_dict = aabench.evaluate(model(), "accuracy", preprocessing=SMALL, workers=0)
    as_object = aabench.evaluate(
        model(), "accuracy", preprocessing=Preprocessing(resize_size=40, crop_size=32), workers=0
    )
    assert as_dict.table["value"].tolist() == as_object.table["value"].tolist()
    assert as_dict.provenance["preprocessing"] == as_object.provenance["preprocessing"]
    with pytest.raises(UserError, match="unknown preprocessing key 'size'"):
        aabench.evaluate(model(), "accuracy", preprocessing={"size": 3})


def test_train_mode_is_restored_and_eval_used_meanwhile():
    module = model()
    module.train()
    module.norm.eval()  # a frozen BatchNorm inside a training model stays frozen
    seen = []
    module.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    aabench.evaluate(module, "accuracy", preprocessing=SMALL, workers=0)
    assert seen and not any(seen)  # evaluated in eval mode
    assert module.training and module.conv.training and not module.norm.training
    after = module.state_dict()  # BatchNorm statistics untouched
    assert all(after[key].equal(value) for key, value in before.items())
    evaluated = aabench.evaluate(model(), "accuracy", preprocessing=SMALL, workers=0)
    assert values(evaluated) == values(
        aabench.evaluate(module, "accuracy", preprocessing=SMALL, workers=0)
    )


class Blurred(nn.Module):
    """An anti-aliased block (conv, BatchNorm, max pool, BlurPool) with a 4-D buffer of
    its own."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.MaxPool2d(2, stride=1)
        self.blur = BlurPool(6)
        self.register_buffer("scale", torch.ones(1, 6, 1, 1) * 0.5 + torch.zeros(1, 6, 2, 2))
        self.head = nn.Linear(6, 1000)

    def forward(self, x):
        x = self.blur(self.pool(self.bn(self.conv(x)))) * self.scale.mean()
        return self.head(x.mean(dim=(2, 3)))


def test_memory_format_is_the_measured_one_and_a_callers_module_is_given_back():
    named = aabench.evaluate("resnet18_aa", "accuracy", weights="none", limit=1, workers=0)
    assert named.provenance["channels_last"] is True  # measured faster on the CPU
    module = Blurred()
    before = {name: t for name, t in [*module.named_parameters(), *module.named_buffers()]}
    with torch.inference_mode():  # as a training script's validation step may call it
        own = aabench.evaluate(module, "accuracy", preprocessing=SMALL, workers=0)
    assert own.provenance["channels_last"] is True
    assert own.provenance["blurpool"] == {"reference": 1, "shifted_max": 1}
    assert own.provenance["folded_batchnorms"] == 1  # measured faster on the CPU
    # The very tensors, classes and forms it had: not converted, not inference tensors,
    # and no folded weights left beside them.
    after = dict([*module.named_parameters(), *module.named_buffers()])
    assert after.keys() == before.keys()
    assert all(after[name] is tensor for name, tensor in before.items())
    assert all(t.is_contiguous() and not t.is_inference() for t in after.values())
    assert type(module.pool) is nn.MaxPool2d and module.blur.form == "reference"
    assert type(module.conv) is nn.Conv2d and type(module.bn) is nn.BatchNorm2d
    module(torch.zeros(1, 3, 16, 16)).sum().backward()  # it still trains
    assert module.conv.weight.grad is not None
    plain = aabench.evaluate(
        module, "accuracy", preprocessing=SMALL, workers=0, channels_last=False,
        fold_batchnorm=False,
    )  # fmt: skip
    assert plain.provenance["channels_last"] is False
    assert plain.provenance["folded_batchnorms"] == 0


def test_evaluate_works_inside_inference_mode():
    outside = aabench.evaluate(model(), "shift", preprocessing=SMALL, workers=0, epochs=1)
    with torch.inference_mode():
        inside = aabench.evaluate(model(), "shift", preprocessing=SMALL, workers=0, epochs=1)
    assert inside.table["value"].tolist() == outside.table["value"].tolist()
    assert inside.provenance["run_id"] == outside.provenance["run_id"]


def test_suite_parameters_are_checked_and_strings_typed():
    typed = aabench.evaluate(model(), "shift", preprocessing=SMALL, workers=0, epochs="1")
    assert typed.provenance["parameters"]["epochs"] == 1
    with pytest.raises(UserError, match="unknown parameter nosuch for suite shift"):
        aabench.evaluate(model(), "shift", nosuch=1)
    with pytest.raises(UserError, match=r"needs a torch\.nn\.Module"):
        aabench.evaluate(object(), "shift")


def test_a_wrapped_module_is_unwrapped_and_a_name_works():
    wrapped = nn.DataParallel(model())
    direct = aabench.evaluate(model(), "accuracy", preprocessing=SMALL, workers=0, name="m")
    through = aabench.evaluate(wrapped, "accuracy", preprocessing=SMALL, workers=0, name="m")
    assert through.provenance["run_id"] == direct.provenance["run_id"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_module_on_a_gpu_is_evaluated_there_and_stays_there():
    module = model().cuda()
    result = aabench.evaluate(module, "shift", preprocessing=SMALL, workers=0, epochs=1)
    assert result.provenance["device"].startswith("cuda")
    assert next(module.parameters()).is_cuda
    on_cpu = model()
    copied = aabench.evaluate(on_cpu, "shift", preprocessing=SMALL, workers=0, epochs=1,
                              device="cuda")  # fmt: skip
    assert not next(on_cpu.parameters()).is_cuda  # evaluated as a copy: never moved
    assert copied.provenance["device"].startswith("cuda")
    assert result.table["value"].tolist() == copied.table["value"].tolist()


# ------------------------------------------------------------ the validation helper


def test_shift_consistency_decodes_once_and_matches_the_suite(monkeypatch):
    import aabench.engine

    decoded = []
    real = aabench.engine.decode
    monkeypatch.setattr(aabench.engine, "decode", lambda path: decoded.append(path) or real(path))
    check = aabench.ShiftConsistency(limit=4, every=2, preprocessing=SMALL, batch_size=3)
    module = model()
    module.train()
    first = check(module, epoch=0)
    views = check.views
    assert check(module, epoch=1) is None  # skipped epoch: nothing run
    second = check(module, epoch=2)
    assert len(decoded) == 4  # decoded once, on the first call
    assert check.views is views
    assert module.training  # restored
    assert first == {**second, "epoch": 0}
    suite = aabench.evaluate(module, "shift", preprocessing=SMALL, workers=0, epochs=1, limit=4)
    expected = values(suite)
    assert first["consistency"] == pytest.approx(expected["consistency"], abs=1e-9)
    assert first["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert first["n"] == 4 and first["views"] == 8
    with pytest.raises(UserError, match="every must be at least 1"):
        aabench.ShiftConsistency(every=0)


# ------------------------------------------------------------------ torchrun


DISTRIBUTED_SCRIPT = """
import json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
sys.path.insert(0, {root!r})
import aabench
from tests.benchmark.test_api import model, SMALL

dist.init_process_group("gloo")
wrapped = DistributedDataParallel(model())
result = aabench.evaluate(wrapped, "shift", preprocessing=SMALL, workers=0, epochs=1,
                          batch_size=4, name="ddp")
if dist.get_rank() == 0:
    result.save({out!r})
else:
    assert result is None
dist.destroy_process_group()
"""


def test_evaluate_under_torchrun_equals_one_process(tmp_path):
    single = aabench.evaluate(
        model(), "shift", preprocessing=SMALL, workers=0, epochs=1, batch_size=4, name="ddp"
    )
    single.save(tmp_path / "single")
    script = tmp_path / "ddp.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(root=str(ROOT), out=str(tmp_path / "ddp")))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=tmp_path,
        # torchrun's default of one thread per rank would round the linear layer's sums
        # differently from this process (1e-10 in p_true): the same thread count here.
        env=environment(OMP_NUM_THREADS=str(torch.get_num_threads())),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("shift.csv", "shift.samples.csv.gz"):
        ours = (tmp_path / "ddp" / "ddp" / name).read_bytes()
        assert ours == (tmp_path / "single" / "ddp" / name).read_bytes(), name
    provenance = json.loads((tmp_path / "ddp" / "ddp" / "shift.json").read_text())
    assert provenance["world_size"] == 2 and provenance["n"] == 5


# ------------------------------------------------------------------ timm


def test_models_family_timm_aa_lists_timms_antialiased_models(cli, monkeypatch):
    available = ["resnet18", "resnetblur18", "resnetblur50", "resnetaa50d", "tresnet_m",
                 "seresnextaa101d_32x8d", "vit_base_patch16_224"]  # fmt: skip
    import fnmatch

    def list_models(filter=(), **_):
        patterns = [filter] if isinstance(filter, str) else list(filter)
        return [n for n in available if any(fnmatch.fnmatch(n, p) for p in patterns)]

    fake = types.ModuleType("timm")
    fake.list_models = list_models
    monkeypatch.setitem(sys.modules, "timm", fake)
    code, out, err = cli("models", "--family", "timm-aa", "--json")
    assert code == 0, err
    names = [row["name"] for row in json.loads(out)]
    assert names == [
        "timm:resnetaa50d", "timm:resnetblur18", "timm:resnetblur50",
        "timm:seresnextaa101d_32x8d", "timm:tresnet_m",
    ]  # fmt: skip
    assert {row["family"] for row in json.loads(out)} == {"timm-aa"}


def test_models_family_timm_aa_without_timm_is_one_line(cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    code, _, err = cli("models", "--family", "timm-aa")
    assert code == 2 and "pip install 'aabench[timm]'" in err
    code, _, err = cli("models", "--family", "nosuch")
    assert code == 2 and "--family 'nosuch' is not one of" in err


def test_a_real_timm_antialiased_model_runs(cli, tmp_path):
    timm = pytest.importorskip("timm")
    assert "resnetblur18" in timm.list_models("resnetblur*")
    code, _, err = cli("run", "--model", "timm:resnetblur18", "--weights", "none", "--suite",
                       "shift", "--set", "epochs=1", "--workers", "0", "--quiet", "--limit", "2",
                       "--out", str(tmp_path))  # fmt: skip
    assert code == 0, err
