"""Model names, building, and loading released / user weights end to end (no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

from aabench.errors import UserError
from aabench.models import released
from aabench.models.antialiased import ARCHITECTURES
from aabench.models.zoo import (
    TORCHVISION_LICENCE,
    available_models,
    create_model,
    is_cached,
    known_model_names,
    parse_model_name,
)
from tests.benchmark.models.synthetic import golden_input, synthetic_state_dict

pytestmark = pytest.mark.usefixtures("cache", "network")

GOLDEN = Path(__file__).parent / "data" / "golden"
RELEASED_STEM = "resnet18_lpf4_finetune"
RELEASED_URL = released.BASE_URL + "resnet18_lpf4_finetune-8cc58f59.pth"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_input() -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randn(1, 3, 64, 64, generator=generator)


@torch.no_grad()
def logits(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def assert_matches_golden(module: torch.nn.Module, golden_file: str) -> None:
    golden = np.load(GOLDEN / golden_file)
    ours = logits(module, golden_input()).numpy()
    assert ours.shape == golden.shape == (2, 1000)
    assert np.abs(ours - golden).max() <= 1e-5 * np.abs(golden).max()


# ------------------------------------------------------------------------------ names


def test_baseline_name():
    spec = parse_model_name("resnet18")
    assert spec.family == "torchvision"
    assert spec.arch == "resnet18"
    assert spec.filter_size is None
    assert spec.torchvision_weights == "IMAGENET1K_V1"
    assert spec.weights.url.endswith("/resnet18-f37072fd.pth")
    assert spec.weights.file_name == "resnet18-f37072fd.pth"
    assert spec.weights.name == "ResNet18_Weights.IMAGENET1K_V1"
    assert spec.weights.licence == TORCHVISION_LICENCE
    assert spec.preprocessing.resize_size == 256
    assert spec.preprocessing.crop_size == 224
    assert spec.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_aa_name_means_filter_4_finetuned():
    spec = parse_model_name("resnet18_aa")
    assert spec.family == "antialiased"
    assert spec.arch == "resnet18"
    assert spec.filter_size == 4
    assert spec.weights.name == RELEASED_STEM
    assert spec.weights.url == RELEASED_URL
    assert spec.weights.file_name == "resnet18_lpf4_finetune-8cc58f59.pth"
    assert "CC BY-NC-SA 4.0" in spec.weights.licence
    assert (spec.preprocessing.resize_size, spec.preprocessing.crop_size) == (256, 224)


@pytest.mark.parametrize("name", ["resnet18_aa3", "resnet18_lpf3"])
def test_aa_k_name_means_from_scratch_weights(name):
    spec = parse_model_name(name)
    assert spec.name == name
    assert spec.family == "antialiased"
    assert spec.filter_size == 3
    assert spec.weights.name == "resnet18_lpf3"
    assert spec.weights.file_name == "resnet18_lpf3-449351b9.pth"
    assert spec.weights.url == released.BASE_URL + "resnet18_lpf3-449351b9.pth"


def test_aa4_is_from_scratch_not_finetuned():
    assert parse_model_name("resnet18_aa4").weights.file_name == "resnet18_lpf4-8c77af40.pth"


def test_name_without_released_weights_needs_weights_option(network):
    spec = parse_model_name("resnet152_aa3")
    assert spec.filter_size == 3
    assert spec.weights is None
    with pytest.raises(UserError, match="no released weights for resnet152_aa3") as caught:
        create_model("resnet152_aa3")
    message = str(caught.value)
    assert "--weights PATH" in message
    assert "--weights none" in message
    assert "(released: resnet152_aa)" in message
    assert network.calls == []


def test_hint_lists_released_from_scratch_names():
    with pytest.raises(UserError, match=re.escape("(released: resnet18_aa, resnet18_aa2, ")):
        create_model("resnet18_aa7")


@pytest.mark.parametrize("name", ["resnet18_aa9", "resnet18_aa0", "resnet18_lpf8"])
def test_filter_size_out_of_range(name):
    with pytest.raises(UserError, match=re.escape(f"filter size in {name!r} must be 1..7")):
        parse_model_name(name)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError, match="unknown model 'resnt18_aa'") as caught:
        parse_model_name("resnt18_aa")
    assert "did you mean resnet18_aa" in str(caught.value)
    assert "`aabench models`" in str(caught.value)


def test_unknown_torchvision_name_suggests_with_prefix():
    with pytest.raises(UserError, match="did you mean torchvision:resnet50"):
        parse_model_name("torchvision:resnet500")


def test_torchvision_name_with_weights():
    spec = parse_model_name("torchvision:resnet50.IMAGENET1K_V2")
    assert spec.family == "torchvision"
    assert spec.arch == "resnet50"
    assert spec.torchvision_weights == "IMAGENET1K_V2"
    assert spec.weights.name == "ResNet50_Weights.IMAGENET1K_V2"
    expected = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert spec.weights.url == expected.url
    assert spec.preprocessing.resize_size == 232  # V2's recipe, not the V1 256
    assert spec.preprocessing.crop_size == 224


def test_torchvision_name_defaults_to_default_weights():
    spec = parse_model_name("torchvision:resnet50")
    assert spec.torchvision_weights == torchvision.models.ResNet50_Weights.DEFAULT.name


def test_torchvision_name_with_unknown_weights():
    with pytest.raises(UserError, match="no weights 'IMAGENET9K' for resnet50") as caught:
        parse_model_name("torchvision:resnet50.IMAGENET9K")
    assert "IMAGENET1K_V1, IMAGENET1K_V2" in str(caught.value)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_name_without_timm():
    assert parse_model_name("timm:resnet18").family == "timm"
    with pytest.raises(UserError, match=re.escape("pip install 'aabench[timm]'")):
        create_model("timm:resnet18")


def test_known_model_names():
    names = known_model_names()
    assert len(ARCHITECTURES) == 23
    assert len(names) == 23 * 9
    assert len(set(names)) == len(names)
    for name in ["resnet18", "resnet18_aa", "resnet18_aa1", "resnet18_aa7", "alexnet_aa"]:
        assert name in names
    assert "resnet18_aa8" not in names and "resnet18_lpf4" not in names


def test_available_models_reach_every_released_file():
    specs = available_models()
    assert [spec.name for spec in specs] == known_model_names()
    files = {
        spec.weights.file_name for spec in specs if spec.family == "antialiased" and spec.weights
    }
    assert files == set(released.RELEASED_FILES.values())
    assert all(spec.weights is not None for spec in specs if spec.family == "torchvision")


# -------------------------------------------------------------- random initialisation


@pytest.mark.parametrize(
    ("name", "k"), [("resnet18", None), ("resnet18_aa", 4), ("mobilenet_v2_aa3", 3)]
)
def test_random_weights(name, k, cache, network):
    loaded = create_model(name, weights="none")
    assert loaded.name == name
    assert not loaded.module.training
    assert not any(module.training for module in loaded.module.modules())
    assert loaded.weights.name == "none"
    assert loaded.weights.random
    assert loaded.weights.label == "none"
    assert loaded.weights.sha256 is None
    filter_sizes = {
        value.shape[-1]
        for key, value in loaded.module.state_dict().items()
        if key.endswith(".filt")
    }
    assert filter_sizes == ({k} if k else set())
    assert network.calls == []
    assert not cache.exists()


# ------------------------------------------------------- released weights, end to end


@pytest.fixture(scope="module")
def released_resnet18_aa(tmp_path_factory) -> tuple[Path, str, str]:
    """A mirror holding a reference-format resnet18_aa checkpoint with synthetic values.

    Returns (mirror directory, file name ``resnet18_lpf4_finetune-<sha8>.pth``, sha256).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AABENCH_WEIGHTS_DIR", raising=False)
        reference = create_model("resnet18_aa", weights="none").module.state_dict()
    state = synthetic_state_dict(reference)
    assert list(state) == list(reference)
    work = tmp_path_factory.mktemp("released")
    temporary = work / "checkpoint.pth.tar"
    torch.save({"state_dict": state}, temporary, _use_new_zipfile_serialization=False)
    digest = sha256(temporary)
    mirror = work / "mirror"
    mirror.mkdir()
    file_name = f"{RELEASED_STEM}-{digest[:8]}.pth"
    temporary.rename(mirror / file_name)
    return mirror, file_name, digest


@pytest.fixture
def release(released_resnet18_aa, monkeypatch) -> tuple[Path, str, str]:
    """The synthetic checkpoint, registered as resnet18_aa's released file."""
    mirror, file_name, digest = released_resnet18_aa
    monkeypatch.setitem(released.RELEASED_FILES, RELEASED_STEM, file_name)
    return mirror, file_name, digest


def assert_released_record(loaded, path: Path, file_name: str, digest: str) -> None:
    assert loaded.weights.name == RELEASED_STEM
    assert loaded.weights.file == str(path)
    assert loaded.weights.label == file_name
    assert loaded.weights.sha256 == digest
    assert "CC BY-NC-SA 4.0" in loaded.weights.licence
    assert loaded.weights.url == released.BASE_URL + file_name
    assert not loaded.weights.random


def test_released_weights_from_mirror_reproduce_golden_logits(release, network):
    mirror, file_name, digest = release
    loaded = create_model("resnet18_aa", weights_dir_path=mirror)
    assert not loaded.module.training
    assert_released_record(loaded, mirror / file_name, file_name, digest)
    assert_matches_golden(loaded.module, "resnet18_lpf4.npy")
    assert network.calls == []


def test_released_weights_from_mirror_in_env(release, network, monkeypatch):
    mirror, file_name, digest = release
    monkeypatch.setenv("AABENCH_WEIGHTS_DIR", str(mirror))
    loaded = create_model("resnet18_aa")
    assert_released_record(loaded, mirror / file_name, file_name, digest)
    assert_matches_golden(loaded.module, "resnet18_lpf4.npy")
    assert network.calls == []


def test_released_weights_from_torch_hub_cache(release, cache, network):
    mirror, file_name, digest = release
    cache.mkdir(parents=True)
    (cache / file_name).symlink_to(mirror / file_name)
    loaded = create_model("resnet18_aa")
    assert_released_record(loaded, cache / file_name, file_name, digest)
    assert_matches_golden(loaded.module, "resnet18_lpf4.npy")
    assert network.calls == []


def test_released_weights_downloaded_on_first_use(release, cache, network):
    mirror, file_name, digest = release
    url = released.BASE_URL + file_name
    network.serve(url, (mirror / file_name).read_bytes())
    loaded = create_model("resnet18_aa")
    assert network.calls == [url]
    assert sorted(p.name for p in cache.iterdir()) == [file_name]
    assert sha256(cache / file_name) == digest
    assert_released_record(loaded, cache / file_name, file_name, digest)
    assert_matches_golden(loaded.module, "resnet18_lpf4.npy")


def test_is_cached(release, cache, tmp_path):
    mirror, file_name, _ = release
    spec = parse_model_name("resnet18_aa")
    assert is_cached(spec, mirror)
    assert not is_cached(spec)
    assert not is_cached(spec, tmp_path)
    cache.mkdir(parents=True)
    (cache / file_name).symlink_to(mirror / file_name)
    assert is_cached(spec)
    assert not is_cached(parse_model_name("resnet152_aa3"), mirror)
    assert not is_cached(parse_model_name("resnet18_aa3"), mirror)


def test_tampered_released_file_is_refused(released_resnet18_aa, tmp_path, monkeypatch):
    mirror, file_name, digest = released_resnet18_aa
    claimed = "00000000" if not digest.startswith("00000000") else "11111111"
    bad_mirror = tmp_path / "bad-mirror"
    bad_mirror.mkdir()
    (bad_mirror / f"{RELEASED_STEM}-{claimed}.pth").symlink_to(mirror / file_name)
    monkeypatch.setitem(released.RELEASED_FILES, RELEASED_STEM, f"{RELEASED_STEM}-{claimed}.pth")
    with pytest.raises(UserError, match="tampered") as caught:
        create_model("resnet18_aa", weights_dir_path=bad_mirror)
    assert str(bad_mirror / f"{RELEASED_STEM}-{claimed}.pth") in str(caught.value)


def test_offline_without_cached_weights(cache, network):
    network.fail(URLError("[Errno -3] Temporary failure in name resolution"))
    with pytest.raises(UserError, match="could not download") as caught:
        create_model("resnet18_aa")
    message = str(caught.value)
    assert RELEASED_URL in message
    assert str(cache) in message
    assert "--weights-dir" in message
    assert network.calls == [RELEASED_URL]
    assert [p.name for p in cache.iterdir()] == []


def test_offline_error_names_the_mirror(cache, network, tmp_path):
    network.fail(URLError("offline"))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with pytest.raises(UserError, match="could not download") as caught:
        create_model("resnet18_aa", weights_dir_path=mirror)
    assert str(mirror) in str(caught.value)
    assert str(cache) in str(caught.value)


def test_missing_mirror_directory(tmp_path, network):
    with pytest.raises(UserError, match="does not exist or is not a directory"):
        create_model("resnet18_aa", weights_dir_path=tmp_path / "missing")
    assert network.calls == []


# -------------------------------------------------------------------- user checkpoints


@pytest.fixture(scope="module")
def k3_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A user's resnet18 checkpoint with filter size 3, and the module it came from."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AABENCH_WEIGHTS_DIR", raising=False)
        torch.manual_seed(3)
        module = create_model("resnet18_aa3", weights="none").module
    path = tmp_path_factory.mktemp("k3") / "resnet18-aa3-run-20240101.pth"
    torch.save({"state_dict": module.state_dict(), "epoch": 90}, path)
    return path, module


def test_filter_size_mismatch_names_the_right_model(k3_checkpoint, network):
    path, _ = k3_checkpoint
    with pytest.raises(UserError, match="filter size 3 but resnet18_aa means filter size 4") as e:
        create_model("resnet18_aa", weights=str(path))
    assert "--model resnet18_aa3" in str(e.value)
    assert network.calls == []


def test_user_checkpoint_for_the_matching_filter_size(k3_checkpoint, network):
    path, source = k3_checkpoint
    loaded = create_model("resnet18_aa3", weights=str(path))
    assert not loaded.module.training
    assert loaded.weights.name == "user checkpoint"
    assert loaded.weights.file == str(path)
    assert loaded.weights.sha256 == sha256(path)
    assert loaded.weights.licence == "unknown"
    assert loaded.weights.url is None
    x = small_input()
    assert torch.equal(logits(loaded.module, x), logits(source.eval(), x))
    assert network.calls == []


@pytest.fixture(scope="module")
def torchvision_resnet18(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(18)
    module = torchvision.models.resnet18().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.1, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tv") / "model-20240101.pth"
    torch.save(module.state_dict(), path)
    return path, module


def test_baseline_checkpoint_given_to_aa_name(torchvision_resnet18):
    path, _ = torchvision_resnet18
    with pytest.raises(UserError, match="no BlurPool filters") as caught:
        create_model("resnet18_aa", weights=str(path))
    assert "use the baseline name resnet18" in str(caught.value)


def test_aa_checkpoint_given_to_baseline_name(k3_checkpoint):
    path, _ = k3_checkpoint
    with pytest.raises(UserError, match=r"checkpoint does not fit resnet18: .*unexpected keys"):
        create_model("resnet18", weights=str(path))


def test_baseline_with_user_weights(torchvision_resnet18, network):
    path, source = torchvision_resnet18
    loaded = create_model("resnet18", weights=str(path))
    assert loaded.weights.name == "user checkpoint"
    assert loaded.weights.sha256 == sha256(path)
    assert loaded.weights.file == str(path)
    x = small_input()
    assert torch.equal(logits(loaded.module, x), logits(source, x))
    assert network.calls == []


def test_baseline_with_user_weights_from_url(torchvision_resnet18, cache, network):
    path, source = torchvision_resnet18
    digest = sha256(path)
    url = f"https://example.invalid/runs/resnet18-{digest[:8]}.pth"
    network.serve(url, path.read_bytes())
    loaded = create_model("resnet18", weights=url)
    assert network.calls == [url]
    # A user's URL is kept by content: only release file names are hash claims.
    stored = cache / "aabench" / "sha256" / digest / f"resnet18-{digest[:8]}.pth"
    assert loaded.weights.file == str(stored)
    assert loaded.weights.url == url
    assert loaded.weights.sha256 == digest
    x = small_input()
    assert torch.equal(logits(loaded.module, x), logits(source, x))


_OLD_STYLE = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
_NEW_STYLE = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def densenet121_old_style(tmp_path: Path, keep_num_batches_tracked: bool):
    torch.manual_seed(121)
    module = torchvision.models.densenet121().eval()
    state = {}
    for key, value in module.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            state[_OLD_STYLE.sub(r"\1.\2.", key)] = value
        elif keep_num_batches_tracked:  # the regex's scope: only the four kinds above
            state[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in state
    assert "features.denseblock1.denselayer1.conv.2.weight" in state
    assert "features.denseblock4.denselayer16.norm.2.running_var" in state
    assert not any(re.search(r"denselayer\d+\.(norm|conv)[12]\.weight", key) for key in state)
    path = tmp_path / "densenet121-old.pth"
    torch.save(state, path)
    return path, module


def test_densenet_old_style_keys_are_renamed(tmp_path):
    # torchvision's legacy names for weight/bias/running_*; num_batches_tracked as today
    path, source = densenet121_old_style(tmp_path, keep_num_batches_tracked=True)
    loaded = create_model("densenet121", weights=str(path))
    x = small_input()
    assert torch.equal(logits(loaded.module, x), logits(source, x))


def test_densenet_legacy_checkpoint_without_num_batches_tracked(tmp_path):
    path, source = densenet121_old_style(tmp_path, keep_num_batches_tracked=False)
    reference = torchvision.models.densenet121()
    renamed = {_NEW_STYLE.sub(r"\1\2.", k): v for k, v in torch.load(path).items()}
    reference.load_state_dict(renamed, strict=True)  # PyTorch itself accepts the file
    loaded = create_model("densenet121", weights=str(path))
    x = small_input()
    assert torch.equal(logits(loaded.module, x), logits(source, x))


def test_random_weights_are_reproducible_from_the_seed():
    first = create_model("resnet18_aa", weights="none", init_seed=3).module.state_dict()
    again = create_model("resnet18_aa", weights="none", init_seed=3).module.state_dict()
    other = create_model("resnet18_aa", weights="none", init_seed=4).module.state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["fc.weight"], other["fc.weight"])


# ----------------------------------------------------- explicit preprocessing, --name


def test_preprocessing_overrides_replace_only_what_they_name():
    model = create_model("resnet18", weights="none", build=False, preprocessing={"crop_size": 160})
    assert model.overrides == {"crop_size": 160}
    assert model.preprocessing.crop_size == 160
    assert model.preprocessing.resize_size == 256  # the model's own, not overridden
    assert model.base_preprocessing.crop_size == 224
    torchvision_v2 = create_model("torchvision:resnet50.IMAGENET1K_V2", weights="none", build=False)
    assert torchvision_v2.preprocessing.resize_size == 232  # torchvision's own stays


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"crop_size": 300}, "crop 300 is larger than the resize 256"),
        ({"mean": "0.5,0.5"}, "three finite numbers"),
        ({"std": (0.5, 0.0, 0.5)}, "std' must be positive"),
        ({"interpolation": "nearest"}, "bilinear or bicubic"),
        ({"resize": 0}, "whole number of pixels"),
    ],
)
def test_bad_preprocessing_is_refused(overrides, words):
    with pytest.raises(UserError, match=re.escape(words)):
        create_model("resnet18", weights="none", build=False, preprocessing=overrides)


def test_display_name_names_the_outputs_and_must_be_a_directory_name():
    assert create_model("resnet18", weights="none", build=False, display_name="r18-a").name == (
        "r18-a"
    )
    for bad in ("../up", "a/b", ""):
        with pytest.raises(UserError, match="cannot name the outputs' directory"):
            create_model("resnet18", weights="none", build=False, display_name=bad)


def test_own_weights_are_not_random_and_are_labelled_by_their_digest():
    from aabench.models.weights import RANDOM_WEIGHTS, own_weights

    record = own_weights("ab" * 32)
    assert not record.random and record.label == "state-abababababab"
    assert RANDOM_WEIGHTS.random and RANDOM_WEIGHTS.label == "none"
