"""FLOP counts: convolutions and products, BlurPool always in its reference form."""

from torch import nn

from aabench.flops import count_flops, flop_ratio
from aabench.models.blurpool import BlurPool

# Conv2d(3, 4, 3, padding=1) on 3 x 8 x 8: 4 * 8 * 8 outputs of 27 multiply-adds.
CONV_FLOPS = 2 * (4 * 8 * 8) * 27
# BlurPool(4, k=3, stride 2) on 4 x 8 x 8: 4 * 4 * 4 outputs of 9 multiply-adds.
BLUR_FLOPS = 2 * (4 * 4 * 4) * 9


def blurred() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), BlurPool(4, filter_size=3))


def test_flops_are_counted_with_the_reference_blur_whatever_form_runs():
    model = blurred()
    model[1].form = "cascade"  # average pools: no FLOPs counted in this form
    model.train()
    assert count_flops(model, 8) == CONV_FLOPS + BLUR_FLOPS
    assert model[1].form == "cascade" and model.training  # both restored


def test_flop_ratio_is_baseline_over_model():
    baseline = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    assert flop_ratio(baseline, blurred(), 8) == CONV_FLOPS / (CONV_FLOPS + BLUR_FLOPS)
