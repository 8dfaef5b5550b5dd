"""Conformance of the 23 anti-aliased architectures with the released checkpoints.

Key lists (every key, shape, dtype at k = 4) and golden logits (53 models, synthetic
weights from data/golden/README.md) are the reference's facts, copied into data/.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aabench.models.antialiased import ARCHITECTURES, build_antialiased
from tests.benchmark.models.synthetic import golden_input, state_checksum, synthetic_tensor

DATA = Path(__file__).parent / "data"
GOLDEN = json.loads((DATA / "golden" / "index.json").read_text())
# Grouped by architecture so consecutive filter sizes reuse the synthetic tensors.
GOLDEN_CASES = sorted(GOLDEN, key=lambda entry: (entry["arch"], entry["filter_size"]))


def reference_keys(arch: str) -> list[tuple[str, str, str]]:
    lines = (DATA / "keys" / f"{arch}_lpf4.txt").read_text().splitlines()
    return [tuple(line.split("\t")) for line in lines]


def model_keys(model: torch.nn.Module) -> list[tuple[str, str, str]]:
    return [(key, str(tuple(v.shape)), str(v.dtype)) for key, v in model.state_dict().items()]


def test_all_23_architectures_are_built():
    assert sorted(ARCHITECTURES) == sorted(
        p.name.removesuffix("_lpf4.txt") for p in (DATA / "keys").iterdir()
    )
    assert len(ARCHITECTURES) == 23


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_state_dict_keys_shapes_dtypes_equal_the_released_layout(arch):
    assert model_keys(build_antialiased(arch, 4)) == reference_keys(arch)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6, 7])
@pytest.mark.parametrize("arch", ["alexnet", "vgg11_bn", "resnet50", "densenet121", "mobilenet_v2"])
def test_other_filter_sizes_change_only_filt_shapes(arch, k):
    expected = []
    for key, shape, dtype in reference_keys(arch):
        if key.endswith(".filt"):
            channels = shape.strip("()").split(",")[0]
            shape = f"({channels}, 1, {k}, {k})"
        expected.append((key, shape, dtype))
    assert model_keys(build_antialiased(arch, k)) == expected


class _SyntheticCache:
    """Synthetic tensors of the last architecture: its filter sizes share all but .filt."""

    arch: str | None = None
    tensors: dict = {}  # noqa: RUF012 - one shared cache on purpose

    @classmethod
    def state_for(cls, arch: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if cls.arch != arch:
            cls.arch, cls.tensors = arch, {}
        state = {}
        for key, value in model.state_dict().items():
            if key.endswith(".filt"):
                state[key] = synthetic_tensor(key, tuple(value.shape), value.dtype)
                continue
            if key not in cls.tensors:
                cls.tensors[key] = synthetic_tensor(key, tuple(value.shape), value.dtype)
            state[key] = cls.tensors[key]
        return state


@pytest.mark.parametrize("entry", GOLDEN_CASES, ids=[e["model"] for e in GOLDEN_CASES])
def test_golden_logits(entry):
    model = build_antialiased(entry["arch"], entry["filter_size"]).eval()
    state = _SyntheticCache.state_for(entry["arch"], model)
    assert len(state) == entry["num_keys"]
    # The generator itself is checked against the reference's checksum first.
    assert state_checksum(state) == pytest.approx(entry["state_checksum"], rel=1e-12)
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        logits = model(golden_input()).numpy()
    golden = np.load(DATA / "golden" / f"{entry['model']}.npy")
    assert logits.shape == golden.shape == (2, 1000)
    assert np.abs(logits - golden).max() <= 1e-5 * np.abs(golden).max()


def test_golden_distinguishes_filter_sizes():
    # The tolerance above is meaningful: neighbouring filter sizes differ by far more.
    k3 = np.load(DATA / "golden" / "resnet18_lpf3.npy")
    k4 = np.load(DATA / "golden" / "resnet18_lpf4.npy")
    assert np.abs(k3 - k4).max() > 10 * 1e-5 * np.abs(k4).max()
