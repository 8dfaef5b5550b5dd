"""Forward-only throughput of anti-aliased models with each BlurPool form, beside their
baselines and the FLOP ratio F = FLOPs(baseline) / FLOPs(aa) that bounds aa / baseline.

    python tools/blurpool_forms.py --device cpu --batch-size 16 --seconds 4
    python tools/blurpool_forms.py --device cuda --amp bf16 --batch-size 256 --json out.json

Rounds are interleaved (every variant once per round, the order rotating), so a change
of clock or load affects all variants alike. Printed per variant: the median of the
rounds in views/s, its ratio to the baseline's median, the ratio of the best rounds
(load only slows a variant down) and the range of the per-round ratios. The fastest form
per (device, channels-last) belongs in aabench.models.blurpool.FASTEST; a variant
FORM:shifted or FORM:max_pool2d forces how the 2x2 stride-1 max pools are computed
(SHIFTED_MAX_FASTER), and FORM:folded (combinable: FORM:shifted:folded) folds the
BatchNorms into their convolutions (aabench.models.folding.FOLDING_FASTER); with
--fold-baseline the baseline is measured folded too, for the ratio of like with like.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from aabench.flops import flop_ratio
from aabench.models.blurpool import FORMS, use_form
from aabench.models.folding import fold_batchnorms
from aabench.models.zoo import create_model

AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def module_for(name: str, device: str, channels_last: bool, variant: str | None):
    """``variant``: a BlurPool form, optionally with the max pools' computation forced
    (":shifted" or ":max_pool2d") and the BatchNorms folded (":folded"); None for a
    baseline as torchvision computes it, "folded" for one with its BatchNorms folded."""
    module = create_model(name, weights="none").module.eval()
    form, *modifiers = (variant or "").split(":")
    if form == "folded":
        form, modifiers = "", ["folded"]
    if form:
        shifted_max = None
        if "shifted" in modifiers or "max_pool2d" in modifiers:
            shifted_max = "shifted" in modifiers
        use_form(module, form, device, channels_last, shifted_max=shifted_max)
    module = module.to(device)
    fold_batchnorms(module, "folded" in modifiers)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module


def rate(module, x, amp, seconds: float) -> float:
    """Views per second of ``module`` on the resident batch ``x`` for ``seconds``."""

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with (
        torch.inference_mode(),
        torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None),
    ):
        module(x)
        sync()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or count < 2:
            module(x)
            count += 1
        sync()
    return count * x.shape[0] / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", choices=sorted(AMP))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0, help="per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layouts", default="nchw,channels-last")
    parser.add_argument(
        "--variants",
        default=",".join(FORMS),
        help="BlurPool forms to measure, each optionally FORM:shifted or FORM:max_pool2d "
        "to force how the 2x2 stride-1 max pools are computed, and :folded to fold the "
        "BatchNorms",
    )
    parser.add_argument(
        "--fold-baseline", action="store_true", help="fold the baseline's BatchNorms too"
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    figures = []
    for arch in args.archs.split(","):
        f_ratio = flop_ratio(
            module_for(arch, "cpu", False, None), module_for(f"{arch}_aa", "cpu", False, None), 224
        )
        for layout in args.layouts.split(","):
            channels_last = layout == "channels-last"
            x = torch.randn(args.batch_size, 3, 224, 224, device=args.device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            folded = "folded" if args.fold_baseline else None
            variants = {"baseline": module_for(arch, args.device, channels_last, folded)}
            forms = args.variants.split(",")
            for form in forms:
                variants[form] = module_for(f"{arch}_aa", args.device, channels_last, form)
            rates: dict[str, list[float]] = {name: [] for name in variants}
            names = list(variants)
            for round_ in range(args.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    rates[name].append(rate(variants[name], x, AMP[args.amp], args.seconds))
            medians = {name: statistics.median(values) for name, values in rates.items()}
            # Other work on the machine only slows a variant down, so its best round is the
            # estimate least disturbed by it; the per-round ratios show the spread.
            bests = {name: max(values) for name, values in rates.items()}
            ratios = {
                name: [v / b for v, b in zip(values, rates["baseline"], strict=True)]
                for name, values in rates.items()
            }
            row = {
                "arch": arch,
                "device": args.device,
                "layout": layout,
                "amp": args.amp,
                "batch_size": args.batch_size,
                "rounds": args.rounds,
                "flop_ratio": round(f_ratio, 4),
                "baseline_folded": args.fold_baseline,
                "views_per_s": {name: round(v, 2) for name, v in medians.items()},
                "best_views_per_s": {name: round(v, 2) for name, v in bests.items()},
                "round_ratio_range": {
                    name: [round(min(r), 3), round(max(r), 3)] for name, r in ratios.items()
                },
            }
            figures.append(row)
            base, best_base = medians["baseline"], bests["baseline"]
            shown = "  ".join(
                f"{form} {medians[form]:.1f} ({medians[form] / base:.3f}; best "
                f"{bests[form] / best_base:.3f}; rounds {min(ratios[form]):.3f}-"
                f"{max(ratios[form]):.3f})"
                for form in forms
            )
            print(
                f"{arch:10s} {layout:13s} F={f_ratio:.3f}  baseline {base:.1f} views/s  "
                f"aa: {shown}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
