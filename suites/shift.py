"""Random-shift consistency (Zhang 2019): how often two shifted crops get the same label.

Protocol: Resize(256) -> CenterCrop(256); two 224 crops with offsets (dy, dx) uniform in
{0 .. max_shift-1}; 5 passes over the set; score 1 when the top-1 predictions agree.

The reference draws one offset pair per batch of 8 and never seeds its RNG. Here offsets
are drawn per image from a generator seeded by (seed, image, pass), so a run is
reproducible and independent of batch size, worker count and sharding;
``per_batch=true`` draws one pair per block of ``reference_batch`` consecutive images
instead, as the reference does (still seeded).

Circular variants (``mode=circular``): views are ``torch.roll`` shifts, components
uniform in {-max_shift .. max_shift-1}. ``roll_of`` says what is rolled, ``compare_to``
what a shifted view is compared with. Each later paper's protocol is a preset
(``--set preset=NAME``), recorded in the run's protocol as the parameters it resolves to:

- ``zhang`` (the defaults): Zhang 2019, crops of the 256 centre crop, 5 passes.
- ``aps``: Chaman & Dokmanic 2021 (APS, reference §2.1): mode=circular, roll_of=crop
  (the 224 centre crop is rolled), compare_to=shifted (two rolls), epochs=1.
- ``lps``: Rojas-Gomez et al. 2022 (LPS circular consistency, §3.1): mode=circular,
  roll_of=base (the whole 256 = 224 + max_shift centre crop is rolled and the model
  sees 256 x 256), compare_to=shifted, epochs=1.
- ``lps-standard``: LPS's standard consistency (§3.1): Zhang's crops, epochs=1.
- ``afc``: Michaeli et al. 2023 (AFC integer consistency, §1.2): mode=circular,
  roll_of=crop, compare_to=unshifted (member 0 is the unrolled crop, member 1 one roll),
  epochs=1. AFC's code draws one shift for the whole set; here it is drawn per image.

All papers draw shifts per batch (APS seed 0, LPS seeds 42/7/21, AFC seed 0); a preset
keeps the per-image draws (``per_batch`` may still be set).
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
ROLL_OF = ("crop", "base")
COMPARE_TO = ("shifted", "unshifted")
# Each paper's protocol as the parameters it sets (the rest keep their defaults).
PRESETS = {
    "zhang": {"mode": "crop", "roll_of": "crop", "compare_to": "shifted", "epochs": 5},
    "aps": {"mode": "circular", "roll_of": "crop", "compare_to": "shifted", "epochs": 1},
    "lps": {"mode": "circular", "roll_of": "base", "compare_to": "shifted", "epochs": 1},
    "lps-standard": {"mode": "crop", "roll_of": "crop", "compare_to": "shifted", "epochs": 1},
    "afc": {"mode": "circular", "roll_of": "crop", "compare_to": "unshifted", "epochs": 1},
}


@dataclass
class ShiftSuite(Suite):
    name = "shift"
    description = (
        "Random-shift consistency: agreement of predictions on two shifted crops. Geometry "
        "relative to the model's crop c: crops of c from a (c + max_shift) centre crop "
        "(224 of 256 by default); mode=circular rolls the c crop itself. Presets: "
        "preset=aps (Chaman & Dokmanic 2021: two rolls of the 224 crop), lps "
        "(Rojas-Gomez et al. 2022: two rolls of the 256 image, the model sees 256), "
        "lps-standard (LPS: one pass of crops), afc (Michaeli et al. 2023: unshifted vs "
        "one roll of the 224 crop)."
    )
    headline = ("consistency", "accuracy")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "consistency": Metric("%", True, "pairs of shifted views with the same top-1"),
        "accuracy": Metric(
            "%",
            True,
            "top-1 accuracy over all shifted views (compare_to=unshifted: the rolled ones)",
            outcome=True,
        ),
        "consistency_correct": Metric(
            "%", True, "agreement among pairs where at least one view is correct"
        ),
    }

    max_shift: int = 32
    epochs: int = 5
    per_batch: bool = False
    reference_batch: int = 8  # images sharing one offset pair when per_batch is on
    mode: str = "crop"  # "crop": crops of a 256 image; "circular": torch.roll of the 224 crop
    roll_of: str = "crop"  # circular: roll the model's crop ("crop") or the 256 base ("base")
    compare_to: str = "shifted"  # circular: a second roll ("shifted") or the unrolled view
    preset: str = ""  # a paper's protocol (PRESETS); "" sets nothing

    def __post_init__(self):
        if self.preset:
            if self.preset not in PRESETS:
                raise UserError(
                    f"shift preset must be one of {', '.join(PRESETS)}, got {self.preset!r}"
                )
            defaults = ShiftSuite.__dataclass_fields__
            for key, value in PRESETS[self.preset].items():
                current = getattr(self, key)
                if current != value and current != defaults[key].default:
                    raise UserError(
                        f"shift preset {self.preset} sets {key}={value}, but {key}={current} "
                        f"was given: drop one of them"
                    )
                setattr(self, key, value)
        for field, allowed in (("roll_of", ROLL_OF), ("compare_to", COMPARE_TO)):
            if getattr(self, field) not in allowed:
                raise UserError(
                    f"shift {field} must be one of {', '.join(allowed)}, "
                    f"got {getattr(self, field)!r}"
                )
        if self.mode == "crop" and (self.roll_of, self.compare_to) != ("crop", "shifted"):
            raise UserError(
                "shift roll_of=base and compare_to=unshifted need mode=circular "
                "(crops have no unshifted view and roll nothing)"
            )
        if self.mode not in MODES:
            raise UserError(f"shift mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for field in ("max_shift", "epochs", "reference_batch"):
            self.whole_parameter(field, minimum=1)

    def check_geometry(self, preprocessing) -> None:
        if self.mode == "circular" and self.roll_of == "crop":
            self.check_within_crop("max_shift", preprocessing)
        else:  # crops of, or rolls of, the crop plus a max_shift margin
            self.check_side("max_shift", preprocessing.crop_size)
        super().check_geometry(preprocessing)

    def view_size(self, preprocessing) -> int:
        rolls_base = self.mode == "circular" and self.roll_of == "base"
        return preprocessing.crop_size + (self.max_shift if rolls_base else 0)

    def protocol(self) -> dict:
        """A preset is its resolved parameters: the preset's name is left out, so a run
        with preset=aps and one that sets the same parameters measure the same thing.
        ``roll_of`` and ``compare_to`` at their defaults are what every run measured
        before they existed, and are left out too: earlier runs stay comparable."""
        left_out = {("roll_of", "crop"), ("compare_to", "shifted")}
        return {
            k: v for k, v in super().protocol().items() if k != "preset" and (k, v) not in left_out
        }

    def prepare(self, image, preprocessing):
        crop = preprocessing.crop_size
        rolls_crop = self.mode == "circular" and self.roll_of == "crop"
        base = crop if rolls_crop else crop + self.max_shift
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
                elif self.compare_to == "unshifted" and member == 0:
                    dy = dx = 0
                    views.append(image)
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
        if self.compare_to == "unshifted":
            # Accuracy on the rolled views only (AFC's shift_accuracy).
            accuracy = term_frame("accuracy", pair_sample, correct[:, 1])
        else:
            accuracy = term_frame("accuracy", ordered["sample"], ordered["correct"])
        return pd.concat(
            [
                term_frame("consistency", pair_sample, agree),
                accuracy,
                term_frame("consistency_correct", pair_sample, agree & either, either),
            ],
            ignore_index=True,
        )
