"""The random-shift consistency loop as the reference repository's evaluation script
runs it, for timing aabench's shift suite against it on the same images.

    python tools/reference_loop.py --data DIR --model resnet18_aa --batch-size 16

Written from the protocol (shared reference notes, "Random-shift consistency"), not
from the reference's code: torchvision's ImageFolder decoding with PIL, Resize(256),
CenterCrop(256), ToTensor, Normalize, in a DataLoader of contiguous NCHW batches; one
random offset pair per batch; two forward passes of 224 x 224 crops; top-1 agreement.
The model is built by aabench's zoo (random weights: the timing does not depend on
them). Prints one JSON line: views per second (two views per image) and consistency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torchvision import datasets, transforms

from aabench.models.zoo import create_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an ImageFolder (class folders)")
    parser.add_argument("--model", default="resnet18_aa")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--passes", type=int, default=1, help="the reference runs 5")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = create_model(args.model, weights="none").module.eval()
    dataset = datasets.ImageFolder(
        args.data,
        transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(256),
                transforms.ToTensor(),
                transforms.Normalize(MEAN, STD),
            ]
        ),
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=False, num_workers=args.workers
    )
    agree = pairs = 0
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range(args.passes):
            for images, _labels in loader:
                (y0, x0), (y1, x1) = rng.integers(32, size=2), rng.integers(32, size=2)
                first = model(images[:, :, y0 : y0 + 224, x0 : x0 + 224]).argmax(dim=1)
                second = model(images[:, :, y1 : y1 + 224, x1 : x1 + 224]).argmax(dim=1)
                agree += int((first == second).sum())
                pairs += len(images)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "model": args.model,
                "images": pairs,
                "seconds": round(seconds, 3),
                "views_per_s": round(2 * pairs / seconds, 3),
                "consistency": round(100 * agree / max(pairs, 1), 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
