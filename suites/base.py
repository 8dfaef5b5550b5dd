"""What every suite is: a dataclass of protocol parameters that turns one decoded image
into views, and per-view records into tidy metric rows.

A suite never touches devices or files: the engine decodes, batches and runs the model;
the suite only says which views to cut and how to summarise what the model said.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

from aabench.data.folder import Sample
from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.models.preprocessing import MAX_SIDE, Preprocessing

# Imported on first use: `aabench suites` and argument checks must not wait for torch.
pd = lazy_module("pandas")
torch = lazy_module("torch")
TF = lazy_module("torchvision.transforms.functional")

# Record columns of the five top-ranked classes, best first, for suites with ``ranks``.
RANK_COLUMNS = tuple(f"rank_{i}" for i in range(1, 6))

# Sanity bounds of what a suite's parameters may ask per image (check_geometry): the
# published protocols stay far below (worst-shift's 962 views, 33 diagonal crops).
MAX_VIEWS_PER_IMAGE = 100_000
# Views cut on the CPU are held in one piece per image, by a worker and in the loader's
# queue; past this they take the machine's memory, and measure nothing more.
MAX_VIEW_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Metric:
    unit: str
    higher_is_better: bool
    description: str
    # A rate of right/wrong outcomes: paired runs get an exact McNemar test when each
    # image contributes exactly one outcome.
    outcome: bool = False

    @property
    def scale(self) -> float:
        """Fractions are reported in percent."""
        return 100.0 if self.unit == "%" else 1.0


@dataclass
class Views:
    """The views of one image (uint8, N x 3 x H x W) and one metadata value per view."""

    images: torch.Tensor
    meta: dict[str, np.ndarray]
    # Lengths of consecutive runs of views that must share one forward pass (the
    # frames of a sequence), summing to len(images); None: any view may go anywhere.
    groups: list[int] | None = None
    # True: ``images`` is the one source image (1 x C x H x W uint8) and ``meta`` has one
    # entry per view; the engine uploads the image once and makes the views on the
    # device with ``Suite.device_views`` (grids of hundreds of views per image).
    on_device: bool = False


@dataclass
class Suite(abc.ABC):
    """Base class. Subclasses are dataclasses whose field defaults are the published
    protocol; ``--set key=value`` overrides any field."""

    name: ClassVar[str]
    description: ClassVar[str]
    metrics: ClassVar[dict[str, Metric]]
    # Columns that qualify a metric row (offset, corruption, ...), in table order.
    dimensions: ClassVar[tuple[str, ...]] = ()
    # The metrics a comparison report leads with (undimensioned rows). An entry may be a
    # tuple of alternatives: the first the run has is shown. Empty: every undimensioned row.
    headline: ClassVar[tuple[str | tuple[str, ...], ...]] = ()
    # Parameters that say where data lives, not what is measured: two runs that differ
    # only in these still measure the same thing.
    locations: ClassVar[tuple[str, ...]] = ()
    # Whether per-view records carry the five top-ranked classes (rank_1..rank_5).
    ranks: ClassVar[bool] = False

    # Bytes per pixel value of the views ``views`` returns (uint8; float32 suites: 4).
    view_itemsize: ClassVar[int] = 1
    # Whether the views are made on the device from one uploaded image (Views.on_device):
    # then only their count, not their pixels, is held per image.
    views_on_device: ClassVar[bool] = False
    # Whether the suite measures what modules inside the model output (forward hooks):
    # then BatchNorms are not folded into their convolutions (models.folding), which
    # would change what a convolution outputs.
    observes_layers: ClassVar[bool] = False

    def view_size(self, preprocessing: Preprocessing) -> int:
        """The side of the square views the model sees."""
        return preprocessing.crop_size

    def view_size_source(self) -> str | None:
        """The suite's parameter that sets ``view_size`` (for messages); None: none (the
        model's crop sets it)."""
        return None

    def check_geometry(self, preprocessing: Preprocessing) -> None:
        """Refuse, before any image is read, parameters that do not fit the model's
        geometry (a shift larger than its crop) or that would ask an absurd amount of
        work or memory per image. Subclasses check their own sizes, then call this."""
        views = self.views_per_image()
        if views > MAX_VIEWS_PER_IMAGE:
            raise UserError(
                f"{self.name}: these parameters make {views} views per image, more than the "
                f"{MAX_VIEWS_PER_IMAGE} allowed: use smaller counts or shifts"
            )
        if self.views_on_device:
            return
        side = self.view_size(preprocessing)
        size = views * 3 * side * side * self.view_itemsize
        if size > MAX_VIEW_BYTES:
            raise UserError(
                f"{self.name}: these parameters make {views} views of {side} x {side} px per "
                f"image ({size / 1024**3:.1f} GiB), more than the "
                f"{MAX_VIEW_BYTES // 1024**3} GiB an image's views may take: use smaller "
                "counts or shifts"
            )

    def whole_parameter(
        self, field: str, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """The integer field ``field`` in ``[minimum, maximum]``, or one line saying so."""
        value = getattr(self, field)
        label = f"{self.name} {field}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{label} must be a whole number, got {value!r}")
        if minimum is not None and value < minimum:
            raise UserError(f"{label} must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise UserError(f"{label} must be at most {maximum}, got {value}")
        return value

    def finite_parameter(self, field: str) -> float:
        """The float field ``field`` as a finite float (NaN passes every comparison a
        later bound makes, and inf turns sizes into zero)."""
        value = getattr(self, field)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{self.name} {field} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise UserError(f"{self.name} {field} must be a finite number, got {value!r}")
        setattr(self, field, number)
        return number

    def check_within_crop(self, field: str, preprocessing: Preprocessing) -> None:
        """A circular shift ``field`` no larger than the model's crop, the image it rolls:
        a larger roll only repeats a smaller one."""
        crop = preprocessing.crop_size
        value = getattr(self, field)
        if value > crop:
            raise UserError(
                f"{self.name} {field}={value} is larger than the model's crop ({crop} px): "
                f"shifts must fit in the crop; give at most {crop}"
            )

    def check_side(self, field: str, fixed: int, per_unit: int = 1) -> None:
        """The square image the views are cut from, ``fixed + per_unit * field`` px (the
        crop and a margin for the shifts), at most MAX_SIDE: past it that one image takes
        gigabytes (max_shift=100000 would be 30 GB)."""
        value = getattr(self, field)
        side = fixed + per_unit * value
        if side > MAX_SIDE:
            raise UserError(
                f"{self.name} {field}={value} makes the image the views are cut from {side} px "
                f"square, more than the {MAX_SIDE} px allowed: give {field} at most "
                f"{(MAX_SIDE - fixed) // per_unit}"
            )

    def views_from(
        self, images: dict, sample: Sample, position: int, seed: int, preprocessing
    ) -> Views:
        """All views of one sample from its decoded images ({"clean": val image} unless
        the suite reads more, like released ImageNet-C cells)."""
        return self.views(self.prepare(images["clean"], preprocessing), sample, position, seed)

    @abc.abstractmethod
    def prepare(self, image: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
        """Decoded RGB image -> the uint8 C x H x W tensor all views are cut from."""

    def views_per_image(self) -> int:
        """How many views ``views`` returns per image (sizes the loader's batches)."""
        return 1

    @abc.abstractmethod
    def views(self, image: torch.Tensor, sample: Sample, position: int, seed: int) -> Views:
        """All views of one image. ``position``: its place in the evaluated list."""

    @abc.abstractmethod
    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        """Records (per view, or as ``fold_records`` left them) -> additive terms:
        columns sample, metric, <dimensions>, num, den.

        Every metric is scale * sum(num) / sum(den) over its terms. Because the terms
        carry their image, the same definition gives the table's value and, resampled
        over images, the paired bootstrap of `aabench compare`.
        """

    def summarise(self, records: pd.DataFrame) -> list[dict]:
        """Per-view records -> metric rows: {metric, value, n, <dimension>: ...}."""
        return summarise_terms(self, self.terms(records), records["sample"].nunique())

    def fold_records(self, records: pd.DataFrame) -> pd.DataFrame:
        """The records the run keeps of finished images, from their per-view records
        (whole images, by position then view). Default: every view's record.

        The engine calls this as soon as images finish, before their records are kept,
        checkpointed or gathered, so a suite with hundreds of views per image can keep
        one row per image (worst-shift). The result must keep ``sample`` (which maps its
        rows to their images) and the images' order; a row standing for several views
        says how many in a ``views`` column. ``terms`` then reads the folded rows. Must
        handle an empty frame (its columns only) and give the same rows however the
        images were split between calls.
        """
        return records

    def device_views(self, image: torch.Tensor, meta: dict[str, np.ndarray]) -> torch.Tensor:
        """For suites whose ``views`` return ``on_device`` views: the views described by
        ``meta`` (a run of consecutive views of one image, their metadata) made from
        ``image`` (1 x C x H x W float, pixel values 0..255, on the model's device), as
        a float tensor of pixel values on that device; the engine normalises them.

        Called in forward-pass-sized pieces (a pass may take the end of one image's views
        and the start of the next), so a view must depend only on its own metadata.
        """
        raise NotImplementedError(f"suite {self.name} makes no views on the device")

    def device_reduction(self, module):
        """None: the engine reduces each pass's logits to pred, correct, p_true, ...

        Otherwise a callable ``reduction(forward, inputs, labels, info) -> {column:
        array}`` that the engine calls on every forward pass instead: ``forward`` runs the
        model under the run's AMP setting, ``inputs`` are the pass's normalised views on
        the device (exactly ``--batch-size`` of them but for the last), ``labels`` their
        classes, ``info`` each view's image ``position`` and the suite's metadata. It
        returns one value per view per column, which become the per-view records.
        ``module`` (the model on its device, uncompiled) is there to hook into. Passes
        come in view order, and runs are cut only between images.
        """
        return None

    def parameters(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_provenance(cls, provenance: dict) -> Suite:
        """The suite a run used, rebuilt from its provenance (for `aabench compare`)."""
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        return cls(**{k: v for k, v in provenance.get("parameters", {}).items() if k in fields})

    def extra_provenance(self) -> dict:
        """Entries the suite adds to the run's provenance (e.g. a reference run's)."""
        return {}

    def protocol(self) -> dict:
        """The parameters that define what is measured (locations left out)."""
        return {k: v for k, v in self.parameters().items() if k not in self.locations}


def resize_and_center_crop(
    image: Image.Image, resize_size: int, crop_size: int, interpolation: str
) -> torch.Tensor:
    """Resize the short side, centre-crop, and return uint8 C x H x W (no normalisation)."""
    mode = TF.InterpolationMode(interpolation)
    resized = TF.resize(image, resize_size, interpolation=mode)
    cropped = TF.center_crop(resized, crop_size)
    return TF.pil_to_tensor(cropped)


def term_frame(metric: str, sample, num, den=1.0, **dimensions) -> pd.DataFrame:
    """Terms of one metric: one row per entry of ``sample``."""
    frame = pd.DataFrame({"sample": np.asarray(sample), "num": np.asarray(num, dtype=float)})
    frame["den"] = np.broadcast_to(np.asarray(den, dtype=float), len(frame))
    frame.insert(0, "metric", metric)
    for key, value in dimensions.items():
        frame[key] = value
    return frame


def not_computed_row(metric: str, note: str, **dimensions) -> dict:
    """A metric row with no value, saying in ``note`` why it could not be computed."""
    return {"metric": metric, "value": float("nan"), "n": 0, "note": note, **dimensions}


def summarise_terms(suite: Suite, terms: pd.DataFrame, n: int) -> list[dict]:
    """Terms -> metric rows, in the order the terms list them; no row where sum(den) = 0."""
    keys = ["metric", *suite.dimensions]
    for key in suite.dimensions:
        if key not in terms:
            terms = terms.assign(**{key: pd.NA})
    sums = terms.groupby(keys, sort=False, dropna=False)[["num", "den"]].sum()
    rows = []
    for key, (num, den) in sums.iterrows():
        if den == 0:
            continue
        values = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row = {
            "metric": values["metric"],
            "value": suite.metrics[values["metric"]].scale * num / den,
            "n": n,
        }
        row.update({k: v for k, v in values.items() if k != "metric" and not pd.isna(v)})
        rows.append(row)
    return rows
