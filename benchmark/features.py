"""Feature maps inside a network, for the per-layer shift-equivariance profile (Zhang
2019, Fig. 5): which layers change resolution, their outputs caught with forward hooks
(the model is never edited), the circular bilinear upsampler, and the distances between
F(shift(x)) and shift(F(x)) computed on the device, a few numbers per view.

The upsampler is the one of adobe/antialiased-cnns issue #41: a 2x step turns
(A, B, C, D) into (A, (A+B)/2, B, (B+C)/2, C, (C+D)/2, D, (D+A)/2), circularly, and is
applied recursively for factors 4, 8, 16, ... That recursion is circular linear
interpolation with sample k at position s*k; other integer factors use that
interpolation directly, a 1-pixel map is a constant, and a map whose size does not
divide the input's is refused (its pixels sit at no integer grid of the input).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aabench.errors import UserError

INPUT_SUFFIX = ":input"
# Elements of one temporary tensor in the distance computation (views x channels x h x
# w, cut into chunks of views): bounds the memory one layer takes however large the batch.
CHUNK_ELEMENTS = 2**25
GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Layer:
    """A module's output (the default) or, with ``input``, what it receives."""

    name: str
    input: bool = False

    @property
    def label(self) -> str:
        return self.name + INPUT_SUFFIX if self.input else self.name

    @staticmethod
    def parse(text: str) -> Layer:
        text = text.strip()
        if text.endswith(INPUT_SUFFIX):
            return Layer(text.removesuffix(INPUT_SUFFIX), input=True)
        return Layer(text)


@dataclass(frozen=True)
class Call:
    """One module's first call in a probe forward pass: names and tensor shapes."""

    name: str
    linear: bool
    input_shape: tuple[int, ...] | None
    output_shape: tuple[int, ...] | None


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, list | tuple) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def probe(module: nn.Module, forward: Callable, example: torch.Tensor) -> list[Call]:
    """Every module's first call during ``forward(example)``, in the order they ran."""
    calls: dict[str, Call] = {}

    def recorder(name: str, sub: nn.Module):
        def record(_, args, output):
            if name in calls:
                return
            inp, out = _first_tensor(args), _first_tensor(output)
            calls[name] = Call(
                name,
                isinstance(sub, nn.Linear),
                tuple(inp.shape) if inp is not None else None,
                tuple(out.shape) if out is not None else None,
            )

        return record

    handles = [
        sub.register_forward_hook(recorder(name, sub))
        for name, sub in module.named_modules()
        if name
    ]
    try:
        forward(example)
    finally:
        for handle in handles:
            handle.remove()
    return list(calls.values())


def is_leaf(module: nn.Module, name: str) -> bool:
    return not any(True for _ in module.get_submodule(name).children())


def downsampling_layers(module: nn.Module, calls: list[Call]) -> list[Layer]:
    """The layers that change resolution, in the order they run: leaf modules (convs,
    pools, BlurPool; not the blocks holding them) whose 4-d output has at most half
    (rounded up) the rows or the columns of their 4-d input; then the final feature
    vector, the input of the last nn.Linear to run (a global pool just before it gives
    that same feature, so it is left out)."""
    layers = []
    linears = [c for c in calls if c.linear and c.input_shape and len(c.input_shape) == 2]
    for call in calls:
        inp, out = call.input_shape, call.output_shape
        if not (inp and out and len(inp) == 4 and len(out) == 4 and is_leaf(module, call.name)):
            continue
        sub = module.get_submodule(call.name)
        if linears and out[2:] == (1, 1) and isinstance(sub, GLOBAL_POOLS):
            continue  # the pooled feature: measured as the final nn.Linear's input
        # At least halved along one axis (ceil(n/2): padded stride 2): a stride-1
        # pool of kernel 2 loses a pixel but does not change resolution.
        smaller = out[2] < inp[2] or out[3] < inp[3]
        if smaller and (2 * out[2] <= inp[2] + 1 or 2 * out[3] <= inp[3] + 1):
            layers.append(Layer(call.name))
    if linears:
        layers.append(Layer(linears[-1].name, input=True))
    return layers


def choose_layers(
    module: nn.Module, forward: Callable, example: torch.Tensor, requested: list[str] | None
) -> list[Layer]:
    """``requested`` (layer labels) checked against the model, or the discovered layers;
    every map must be a vector or a 4-d map whose size divides the input's."""
    calls = {call.name: call for call in probe(module, forward, example)}
    found = downsampling_layers(module, list(calls.values()))
    if requested is None:
        layers = found
        if not layers:
            raise UserError(
                "the model has no layer that changes resolution and no final nn.Linear: "
                "name the layers to measure with --set layers=name,name (module names "
                "as in named_modules(); name:input for what a module receives)"
            )
    else:
        layers = [Layer.parse(text) for text in requested]
        names = dict(module.named_modules())
        for layer in layers:
            if layer.name not in names or not layer.name:
                close = difflib.get_close_matches(layer.name, [n for n in names if n], n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UserError(
                    f"--set layers: the model has no module {layer.name!r}{hint}; found "
                    f"automatically: {', '.join(x.label for x in found) or 'none'}"
                )
            if layer.name not in calls:
                raise UserError(f"--set layers: module {layer.name!r} never runs in forward()")
    size = tuple(example.shape[-2:])
    for layer in layers:
        call = calls[layer.name]
        shape = call.input_shape if layer.input else call.output_shape
        if shape is None or len(shape) not in (2, 4):
            raise UserError(
                f"layer {layer.label} gives {'no tensor' if shape is None else shape}: "
                "only feature maps (N x C x H x W) and vectors (N x D) can be measured"
            )
        if len(shape) == 4 and (size[0] % shape[2] or size[1] % shape[3]):
            raise UserError(
                f"layer {layer.label}'s {shape[2]}x{shape[3]} map does not divide the "
                f"{size[0]}x{size[1]} input, so it cannot be upsampled back onto the "
                "input's grid: leave it out with --set layers=<the layers to measure>, or "
                "use a crop size every layer's size divides"
            )
    return layers


def upsample_axis(x: torch.Tensor, dim: int, target: int) -> torch.Tensor:
    """Circular linear upsampling of one axis by an integer factor (see the module doc)."""
    size = x.shape[dim]
    if target % size:
        raise ValueError(f"cannot upsample {size} to {target}: not an integer factor")
    factor = target // size
    if factor == 1:
        return x
    if size == 1:
        return x.expand(*x.shape[:dim], target, *x.shape[dim + 1 :])
    if factor & (factor - 1) == 0:  # a power of 2: the documented recursive 2x steps
        while x.shape[dim] < target:
            middle = (x + x.roll(-1, dim)) / 2
            x = torch.stack((x, middle), dim=dim + 1).flatten(dim, dim + 1)
        return x
    index = torch.arange(target, device=x.device)
    left = index // factor
    weight = (index % factor).to(x.dtype) / factor
    shape = [1] * x.dim()
    shape[dim] = target
    weight = weight.view(shape)
    lower, upper = x.index_select(dim, left), x.index_select(dim, (left + 1) % size)
    return lower * (1 - weight) + upper * weight


def circular_upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x h x w -> N x C x H x W by the circular bilinear rule."""
    return upsample_axis(upsample_axis(x, 2, size[0]), 3, size[1])


def shift_distances(
    features: torch.Tensor,
    references: torch.Tensor,
    image_of_view: np.ndarray,
    shifts: np.ndarray,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per view i: a = roll(F~(x), shift_i), b = F~(roll(x, shift_i)) on the input's grid,
    normalised L2 ||a - b|| / ||a|| and cosine distance 1 - <a, b> / (||a|| ||b||).

    ``features``: F(roll(x, shift_i)) per view (N x C x h x w, or N x D for a vector,
    whose roll is itself); ``references``: F(x) of each image, indexed by
    ``image_of_view``; ``shifts``: N x 2 (dh, dw) of each view's input roll, so that
    out[i, j] = x[i - dh, j - dw]. A 1 x 1 map is a vector (its upsampling is constant).

    Nothing is made at full resolution: with U the upsampler of one axis and R the roll,
    <R U g, U f> = <g, (R U)^T U f> along each axis, so the three sums ||a||^2, ||b||^2,
    <a, b> are small matrix products at the layer's own size, in float64 (||a - b||^2 is
    their difference), on views in chunks of at most CHUNK_ELEMENTS elements.
    """
    count = features.shape[0]
    device = features.device
    sums = torch.zeros(4, count, dtype=torch.float64, device=device)  # |a-b|², |a|², |b|², <a,b>
    index = torch.as_tensor(image_of_view, device=device)
    if features.dim() == 2 or features.shape[-2:] == (1, 1):
        b = features.reshape(count, -1).double()
        a = references.reshape(references.shape[0], -1).double()[index]
        sums[0] = (a - b).square().sum(1)
        sums[1], sums[2], sums[3] = a.square().sum(1), b.square().sum(1), (a * b).sum(1)
        return _distances(sums)
    _, channels, height, width = features.shape
    rows = _shifted_grams(height, size[0], device)  # [dh] = (R_dh U)^T U
    cols = _shifted_grams(width, size[1], device)
    dh = torch.as_tensor(shifts[:, 0], device=device)
    dw = torch.as_tensor(shifts[:, 1], device=device)
    gram_rows, gram_cols = rows[0], cols[0]  # U^T U

    def form(left, x, right):  # left @ x @ right per channel: x N x C x h x w
        return torch.matmul(torch.matmul(left, x), right)

    reference = references.double()
    norm_reference = (reference * form(gram_rows, reference, gram_cols)).sum((1, 2, 3))
    chunk = max(1, CHUNK_ELEMENTS // (channels * height * width))
    for start in range(0, count, chunk):
        views = slice(start, min(count, start + chunk))
        f = features[views].double()
        g = reference[index[views]]
        # <a, b> = <g, (R_dh U_h)^T U_h f U_w^T (R_dw U_w)>, per channel.
        cross = form(rows[dh[views]][:, None], f, cols[dw[views]].transpose(1, 2)[:, None])
        sums[3, views] = (g * cross).sum((1, 2, 3))
        sums[2, views] = (f * form(gram_rows, f, gram_cols)).sum((1, 2, 3))
    sums[1] = norm_reference[index]
    sums[0] = (sums[1] + sums[2] - 2 * sums[3]).clamp(min=0)
    return _distances(sums)


_GRAMS: dict[tuple[int, int, str], torch.Tensor] = {}


def _shifted_grams(size: int, target: int, device: torch.device) -> torch.Tensor:
    """target x size x size: [d] = (R_d U)^T U for the upsampler U of one axis (size ->
    target) and every roll d of the upsampled axis; computed once per (size, target)."""
    key = (size, target, str(device))
    if key not in _GRAMS:
        upsampler = upsample_axis(torch.eye(size, dtype=torch.float64), 0, target)  # target x size
        rolled = upsampler[(torch.arange(target)[None, :] - torch.arange(target)[:, None]) % target]
        _GRAMS[key] = torch.einsum("dik,il->dkl", rolled, upsampler).to(device)
    return _GRAMS[key]


def _distances(sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    difference, norm_a, norm_b, dot = sums
    # All-zero features: equal (0) when both are zero; L2 undefined (NaN) when only the
    # reference is; cosine 1 (orthogonal) when one is.
    l2 = torch.where(norm_a > 0, difference.sqrt() / norm_a.sqrt().clamp(min=1e-300), torch.nan)
    l2 = torch.where((norm_a == 0) & (difference == 0), 0.0, l2)
    both = norm_a * norm_b
    cosine = torch.where(both > 0, (1 - dot / both.sqrt().clamp(min=1e-300)).clamp(min=0), 1.0)
    cosine = torch.where((norm_a == 0) & (norm_b == 0), 0.0, cosine)
    return l2, cosine


class ShiftEquivariance:
    """The equivariance suite's device-side reduction (see ``Suite.device_reduction``).

    Views are circular rolls of one image, the (0, 0) roll first; each image's
    reference F(x) is that first view's features, kept at their own resolution until
    the image's last view has run (views come in order, and runs are cut only at image
    boundaries, so the reference is always in this pass or the previous ones).
    Distances are computed inside forward hooks, layer by layer, as the layers run:
    only the pass's own activations and the references are held.
    """

    def __init__(
        self,
        module: nn.Module,
        requested: list[str] | None,
        columns: Callable[[str], tuple[str, str]],
        check: Callable[[list[Layer]], None] | None = None,
    ):
        self.module = module
        self.requested = requested
        self.columns = columns  # layer label -> (l2 column, cosine column)
        self.check = check
        self.layers: list[Layer] | None = None
        self.references: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, forward, inputs, labels, views: dict[str, np.ndarray]) -> dict:
        if self.layers is None:
            self.layers = choose_layers(self.module, forward, inputs[:1], self.requested)
            if self.check:
                self.check(self.layers)
        positions = np.asarray(views["position"])
        shifts = np.stack([np.asarray(views["dh"]), np.asarray(views["dw"])], axis=1)
        own = {int(positions[i]): i for i in np.flatnonzero((shifts == 0).all(axis=1))}
        images = list(dict.fromkeys(int(p) for p in positions))
        lost = [p for p in images if p not in own and p not in self.references]
        if lost:
            raise RuntimeError(f"equivariance: no (0, 0) view before the views of image {lost}")
        image_of_view = np.searchsorted(np.array(images), positions)  # images ascend
        size = tuple(inputs.shape[-2:])
        results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        fresh: dict[int, dict[str, torch.Tensor]] = {p: {} for p in own}

        def measure(layer: Layer, tensor: torch.Tensor) -> None:
            if layer.label in results:  # a module called twice: its first call counts
                return
            with torch.autocast(tensor.device.type, enabled=False):
                features = tensor.detach()
                references = torch.stack(
                    [
                        features[own[p]] if p in own else self.references[p][layer.label]
                        for p in images
                    ]
                )
                for p, i in own.items():
                    fresh[p][layer.label] = features[i].clone()
                results[layer.label] = shift_distances(
                    features, references, image_of_view, shifts, size
                )

        handles = []
        for layer in self.layers:
            sub = self.module.get_submodule(layer.name)
            if layer.input:
                hook = sub.register_forward_pre_hook(
                    lambda _, args, layer=layer: measure(layer, _first_tensor(args))
                )
            else:
                hook = sub.register_forward_hook(
                    lambda _, args, out, layer=layer: measure(layer, _first_tensor(out))
                )
            handles.append(hook)
        try:
            forward(inputs)
        finally:
            for handle in handles:
                handle.remove()
        # Images before this pass's first are finished: their references go.
        self.references = {p: r for p, r in self.references.items() if p >= images[0]}
        self.references.update(fresh)
        outputs = {}
        for layer in self.layers:
            if layer.label not in results:
                raise UserError(f"layer {layer.label} did not run in this forward pass")
            l2, cosine = results[layer.label]
            l2_column, cosine_column = self.columns(layer.label)
            outputs[l2_column] = l2
            outputs[cosine_column] = cosine
        # One device sync; float32 keeps 7 digits, plenty for a distance, and halves the
        # samples file (64 rows per image).
        stacked = torch.stack(list(outputs.values())).float().cpu().numpy()
        return dict(zip(outputs, stacked, strict=True))
