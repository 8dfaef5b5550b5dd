"""The arithmetic of a forward pass, and the FLOP ratio that bounds aa / baseline speed.

An anti-aliased model does more arithmetic than its baseline (a stride-2 convolution
becomes a stride-1 one followed by BlurPool, so it runs at 4x the positions), so its
forward can at best reach F = FLOPs(baseline) / FLOPs(aa) of the baseline's rate.
FLOPs are counted by torch.utils.flop_counter (convolutions and matrix products, where
nearly all the arithmetic is) for one input at the model's crop size, with every
BlurPool in its reference form (the depthwise k x k convolution the protocol defines),
whatever form it runs in.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from aabench.models.blurpool import BlurPool


def count_flops(module: nn.Module, size: int) -> int:
    """FLOPs of ``module`` on one 3 x ``size`` x ``size`` input (eval mode, no grad)."""
    pools = [pool for pool in module.modules() if isinstance(pool, BlurPool)]
    forms = [pool.form for pool in pools]
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    training = module.training
    counter = FlopCounterMode(display=False)
    try:
        for pool in pools:
            pool.form = "reference"
        module.eval()
        with counter, torch.inference_mode():
            module(torch.zeros(1, 3, size, size, device=device))
    finally:
        for pool, form in zip(pools, forms, strict=True):
            pool.form = form
        module.train(training)
    return counter.get_total_flops()


def flop_ratio(baseline: nn.Module, model: nn.Module, size: int) -> float:
    """F = FLOPs(baseline) / FLOPs(model) at crop ``size``."""
    return count_flops(baseline, size) / count_flops(model, size)
