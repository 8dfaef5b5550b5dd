"""The golden logits (data/golden) in the fused form and under ``auto`` for the CPU in both
memory formats, the latter with the BatchNorms folded as the engine folds them on the CPU:
the faster computations must stay within the goldens' tolerance.
(test_antialiased.py checks the reference form on all 53 goldens.)"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aabench.models import blurpool
from aabench.models.antialiased import build_antialiased
from aabench.models.blurpool import use_form
from aabench.models.folding import fold_batchnorms, folding_is_faster
from tests.benchmark.models.synthetic import golden_input, synthetic_state_dict

GOLDEN = Path(__file__).parent / "data" / "golden"
# Every architecture family with its BlurPools (the resnets and vggs with the 2 x 2
# stride-1 max pools too), and the filter sizes around k = 4 on one of them.
MODELS = [
    "resnet18_lpf2",
    "resnet18_lpf3",
    "resnet18_lpf4",
    "resnet18_lpf7",
    "resnet50_lpf4",
    "vgg11_bn_lpf4",
    "densenet121_lpf4",
    "mobilenet_v2_lpf4",
    "alexnet_lpf4",
]
ENTRIES = {entry["model"]: entry for entry in json.loads((GOLDEN / "index.json").read_text())}
# (form, channels-last, BatchNorms folded where measured faster)
VARIANTS = [("fused", True, False), ("auto", False, True), ("auto", True, True)]


@pytest.mark.parametrize("name", MODELS)
def test_golden_logits_fused_and_auto(monkeypatch, name):
    # The golden input is 128 x 128: its largest BlurPool map (63 x 63) is below
    # FUSED_MIN_SIDE, so the fused form is made to fuse every map here.
    monkeypatch.setattr(blurpool, "FUSED_MIN_SIDE", 1)
    entry = ENTRIES[name]
    model = build_antialiased(entry["arch"], entry["filter_size"]).eval()
    model.load_state_dict(synthetic_state_dict(model.state_dict()), strict=True)
    golden = np.load(GOLDEN / f"{name}.npy")
    x = golden_input()
    for form, channels_last, auto_fold in VARIANTS:
        used = use_form(model, form, "cpu", channels_last)
        fold = auto_fold and folding_is_faster("cpu", channels_last)
        used["folded_batchnorms"] = fold_batchnorms(model, fold)
        if fold and name != "alexnet_lpf4":  # every other family has BatchNorms to fold
            assert used["folded_batchnorms"] > 0
        layout = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode():
            logits = model.to(memory_format=layout)(x.contiguous(memory_format=layout))
        error = np.abs(logits.numpy() - golden).max()
        assert error <= 1e-5 * np.abs(golden).max(), (form, channels_last, used)
