"""Model names -> a module in eval mode, its preprocessing and a record of its weights.

Names:
  ``<arch>``                torchvision baseline, IMAGENET1K_V1 weights (the papers' baselines)
  ``<arch>_aa``             anti-aliased, filter size 4, released ``_lpf4_finetune`` weights
  ``<arch>_aa<k>``          anti-aliased, filter size k, released from-scratch weights where
  ``<arch>_lpf<k>``         they exist (same as ``_aa<k>``); any k in 1..7 for a user checkpoint
  ``torchvision:<name>[.<WEIGHTS>]``  any torchvision classifier (default: its DEFAULT weights)
  ``timm:<name>``           any timm model, with timm's own preprocessing (needs timm)
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torchvision
from torch import nn

from aabench.errors import UserError
from aabench.models import released
from aabench.models.antialiased import ARCHITECTURES, build_antialiased
from aabench.models.blurpool import FILTER_SIZES
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import (
    RANDOM_WEIGHTS,
    WeightsRecord,
    WeightsSource,
    cache_dir,
    checkpoint_filter_size,
    load_strict,
    read_state_dict,
    resolve_source,
    resolve_user_weights,
    weights_dir,
)

TORCHVISION_LICENCE = "BSD-3-Clause (torchvision)"
DEFAULT_FILTER_SIZE = 4
_AA_NAME = re.compile(r"^(?P<arch>[a-z0-9_]+?)_(?:aa|lpf)(?P<k>\d*)$")
# torchvision's DenseNet files predate its module names: "norm.1" for "norm1", etc.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class ModelSpec:
    """Everything the zoo knows about a name before anything is built or loaded."""

    name: str
    family: str  # "antialiased" | "torchvision" | "timm"
    arch: str
    filter_size: int | None = None
    weights: WeightsSource | None = None  # the default weights; None: none released
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    torchvision_weights: str | None = None  # enum member name, for torchvision models


@dataclass
class LoadedModel:
    spec: ModelSpec
    module: nn.Module
    preprocessing: Preprocessing
    weights: WeightsRecord

    @property
    def name(self) -> str:
        return self.spec.name


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


def torchvision_spec(name: str, arch: str, weights_name: str | None) -> ModelSpec:
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
    if name in ARCHITECTURES:
        return torchvision_spec(name, name, "IMAGENET1K_V1")
    match = _AA_NAME.match(name)
    if match and match["arch"] in ARCHITECTURES:
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
    return sorted(torchvision.models.list_models(module=torchvision.models))


def known_model_names() -> list[str]:
    """Every built-in name: baselines, _aa, and _aa<k> for k in 1..7."""
    names = []
    for arch in ARCHITECTURES:
        names += [arch, f"{arch}_aa"] + [f"{arch}_aa{k}" for k in FILTER_SIZES]
    return names


def available_models() -> list[ModelSpec]:
    return [parse_model_name(name) for name in known_model_names()]


def is_cached(spec: ModelSpec, mirror: Path | None = None) -> bool:
    if spec.weights is None:
        return False
    places = ([mirror] if mirror else []) + [cache_dir()]
    return any((place / spec.weights.file_name).exists() for place in places)


def create_model(
    name: str,
    weights: str | None = None,
    weights_dir_path: str | os.PathLike | None = None,
    init_seed: int = 0,
) -> LoadedModel:
    """Build ``name`` in eval mode and load its weights.

    ``weights``: None for the name's default (released or torchvision) weights, "none" for
    random initialisation, or a path / URL of any checkpoint in a supported container.
    ``init_seed`` seeds the random initialisation, so "none" weights are reproducible.
    """
    spec = parse_model_name(name)
    if spec.family == "timm":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return _create_timm(spec, weights)
    mirror = weights_dir(weights_dir_path)
    if weights is None and spec.weights is None:
        raise UserError(
            f"no released weights for {name}"
            f"{_released_hint(spec)}: pass --weights PATH for your own checkpoint, or "
            "--weights none for random initialisation"
        )
    state, record = None, RANDOM_WEIGHTS
    if weights is None:
        path, digest = resolve_source(spec.weights, mirror)
        state = read_state_dict(path)
        record = WeightsRecord(
            name=spec.weights.name,
            file=str(path),
            sha256=digest,
            licence=spec.weights.licence,
            url=spec.weights.url,
        )
    elif weights != "none":
        path, digest = resolve_user_weights(weights, _known_file_names())
        state = read_state_dict(path)
        url = weights if "://" in weights else None
        record = WeightsRecord(
            name="user checkpoint", file=str(path), sha256=digest, licence="unknown", url=url
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        module = _build(spec, state)
    if state is not None:
        if spec.family == "torchvision":
            state = _rename_old_densenet_keys(state)
        load_strict(module, state, spec.name)
    module.eval()
    return LoadedModel(spec=spec, module=module, preprocessing=spec.preprocessing, weights=record)


def _build(spec: ModelSpec, state: dict[str, torch.Tensor] | None) -> nn.Module:
    if spec.family == "torchvision":
        return torchvision.models.get_model(spec.arch, weights=None)
    if state is not None:
        found = checkpoint_filter_size(state)
        if found is None:
            raise UserError(
                f"checkpoint has no BlurPool filters (.filt buffers), so it is not an "
                f"anti-aliased model: use the baseline name {spec.arch} for it"
            )
        if found != spec.filter_size:
            raise UserError(
                f"checkpoint has filter size {found} but {spec.name} means filter size "
                f"{spec.filter_size}: use --model {spec.arch}_aa{found}"
            )
    return build_antialiased(spec.arch, spec.filter_size)


def _released_hint(spec: ModelSpec) -> str:
    if spec.family != "antialiased":
        return ""
    sizes = [k for k in FILTER_SIZES if released.released_file(spec.arch, k, finetuned=False)]
    names = [f"{spec.arch}_aa"] + [f"{spec.arch}_aa{k}" for k in sizes]
    return f" (released: {', '.join(names)})"


def _known_file_names() -> frozenset[str]:
    return frozenset(released.RELEASED_FILES.values())


def _rename_old_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        renamed[match[1] + match[2] if match else key] = value
    return renamed


def _create_timm(spec: ModelSpec, weights: str | None) -> LoadedModel:
    try:
        timm = importlib.import_module("timm")
    except ImportError:
        raise UserError(
            f"{spec.name} needs timm, which is not installed: pip install 'aabench[timm]'"
        ) from None
    if spec.arch not in timm.list_models():
        raise _unknown(spec.name, spec.arch, timm.list_models(), prefix="timm:")
    try:
        module = timm.create_model(spec.arch, pretrained=weights is None)
    except (OSError, RuntimeError) as error:
        raise UserError(
            f"could not load timm's weights for {spec.arch} ({error}): download them with "
            "network access once (they are cached), or pass --weights PATH"
        ) from error
    record = WeightsRecord(
        name=f"timm:{spec.arch}", file=None, sha256=None, licence="see timm's model card"
    )
    if weights is None:
        record = replace(record, file=f"timm:{module.pretrained_cfg.get('tag') or 'default'}")
    elif weights == "none":
        record = RANDOM_WEIGHTS
    else:
        path, digest = resolve_user_weights(weights, frozenset())
        load_strict(module, read_state_dict(path), spec.name)
        record = WeightsRecord(
            name="user checkpoint", file=str(path), sha256=digest, licence="unknown"
        )
    config = timm.data.resolve_model_data_config(module)
    crop = int(config["input_size"][-1])
    preprocessing = Preprocessing(
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        resize_size=int(crop / config.get("crop_pct", 0.875)),
        crop_size=crop,
        interpolation=config.get("interpolation", "bilinear"),
    )
    spec = replace(spec, preprocessing=preprocessing)
    module.eval()
    return LoadedModel(spec=spec, module=module, preprocessing=preprocessing, weights=record)
