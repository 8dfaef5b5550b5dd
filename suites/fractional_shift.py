"""Fractional-shift consistency (Michaeli et al., Alias-Free ConvNets, CVPR 2023).

Protocol (AFC's ``evaluate_consistency_metrics``, reference §1.2): the model's centre
crop x (R256-CC224; the model's own interpolation, bicubic for ConvNeXt) is compared
with x shifted by a half pixel beyond an integer shift: s = (s1, s2), each component
uniform in {-max_shift .. max_shift-1} = {-32..31}, shifted by (s1 + 1/2, s2 + 1/2) with
AFC's operator (up = 2, (a, b) = (2 s1 + 1, 2 s2 + 1)). AFC's operator moves content
toward negative indices; in the roll convention of ``aabench.shifts`` that is a shift by
-(s + fraction), which is what the records' ``dy``/``dx`` hold.

Metrics, each shifted view against its **unshifted** view (not two shifted ones):

- ``consistency``: 1[argmax f(x) = argmax f(x')].
- ``mac`` (mean absolute change): |softmax(f(x))_y - softmax(f(x'))_y| with
  y = argmax f(x), the class the *unshifted* view ranks first (AFC's ``shift_mac``,
  reference §1.2; Azulay & Weiss's MAC, §4.1). In percentage points of probability.
- ``accuracy``: top-1 on x' (AFC's ``shift_accuracy``); ``clean_accuracy`` on x;
  ``degradation`` = (clean_accuracy - accuracy) / clean_accuracy (AFC's relative
  ``shift_accuracy_degredation``).

Operators (``operator``): ``fourier``, the ideal circular band-limited shift AFC uses
(``aabench.shifts.fourier_shift``); ``bilinear``, ``grid_sample`` with
``align_corners=True`` and zero (black) fill, as Engstrom et al.'s code assumes
(``aabench.shifts.bilinear_shift``). Both act on pixel values before normalisation
(which is affine, so for the Fourier shift the order does not matter; for bilinear the
fill is true black, as in MadryLab's [0, 1] space).

Deviation from AFC's code, on purpose: it draws a single s for the whole validation set
(a quirk, §1.2); here s is drawn per image from a generator seeded by (seed, image,
draw), so a run is reproducible and independent of batch size and sharding. ``draws``
shifted views per image (default 1, as AFC). Views are few (1 + draws per image), so the
workers build them on the CPU, as float32 pixel values (rounding a sub-pixel shift back
to uint8 would change it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")
shifts = lazy_module("aabench.shifts")

OPERATORS = ("fourier", "bilinear")


def reference_reduction():
    """A device reduction that also reports each view's probability of the class its
    *reference* view ranks first, for mean absolute change (MAC).

    Views carry metadata ``index`` (their place among the image's views) and ``ref`` (the
    index of their reference view, which comes earlier or is the view itself). Outputs:
    pred, correct, p_true, p_top (own top-1 probability) and p_ref = softmax(f(view))[y]
    with y = argmax f(reference view). Passes come in view order, so a reference has
    always been seen when its views arrive; the top-1 of the latest image's views is
    kept across passes (an image may straddle two passes).
    """
    seen: dict[tuple[int, int], int] = {}

    def reduction(forward, inputs, labels, info):
        logits = forward(inputs).float()
        probs = logits.softmax(dim=1)
        pred = logits.argmax(dim=1)
        positions = np.asarray(info["position"])
        index = np.asarray(info["index"])
        ref = np.asarray(info["ref"])
        for key in [k for k in seen if k[0] < positions.min()]:
            del seen[key]  # images before this pass are finished
        pred_cpu = pred.cpu().numpy()
        ref_class = np.empty(len(pred_cpu), dtype=np.int64)
        for i, (position, own, wanted) in enumerate(zip(positions, index, ref, strict=True)):
            seen[(int(position), int(own))] = int(pred_cpu[i])
            ref_class[i] = seen[(int(position), int(wanted))]
        ref_tensor = torch.as_tensor(ref_class, device=probs.device)[:, None]
        safe = labels.clamp(min=0)[:, None]
        known = labels >= 0
        outputs = {
            "pred": pred,
            "correct": (pred == labels) & known,
            "p_true": torch.where(known, probs.gather(1, safe)[:, 0], torch.nan),
            "p_top": probs.gather(1, pred[:, None])[:, 0],
            "p_ref": probs.gather(1, ref_tensor)[:, 0],
        }
        return {key: value.cpu().numpy() for key, value in outputs.items()}

    return reduction


@dataclass
class FractionalShiftSuite(Suite):
    name = "fractional-shift"
    description = (
        "Fractional-shift consistency (Michaeli et al. 2023, Alias-Free ConvNets): "
        "unshifted vs shifted by (s + 1/2, s + 1/2), s uniform in {-32..31}^2 per image; "
        "top-1 agreement, mean absolute change of the unshifted top-1's probability, "
        "shifted accuracy. operator=fourier (AFC's ideal circular shift) or bilinear "
        "(grid_sample, align_corners=True, black fill, as Engstrom et al.)."
    )
    headline = ("consistency", "mac", "accuracy")
    view_itemsize = 4  # float32 pixel values: rounding a sub-pixel shift would change it
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "consistency": Metric(
            "%", True, "shifted views with the unshifted view's top-1", outcome=True
        ),
        "mac": Metric(
            "%",
            False,
            "mean |p(y | unshifted) - p(y | shifted)|, y = the unshifted view's top-1",
        ),
        "accuracy": Metric("%", True, "top-1 accuracy on the shifted views", outcome=True),
        "clean_accuracy": Metric("%", True, "top-1 accuracy on the unshifted view", outcome=True),
        "degradation": Metric(
            "%", False, "relative accuracy loss: (clean_accuracy - accuracy) / clean_accuracy"
        ),
    }

    operator: str = "fourier"
    fraction: float = 0.5  # sub-pixel part added to the integer shift on both axes
    max_shift: int = 32  # integer part uniform in {-max_shift .. max_shift-1}
    draws: int = 1  # shifted views per image

    def __post_init__(self):
        if self.operator not in OPERATORS:
            raise UserError(
                f"fractional-shift operator must be one of {', '.join(OPERATORS)}, "
                f"got {self.operator!r}"
            )
        for field in ("max_shift", "draws"):
            self.whole_parameter(field, minimum=1)
        self.finite_parameter("fraction")
        if not 0.0 <= self.fraction < 1.0:
            raise UserError(f"fractional-shift fraction must be in [0, 1), got {self.fraction}")

    def check_geometry(self, preprocessing) -> None:
        self.check_within_crop("max_shift", preprocessing)
        super().check_geometry(preprocessing)

    def prepare(self, image, preprocessing):
        return resize_and_center_crop(
            image, preprocessing.resize_size, preprocessing.crop_size, preprocessing.interpolation
        )

    def views_per_image(self) -> int:
        return 1 + self.draws

    def offsets(self, sample, seed: int) -> np.ndarray:
        """draws x 2 shifts (dy, dx) in the roll convention: -(s + fraction)."""
        rng = np.random.default_rng([seed, sample.key, 0])
        integer = rng.integers(-self.max_shift, self.max_shift, size=(self.draws, 2))
        return -(integer + self.fraction)

    def shift(self, x, dy: float, dx: float):
        operator = shifts.fourier_shift if self.operator == "fourier" else shifts.bilinear_shift
        return operator(x, float(dy), float(dx))

    def views(self, image, sample, position, seed):
        x = image.to(torch.float64)[None]  # float64: the operator adds no visible rounding
        drawn = self.offsets(sample, seed)
        views = [x[0]] + [self.shift(x, dy, dx)[0] for dy, dx in drawn]
        count = len(views)
        meta = {
            "draw": np.arange(-1, self.draws),  # -1: the unshifted view
            "dy": np.concatenate([[0.0], drawn[:, 0]]),
            "dx": np.concatenate([[0.0], drawn[:, 1]]),
            "index": np.arange(count),
            "ref": np.zeros(count, dtype=np.int64),
        }
        return Views(torch.stack(views).to(torch.float32), meta)

    def device_reduction(self, module):
        return reference_reduction()

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        ordered = records.sort_values(["sample", "draw"], kind="stable")
        width = 1 + self.draws
        images = ordered["sample"].to_numpy()[::width]
        pred = ordered["pred"].to_numpy().reshape(-1, width)
        correct = ordered["correct"].to_numpy().astype(bool).reshape(-1, width)
        p_top = ordered["p_top"].to_numpy().reshape(-1, width)[:, :1]
        p_ref = ordered["p_ref"].to_numpy().reshape(-1, width)[:, 1:]
        shifted = np.repeat(images, self.draws)
        clean = correct[:, :1]
        return pd.concat(
            [
                term_frame("consistency", shifted, (pred[:, 1:] == pred[:, :1]).ravel()),
                term_frame("mac", shifted, np.abs(p_top - p_ref).ravel()),
                term_frame("accuracy", shifted, correct[:, 1:].ravel()),
                term_frame("clean_accuracy", images, clean[:, 0]),
                term_frame(
                    "degradation",
                    shifted,
                    (clean & ~correct[:, 1:]).ravel().astype(float)
                    - (~clean & correct[:, 1:]).ravel(),
                    np.broadcast_to(clean, correct[:, 1:].shape).ravel(),
                ),
            ],
            ignore_index=True,
        )
