"""What the zoo knows about a model name before anything is built: torch-free.

Names:
  ``<arch>``                torchvision baseline, IMAGENET1K_V1 weights (the papers' baselines)
  ``<arch>_aa``             anti-aliased, filter size 4, released ``_lpf4_finetune`` weights
  ``<arch>_aa<k>``          anti-aliased, filter size k, released from-scratch weights where
  ``<arch>_lpf<k>``         they exist (same as ``_aa<k>``); any k in 1..7 for a user checkpoint
  ``torchvision:<name>[.<WEIGHTS>]``  any torchvision classifier (default: its DEFAULT weights)
  ``timm:<name>``           any timm model, with timm's own preprocessing (needs timm)
  ``python:PATH.py:FACTORY``  your own model: a factory returning an nn.Module (or a
  ``python:module:FACTORY``   (module, preprocessing) pair), see aabench.models.custom

Everything for the built-in names (architectures, filter sizes, weights files, URLs,
SHA-256 prefixes, licences, preprocessing) is data here, so `aabench models`, `aabench
weights` and the argument checks of `run` answer without importing torch. Only the
``torchvision:`` and ``timm:`` families ask their library (and so import torch).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from aabench.errors import UserError
from aabench.models import custom, released
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import WeightsSource, cache_dir

TORCHVISION_LICENCE = "BSD-3-Clause (torchvision)"
DEFAULT_FILTER_SIZE = 4
FILTER_SIZES = range(1, 8)
WEIGHTS_URL_ENV = "AABENCH_WEIGHTS_URL"
_AA_NAME = re.compile(r"^(?P<arch>[a-z0-9_]+?)_(?:aa|lpf)(?P<k>\d*)$")

# The 23 architectures of the released checkpoints, in `aabench models` order, with
# torchvision's IMAGENET1K_V1 file of each baseline (all of them: Resize(256) ->
# CenterCrop(224), bilinear, ImageNet mean/std, which is Preprocessing's default).
# tests/benchmark/test_fast_start.py checks both against the builders and torchvision.
TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
BASELINE_FILES: dict[str, str] = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg11": "vgg11-8a719046.pth",
    "vgg11_bn": "vgg11_bn-6002323d.pth",
    "vgg13": "vgg13-19584684.pth",
    "vgg13_bn": "vgg13_bn-abd245e5.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
    "vgg19": "vgg19-dcbb9e9d.pth",
    "vgg19_bn": "vgg19_bn-c79401a0.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "resnext50_32x4d": "resnext50_32x4d-7cdf4587.pth",
    "resnext101_32x8d": "resnext101_32x8d-8ba56ff5.pth",
    "wide_resnet50_2": "wide_resnet50_2-95faca4d.pth",
    "wide_resnet101_2": "wide_resnet101_2-32ee1156.pth",
    "densenet121": "densenet121-a639ec97.pth",
    "densenet169": "densenet169-b2777c0a.pth",
    "densenet201": "densenet201-c1103571.pth",
    "densenet161": "densenet161-8d451a50.pth",
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
}
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(BASELINE_FILES)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the zoo knows about a name before anything is built or loaded."""

    name: str
    family: str  # "antialiased" | "torchvision" | "timm" | "python"
    arch: str
    filter_size: int | None = None
    weights: WeightsSource | None = None  # the default weights; None: none released
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    torchvision_weights: str | None = None  # enum member name, for torchvision models
    factory: custom.FactoryTarget | None = None  # for python: names


def antialiased_spec(arch: str, filter_size: int, finetuned: bool, name: str) -> ModelSpec:
    file_name = released.released_file(arch, filter_size, finetuned)
    source = None
    if file_name:
        source = WeightsSource(
            name=file_name.rsplit("-", 1)[0],
            url=released.BASE_URL + file_name,
            licence=released.LICENCE,
        )
    return ModelSpec(
        name=name, family="antialiased", arch=arch, filter_size=filter_size, weights=source
    )


def baseline_spec(arch: str) -> ModelSpec:
    """A built-in baseline: torchvision's IMAGENET1K_V1 weights, from the table above."""
    source = WeightsSource(
        name=f"{_WEIGHTS_ENUM[arch]}_Weights.IMAGENET1K_V1",
        url=TORCHVISION_BASE_URL + BASELINE_FILES[arch],
        licence=TORCHVISION_LICENCE,
    )
    return ModelSpec(
        name=arch,
        family="torchvision",
        arch=arch,
        weights=source,
        torchvision_weights="IMAGENET1K_V1",
    )


# torchvision's weights enums whose names are not the arch name capitalised.
_WEIGHTS_ENUM = {
    "alexnet": "AlexNet",
    "vgg11_bn": "VGG11_BN",
    "vgg13_bn": "VGG13_BN",
    "vgg16_bn": "VGG16_BN",
    "vgg19_bn": "VGG19_BN",
    **{f"vgg{d}": f"VGG{d}" for d in (11, 13, 16, 19)},
    **{f"resnet{d}": f"ResNet{d}" for d in (18, 34, 50, 101, 152)},
    "resnext50_32x4d": "ResNeXt50_32X4D",
    "resnext101_32x8d": "ResNeXt101_32X8D",
    "wide_resnet50_2": "Wide_ResNet50_2",
    "wide_resnet101_2": "Wide_ResNet101_2",
    **{f"densenet{d}": f"DenseNet{d}" for d in (121, 161, 169, 201)},
    "mobilenet_v2": "MobileNet_V2",
}


def torchvision_spec(name: str, arch: str, weights_name: str | None) -> ModelSpec:
    """A ``torchvision:`` name, from torchvision's own registry (imports torchvision)."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    try:
        member = enum[weights_name] if weights_name else enum.DEFAULT
    except KeyError:
        valid = ", ".join(member.name for member in enum)
        raise UserError(
            f"torchvision has no weights {weights_name!r} for {arch}: use one of {valid}"
        ) from None
    transforms = member.transforms()
    preprocessing = Preprocessing(
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        resize_size=int(transforms.resize_size[0]),
        crop_size=int(transforms.crop_size[0]),
        interpolation=transforms.interpolation.value,
    )
    source = WeightsSource(
        name=f"{enum.__name__}.{member.name}", url=member.url, licence=TORCHVISION_LICENCE
    )
    return ModelSpec(
        name=name,
        family="torchvision",
        arch=arch,
        weights=source,
        preprocessing=preprocessing,
        torchvision_weights=member.name,
    )


def parse_model_name(name: str) -> ModelSpec:
    """The spec of a model name, or a UserError that suggests the closest known names."""
    if name.startswith("torchvision:"):
        arch, _, weights_name = name.removeprefix("torchvision:").partition(".")
        if arch not in torchvision_classifiers():
            raise _unknown(name, arch, torchvision_classifiers(), prefix="torchvision:")
        return torchvision_spec(name, arch, weights_name or None)
    if name.startswith("timm:"):
        return ModelSpec(name=name, family="timm", arch=name.removeprefix("timm:"))
    if custom.is_factory_name(name):
        target = custom.parse_target(name)
        custom.check_target(target)
        return ModelSpec(name=target.factory, family="python", arch=name, factory=target)
    if name in BASELINE_FILES:
        return baseline_spec(name)
    match = _AA_NAME.match(name)
    if match and match["arch"] in BASELINE_FILES:
        arch, digits = match["arch"], match["k"]
        if not digits:
            return antialiased_spec(arch, DEFAULT_FILTER_SIZE, finetuned=True, name=name)
        if int(digits) in FILTER_SIZES:
            return antialiased_spec(arch, int(digits), finetuned=False, name=name)
        raise UserError(f"filter size in {name!r} must be 1..7, e.g. {arch}_aa4")
    raise _unknown(name, name, known_model_names())


def _unknown(name: str, looked_up: str, known: list[str], prefix: str = "") -> UserError:
    close = difflib.get_close_matches(looked_up, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return UserError(
        f"unknown model {name!r}: {hint + ' ' if hint else ''}`aabench models` lists every name"
    )


def torchvision_classifiers() -> list[str]:
    """torchvision's classifier names: asked of torchvision itself, so only for the
    ``torchvision:`` family (it imports torch; `aabench models` does not list them)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


# timm's anti-aliased models (`aabench models --family timm-aa`): BlurPool ResNets
# (resnetblur*), the ResNet-D family built with aa_layer (resnetaa*, seresnetaa*,
# seresnextaa*, resnextaa*) and TResNet, whose stride-2 blocks blur before subsampling.
TIMM_AA_PATTERNS = ("*blur*", "resnetaa*", "resnextaa*", "seresnetaa*", "seresnextaa*", "tresnet*")


def timm_antialiased_models() -> list[ModelSpec]:
    """timm's anti-aliased models, asked of timm (which imports torch)."""
    import importlib

    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise UserError(
            "--family timm-aa lists timm's models, and timm is not installed: "
            "pip install 'aabench[timm]'"
        ) from None
    names = sorted(set(timm.list_models(list(TIMM_AA_PATTERNS))))
    return [ModelSpec(name=f"timm:{n}", family="timm-aa", arch=n) for n in names]


def known_model_names() -> list[str]:
    """Every built-in name: baselines, _aa, and _aa<k> for k in 1..7."""
    names = []
    for arch in ARCHITECTURE_NAMES:
        names += [arch, f"{arch}_aa"] + [f"{arch}_aa{k}" for k in FILTER_SIZES]
    return names


def available_models() -> list[ModelSpec]:
    return [parse_model_name(name) for name in known_model_names()]


def is_cached(spec: ModelSpec, mirror: Path | None = None) -> bool:
    if spec.weights is None:
        return False
    places = ([mirror] if mirror else []) + [cache_dir()]
    return any((place / spec.weights.file_name).exists() for place in places)


def released_hint(spec: ModelSpec) -> str:
    if spec.family != "antialiased":
        return ""
    sizes = [k for k in FILTER_SIZES if released.released_file(spec.arch, k, finetuned=False)]
    names = [f"{spec.arch}_aa"] + [f"{spec.arch}_aa{k}" for k in sizes]
    return f" (released: {', '.join(names)})"


def known_file_names() -> frozenset[str]:
    return frozenset(released.RELEASED_FILES.values())


# ------------------------------------------------------- the release bucket's mirrors


def weights_base_url(explicit: str | None = None) -> str | None:
    """A mirror of the release bucket (``--weights-url`` or ``$AABENCH_WEIGHTS_URL``), or
    None for the bucket itself. Always ends with one slash."""
    chosen = explicit or os.environ.get(WEIGHTS_URL_ENV)
    if not chosen:
        return None
    if not re.match(r"^(https?|file)://", chosen):
        raise UserError(
            f"--weights-url / {WEIGHTS_URL_ENV} {chosen!r} is not an http(s):// or file:// "
            "URL: give the mirror's base, e.g. https://mirror.example/weights_v0.1/"
        )
    return chosen.rstrip("/") + "/"


def from_mirror(source: WeightsSource, base_url: str | None) -> WeightsSource:
    """``source`` with the release bucket's prefix replaced by ``base_url`` (its files
    keep their names, so their SHA-256 prefixes are still verified)."""
    if base_url is None or not source.url.startswith(released.BASE_URL):
        return source
    return replace(source, url=base_url + source.url.removeprefix(released.BASE_URL))


# ---------------------------------------------------------- every released weights file


@dataclass(frozen=True)
class ReleasedWeights:
    """One file a built-in name loads by default, and the names that load it."""

    source: WeightsSource
    family: str  # "antialiased" | "torchvision"
    models: tuple[str, ...]


def released_weights() -> list[ReleasedWeights]:
    """Every released file: the anti-aliased ones, then torchvision's baselines."""
    by_file: dict[str, tuple[WeightsSource, str, list[str]]] = {}
    for spec in available_models():
        if spec.weights is not None:
            entry = by_file.setdefault(spec.weights.file_name, (spec.weights, spec.family, []))
            entry[2].append(spec.name)
    entries = [ReleasedWeights(s, family, tuple(models)) for s, family, models in by_file.values()]
    return sorted(entries, key=lambda entry: entry.family != "antialiased")


def select_released(names: list[str]) -> list[ReleasedWeights]:
    """The files for ``names``: model names, ``all``, or a family (``antialiased``,
    ``torchvision``); a UserError for a name that has no released file."""
    every = released_weights()
    chosen: dict[str, ReleasedWeights] = {}
    for name in names:
        if name == "all":
            matched = every
        elif name in ("antialiased", "torchvision"):
            matched = [entry for entry in every if entry.family == name]
        elif name.startswith("timm:"):
            raise UserError(f"{name}: timm downloads and caches its own weights on first use")
        else:
            spec = parse_model_name(name)
            if spec.weights is None:
                raise UserError(f"no released weights for {name}{released_hint(spec)}")
            matched = [e for e in every if e.source.file_name == spec.weights.file_name] or [
                ReleasedWeights(spec.weights, spec.family, (name,))
            ]
        for entry in matched:
            chosen.setdefault(entry.source.file_name, entry)
    return list(chosen.values())
