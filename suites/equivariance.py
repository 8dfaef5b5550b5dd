"""Per-layer shift-equivariance (Zhang 2019, Fig. 5): where in the network shifting the
input stops being the same as shifting the features.

Input: the accuracy protocol's image, Resize(256) -> CenterCrop(224) (the model's own
sizes), rolled circularly (torch.roll) by every (dh, dw) in {0 .. max_shift-1}^2, the
(0, 0) roll first. At each measured layer F, per view: a = roll(F~(x), (dh, dw)) and
b = F~(roll(x, (dh, dw))), with F's maps upsampled onto the input's grid by the circular
bilinear 2x steps of adobe/antialiased-cnns #41 (aabench.features); for a vector (the
final pooled feature) shift(F(x)) = F(x). Distances: normalised L2 ||a - b|| / ||a|| and
cosine distance 1 - cos(a, b), averaged over images and offsets.

Layers (``layers=auto``): every leaf module whose output is spatially smaller than its
input (stride-2 convs, pools, BlurPool), in the order they run, then the final feature
vector (the input of the last nn.Linear, unless a global pool already gave a 1 x 1
map); ``layers=name,name`` chooses (``name:input`` for what a module receives).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites.base import Metric, Suite, Views, resize_and_center_crop, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")
features = lazy_module("aabench.features")

METRICS = ("l2_distance", "cosine_distance")
_COLUMN = re.compile(r"^(l2_distance|cosine_distance)\[(.+)\]$")


def column(metric: str, layer: str) -> str:
    """The samples file's column of one metric at one layer: ``l2_distance[conv1]``."""
    return f"{metric}[{layer}]"


def layers_in(records: pd.DataFrame) -> list[str]:
    """The measured layers, in network order (the order of the records' columns)."""
    found = [m.group(2) for c in records.columns if (m := _COLUMN.match(str(c)))]
    return list(dict.fromkeys(found))


@dataclass
class EquivarianceSuite(Suite):
    name = "equivariance"
    description = (
        "Per-layer shift-equivariance: distance between F(shift x) and shift F(x) at "
        "every downsampling layer, over a grid of circular shifts."
    )
    headline = ("l2_distance", "cosine_distance")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "l2_distance": Metric(
            "ratio",
            False,
            "||shift F(x) - F(shift x)|| / ||F(x)|| on the input grid; blank layer: "
            "the mean over layers",
        ),
        "cosine_distance": Metric(
            "1 - cos",
            False,
            "1 - cos(shift F(x), F(shift x)) on the input grid; blank layer: the mean over layers",
        ),
    }
    dimensions = ("layer", "depth", "dh", "dw")
    observes_layers = True

    max_shift: int = 8  # offsets (dh, dw) in {0 .. max_shift-1}^2
    layers: str = "auto"  # or name,name (module names; name:input for a module's input)
    # The layers with per-(dh, dw) rows in the table (the heatmap): a depth (1 = first
    # measured layer; past the last: the last), a layer name, "all" or "none". Depth 2:
    # the anti-aliased ResNets, DenseNets and MobileNet keep the plain strided first
    # conv, so depth 1 is the same layer in both; depth 2 is the first that differs.
    heatmap: str = "2"

    def __post_init__(self):
        self.whole_parameter("max_shift", minimum=1)
        if not self.requested_layers() and self.layers.strip() != "auto":
            raise UserError("equivariance layers: give auto or module names, e.g. conv1,maxpool")
        if not self.heatmap.strip():
            raise UserError("equivariance heatmap: give a depth, a layer name, all or none")

    def check_geometry(self, preprocessing) -> None:
        self.check_within_crop("max_shift", preprocessing)
        super().check_geometry(preprocessing)

    def requested_layers(self) -> list[str] | None:
        if self.layers.strip() == "auto":
            return None
        return [name.strip() for name in self.layers.split(",") if name.strip()]

    def heatmap_layers(self, layers: list[str]) -> list[str]:
        """The layers whose per-offset map goes into the table."""
        choice = self.heatmap.strip()
        if choice == "none" or not layers:
            return []
        if choice == "all":
            return list(layers)
        if choice.isdigit():
            if int(choice) < 1:
                raise UserError(f"equivariance heatmap depth starts at 1, got {choice}")
            return [layers[min(int(choice), len(layers)) - 1]]
        if choice not in layers:
            raise UserError(
                f"equivariance heatmap={choice!r} is not a measured layer: the layers are "
                f"{', '.join(layers)} (or give a depth, all or none)"
            )
        return [choice]

    def prepare(self, image, preprocessing):
        return resize_and_center_crop(
            image,
            preprocessing.resize_size,
            preprocessing.crop_size,
            preprocessing.interpolation,
        )

    def views_per_image(self) -> int:
        return self.max_shift**2

    def offsets(self) -> np.ndarray:
        """(dh, dw) per view, row-major, (0, 0) first."""
        grid = np.arange(self.max_shift)
        return np.stack(np.meshgrid(grid, grid, indexing="ij"), axis=-1).reshape(-1, 2)

    def views(self, image, sample, position, seed):
        offsets = self.offsets()
        rolled = [torch.roll(image, shifts=(int(dh), int(dw)), dims=(1, 2)) for dh, dw in offsets]
        return Views(torch.stack(rolled), {"dh": offsets[:, 0], "dw": offsets[:, 1]})

    def device_reduction(self, module):
        def check(layers) -> None:  # on the first pass, not after the whole run
            self.heatmap_layers([layer.label for layer in layers])

        return features.ShiftEquivariance(
            module,
            self.requested_layers(),
            columns=lambda layer: (column("l2_distance", layer), column("cosine_distance", layer)),
            check=check,
        )

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        layers = layers_in(records)
        mapped = set(self.heatmap_layers(layers))
        samples = records["sample"].to_numpy()
        overall, per_layer, heatmap = [], [], []
        for depth, layer in enumerate(layers, start=1):
            for metric in METRICS:
                values = records[column(metric, layer)].to_numpy(dtype=float)
                overall.append(term_frame(metric, samples, values))
                per_layer.append(term_frame(metric, samples, values, layer=layer, depth=depth))
                if layer in mapped:
                    heatmap.append(
                        term_frame(
                            metric,
                            samples,
                            values,
                            layer=layer,
                            depth=depth,
                            dh=records["dh"].to_numpy(dtype=int),
                            dw=records["dw"].to_numpy(dtype=int),
                        )
                    )
        frames = overall + per_layer + heatmap
        if not frames:
            return pd.DataFrame(columns=["sample", "metric", *self.dimensions, "num", "den"])
        return pd.concat(frames, ignore_index=True)
