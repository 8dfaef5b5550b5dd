"""Random-shift consistency (Zhang 2019): how often two shifted crops get the same label.

Protocol: Resize(256) -> CenterCrop(256); two 224 crops with offsets (dy, dx) uniform in
{0 .. max_shift-1}; 5 passes over the set; score 1 when the top-1 predictions agree.

The reference draws one offset pair per batch of 8 and never seeds its RNG. Here offsets
are drawn per image from a generator seeded by (seed, image, pass), so a run is
reproducible and independent of batch size, worker count and sharding;
``per_batch=true`` draws one pair per block of ``reference_batch`` consecutive images
instead, as the reference does (still seeded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")

MODES = ("crop", "circular")


@dataclass
class ShiftSuite(Suite):
    name = "shift"
    description = (
        "Random-shift consistency: agreement of predictions on two shifted crops. Geometry "
        "relative to the model's crop c: crops of c from a (c + max_shift) centre crop "
        "(224 of 256 by default); mode=circular rolls the c crop itself."
    )
    headline = ("consistency", "accuracy")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "consistency": Metric("%", True, "pairs of shifted views with the same top-1"),
        "accuracy": Metric("%", True, "top-1 accuracy over all shifted views", outcome=True),
        "consistency_correct": Metric(
            "%", True, "agreement among pairs where at least one view is correct"
        ),
    }

    max_shift: int = 32
    epochs: int = 5
    per_batch: bool = False
    reference_batch: int = 8  # images sharing one offset pair when per_batch is on
    mode: str = "crop"  # "crop": crops of a 256 image; "circular": torch.roll of the 224 crop

    def __post_init__(self):
        if self.mode not in MODES:
            raise UserError(f"shift mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for field in ("max_shift", "epochs", "reference_batch"):
            if getattr(self, field) < 1:
                raise UserError(f"shift {field} must be at least 1, got {getattr(self, field)}")

    def prepare(self, image, preprocessing):
        crop = preprocessing.crop_size
        base = crop + self.max_shift if self.mode == "crop" else crop
        # Resize(256) -> CenterCrop(256) for the protocol's 224 crops; never a resize
        # smaller than the crop (it would pad the views with black).
        resize = max(preprocessing.resize_size, base)
        return resize_and_center_crop(image, resize, base, preprocessing.interpolation)

    def offsets(self, sample, position: int, seed: int, epoch: int) -> np.ndarray:
        """(dy1, dx1, dy2, dx2) for one pass over one image."""
        if self.per_batch:
            rng = np.random.default_rng([seed, epoch, position // self.reference_batch, 1])
        else:
            rng = np.random.default_rng([seed, sample.key, epoch, 0])
        if self.mode == "crop":
            return rng.integers(0, self.max_shift, size=4)
        return rng.integers(-self.max_shift, self.max_shift, size=4)

    def views_per_image(self) -> int:
        return 2 * self.epochs

    def views(self, image, sample, position, seed):
        crop = image.shape[-1] - self.max_shift if self.mode == "crop" else image.shape[-1]
        views, meta = [], {"epoch": [], "member": [], "dy": [], "dx": []}
        for epoch in range(self.epochs):
            drawn = self.offsets(sample, position, seed, epoch)
            for member, (dy, dx) in enumerate((drawn[:2], drawn[2:])):
                if self.mode == "crop":
                    views.append(image[:, dy : dy + crop, dx : dx + crop])
                else:
                    views.append(torch.roll(image, shifts=(int(dy), int(dx)), dims=(1, 2)))
                for key, value in (("epoch", epoch), ("member", member), ("dy", dy), ("dx", dx)):
                    meta[key].append(value)
        return Views(torch.stack(views), {k: np.asarray(v) for k, v in meta.items()})

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        ordered = records.sort_values(["sample", "epoch", "member"], kind="stable")
        preds = ordered["pred"].to_numpy().reshape(-1, 2)
        correct = ordered["correct"].to_numpy().reshape(-1, 2).astype(bool)
        pair_sample = ordered["sample"].to_numpy()[::2]
        agree = preds[:, 0] == preds[:, 1]
        either = correct.any(axis=1)
        return pd.concat(
            [
                term_frame("consistency", pair_sample, agree),
                term_frame("accuracy", ordered["sample"], ordered["correct"]),
                term_frame("consistency_correct", pair_sample, agree & either, either),
            ],
            ignore_index=True,
        )
