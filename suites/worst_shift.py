"""Adversarial translation by exhaustive search (AFC, Michaeli et al. CVPR 2023, §1.4-1.5;
Engstrom et al. ICML 2019, §5): an image is robust when the model is right on it
unshifted *and* under every shift of a grid.

Grids (``grid=``), all on the model's crop c (224) of Resize -> CenterCrop:
- ``integer``: circular roll by (i, j), i, j in {1 .. max_shift-1} (AFC: 31^2 = 961).
- ``half``: the ideal circular Fourier shift by (i - 1/2, j - 1/2), same i, j (961); AFC's
  ``subpixel_shift`` moves content opposite to the roll, so here the shift is -(i - 1/2).
- ``fraction``: Fourier shifts {1/3, 2/3}^2 and {1/4, 1/2, 3/4}^2 (AFC max_up = 4: 13),
  in AFC's direction (negative here).
- ``crop``: real content, AFC's crop-shift: the (c + 2m) centre crop E, every c crop
  E[i:i+c, j:j+c] with i, j in {1 .. 2m}: (2m)^2 = 4m^2 crops, displacements {1-m .. m}^2
  from the centre crop (which is one of them, displacement 0).
- ``spatial``: Engstrom's grid: 31 rotations in [-30, 30] deg x 5 x 5 translations in
  +-t (t = 3/28 of the side as a normalised-grid fraction: t (c - 1) = 23.9 px at 224,
  spatial-pytorch's align_corners=True pixels), bilinear, zero fill: 775, identity included.

View 0 is the reference (unshifted / centre crop); the grid follows ordered by Chebyshev
radius, so the first wrong view is the first failure at the smallest radius. The views
are made on the device from the one uploaded image (``Views.on_device``). Every view
runs (no early exit): the per-view records then do not depend on outcomes or batch
size; robust accuracy and the radius curve need only the first failure's radius, so
each finished image's views are folded to one row (``fold_records``) before the
engine keeps, checkpoints or gathers them.
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

GRIDS = ("integer", "half", "fraction", "crop", "spatial")
# Engstrom's translation bound as a fraction of the side: (30 / 10) / 28 (§5.1).
ENGSTROM_TRANSLATION = 3 / 28


@dataclass
class WorstShiftSuite(Suite):
    name = "worst-shift"
    description = (
        "Adversarial translation by exhaustive grid search (AFC, Michaeli et al. 2023; "
        "Engstrom et al. 2019): % of images right unshifted and under every shift of a grid "
        "(integer / half / fraction circular, crop, spatial rotation+translation)."
    )
    headline = ("robust_accuracy", "clean_accuracy")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "robust_accuracy": Metric(
            "%",
            True,
            "images right unshifted and under every shift of the grid (radius r: every "
            "shift of Chebyshev radius <= r)",
            outcome=True,
        ),
        "clean_accuracy": Metric("%", True, "top-1 accuracy on the unshifted view", outcome=True),
    }
    dimensions = ("radius",)
    views_on_device = True

    grid: str = "integer"
    max_shift: int = 32  # integer / half: i, j in {1 .. max_shift-1}
    m: int = 8  # crop: crops from a (c + 2m) centre crop
    max_angle: float = 30.0  # spatial
    angles: int = 31
    max_translation: float = ENGSTROM_TRANSLATION  # spatial, fraction of the side
    translations: int = 5

    def __post_init__(self):
        if self.grid not in GRIDS:
            raise UserError(
                f"worst-shift grid must be one of {', '.join(GRIDS)}, got {self.grid!r}"
            )
        for field in ("max_shift", "m", "angles", "translations"):
            self.whole_parameter(field, minimum=2 if field == "max_shift" else 1)
        for field, bound in (("max_angle", 180.0), ("max_translation", 1.0)):
            if not 0.0 <= self.finite_parameter(field) <= bound:
                raise UserError(
                    f"worst-shift {field} must be in 0 .. {bound:g}, got {getattr(self, field)}"
                )

    def check_geometry(self, preprocessing) -> None:
        if self.grid in ("integer", "half"):
            self.check_within_crop("max_shift", preprocessing)  # circular shifts
        if self.grid == "crop":
            self.check_side("m", preprocessing.crop_size, per_unit=2)
        super().check_geometry(preprocessing)

    # -- the grid ---------------------------------------------------------------------

    def shift_grid(self) -> dict[str, np.ndarray]:
        """The grid's views (reference first), ordered by radius: dy, dx, angle, radius."""
        if self.grid == "spatial":
            angle = np.linspace(-self.max_angle, self.max_angle, self.angles)
            t = np.linspace(-self.max_translation, self.max_translation, self.translations)
            a, ty, tx = (v.reshape(-1) for v in np.meshgrid(angle, t, t, indexing="ij"))
            grid = {"dy": ty, "dx": tx, "angle": a, "radius": np.full(len(a), np.nan)}
            reference = {"dy": 0.0, "dx": 0.0, "angle": 0.0, "radius": 0.0}
            return {k: np.concatenate([[reference[k]], v]) for k, v in grid.items()}
        if self.grid in ("integer", "half"):
            steps = np.arange(1, self.max_shift, dtype=float)
            if self.grid == "half":
                steps = -(steps - 0.5)
            pairs = [(i, j) for i in steps for j in steps]
        elif self.grid == "fraction":
            pairs = [
                (-a / up, -b / up) for up in (3, 4) for a in range(1, up) for b in range(1, up)
            ]
        else:  # crop: displacements i - m for i in {1 .. 2m}
            steps = np.arange(1 - self.m, self.m + 1, dtype=float)
            pairs = [(i, j) for i in steps for j in steps]
        dy, dx = (np.array([p[k] for p in pairs], dtype=float) for k in (0, 1))
        radius = np.maximum(np.abs(dy), np.abs(dx))
        order = np.argsort(radius, kind="stable")
        return {
            "dy": np.concatenate([[0.0], dy[order]]),
            "dx": np.concatenate([[0.0], dx[order]]),
            "angle": np.zeros(len(pairs) + 1),
            "radius": np.concatenate([[0.0], radius[order]]),
        }

    def grid_size(self) -> int:
        """Shifts in the grid (the reference view not counted)."""
        return self.views_per_image() - 1

    def views_per_image(self) -> int:
        if self.grid == "spatial":
            return 1 + self.angles * self.translations**2
        if self.grid in ("integer", "half"):
            return 1 + (self.max_shift - 1) ** 2
        if self.grid == "fraction":
            return 1 + 13
        return 1 + (2 * self.m) ** 2

    # -- views --------------------------------------------------------------------------

    def prepare(self, image, preprocessing):
        crop = preprocessing.crop_size + (2 * self.m if self.grid == "crop" else 0)
        # torchvision's CenterCrop zero-pads a crop larger than the resized image (AFC).
        return resize_and_center_crop(
            image, preprocessing.resize_size, crop, preprocessing.interpolation
        )

    def views(self, image, sample, position, seed):
        grid = self.shift_grid()
        meta = {**grid, "reference": (np.arange(len(grid["dy"])) == 0).astype(np.int64)}
        return Views(image[None], meta, on_device=True)

    def device_views(self, image, meta):
        dy, dx = meta["dy"], meta["dx"]
        if self.grid == "crop":
            size = image.shape[-1] - 2 * self.m
            made = shifts.crops(image, self.m + dy, self.m + dx, size)
            return made  # the reference is the crop at (m, m): exact already
        if self.grid == "integer":
            made = shifts.roll(image, torch.as_tensor(dy), torch.as_tensor(dx))
        elif self.grid == "spatial":
            side = image.shape[-1] - 1  # normalised fraction -> pixels (align_corners=True)
            made = shifts.rotate_translate(
                image,
                torch.as_tensor(meta["angle"]),
                torch.as_tensor(dy * side),
                torch.as_tensor(dx * side),
            )
        else:
            made = shifts.fourier_shift(image, torch.as_tensor(dy), torch.as_tensor(dx))
        reference = torch.as_tensor(meta["reference"], dtype=torch.bool, device=made.device)
        if reference.any():  # the unshifted view exactly, not an FFT round trip
            made[reference] = image[0]
        return made

    # -- metrics ------------------------------------------------------------------------

    def fold_records(self, records: pd.DataFrame) -> pd.DataFrame:
        """Whole images' per-view records -> one row per image: sample, label,
        clean_correct, robust, the first failing shift (first_failure_dy, _dx, _angle,
        _radius; NaN where the image is robust) and views. Only these leave the engine's
        loop: 962 views an image would be 48 M rows for ImageNet val."""
        count = self.views_per_image()
        if len(records) % count:
            raise ValueError(f"worst-shift records of whole images come in {count}s")
        samples = records["sample"].to_numpy()
        if len(samples) and not (samples.reshape(-1, count) == samples[::count, None]).all():
            raise ValueError("worst-shift records must hold each image's views together")
        correct = records["correct"].to_numpy().astype(bool).reshape(-1, count)
        failed = ~correct
        first = np.where(failed.any(axis=1), failed.argmax(axis=1), -1)
        frame = pd.DataFrame(
            {
                "sample": samples[::count],
                "label": np.asarray(records["label"], dtype=np.int64)[::count],
                "clean_correct": correct[:, 0],
                "robust": correct.all(axis=1),
            }
        )
        for key in ("dy", "dx", "angle", "radius"):
            # No images: the engine's empty frame may lack the metadata columns.
            column = records[key] if len(records) else np.zeros(0)
            values = np.asarray(column, dtype=float).reshape(-1, count)
            picked = values[np.arange(len(first)), np.maximum(first, 0)]
            frame[f"first_failure_{key}"] = np.where(first >= 0, picked, np.nan)
        frame["views"] = np.full(len(frame), count, dtype=np.int64)
        return frame

    def per_image(self, records: pd.DataFrame) -> pd.DataFrame:
        """One row per image (``fold_records``'s), from folded or per-view records."""
        return records if "robust" in records else self.fold_records(records)

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        images = self.per_image(records)
        samples = images["sample"].to_numpy()
        frames = [
            term_frame("robust_accuracy", samples, images["robust"]),
            term_frame("clean_accuracy", samples, images["clean_correct"]),
        ]
        radii = self.shift_grid()["radius"]
        if self.grid != "spatial":
            # Robust at r: no failure at radius <= r (the reference has radius 0).
            failure = images["first_failure_radius"].fillna(np.inf).to_numpy()
            for radius in np.unique(radii[radii > 0]):
                frames.append(
                    term_frame("robust_accuracy", samples, failure > radius, radius=_plain(radius))
                )
        return pd.concat(frames, ignore_index=True)


def _plain(value: float):
    """An integer radius as an int (the table reads 3, not 3.0)."""
    return int(value) if float(value).is_integer() else round(float(value), 6)
