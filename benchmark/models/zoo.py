"""Model names -> a module in eval mode, its preprocessing and a record of its weights.

The names and everything known about them before anything is built live in
:mod:`aabench.models.catalogue` (torch-free). Here a name is resolved in two steps:
first its weights are found (mirror, cache, or downloaded now) and verified, which needs
no torch; then the module is built and the weights loaded, on first use.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from aabench.errors import UserError
from aabench.models.catalogue import (
    DEFAULT_FILTER_SIZE,
    TORCHVISION_LICENCE,
    ModelSpec,
    _unknown,
    available_models,
    from_mirror,
    is_cached,
    known_file_names,
    known_model_names,
    parse_model_name,
    released_hint,
    torchvision_classifiers,
    weights_base_url,
)
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import (
    RANDOM_WEIGHTS,
    WeightsRecord,
    checkpoint_filter_size,
    load_strict,
    read_state_dict,
    resolve_source,
    resolve_user_weights,
    weights_dir,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import nn

__all__ = [
    "DEFAULT_FILTER_SIZE",
    "TORCHVISION_LICENCE",
    "LoadedModel",
    "ModelSpec",
    "available_models",
    "create_model",
    "is_cached",
    "known_model_names",
    "parse_model_name",
    "torchvision_classifiers",
]

# torchvision's DenseNet files predate its module names: "norm.1" for "norm1", etc.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


class LoadedModel:
    """A model name resolved to its spec, preprocessing and weights record.

    ``module`` is built (and its weights loaded) on first use, or by :meth:`build`: the
    weights are settled first, without torch, so `run` can refuse unavailable weights
    before it imports torch, opens data or starts workers.
    """

    def __init__(
        self,
        spec: ModelSpec,
        module: nn.Module | None = None,
        preprocessing: Preprocessing | None = None,
        weights: WeightsRecord = RANDOM_WEIGHTS,
        builder: Callable[[], nn.Module] | None = None,
    ) -> None:
        if module is None and builder is None:
            raise ValueError("LoadedModel needs a module or a builder")
        self.spec = spec
        self.preprocessing = preprocessing or spec.preprocessing
        self.weights = weights
        self._module = module
        self._builder = builder

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def built(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> nn.Module:
        return self.build()

    def build(self) -> nn.Module:
        """The module in eval mode with its weights loaded (built once)."""
        if self._module is None:
            self._module = self._builder()
            self._builder = None
        return self._module

    def __repr__(self) -> str:
        state = "built" if self.built else "not built"
        return f"LoadedModel({self.name!r}, weights={self.weights.label!r}, {state})"


def create_model(
    name: str,
    weights: str | None = None,
    weights_dir_path: str | os.PathLike | None = None,
    init_seed: int = 0,
    weights_url: str | None = None,
    build: bool = True,
) -> LoadedModel:
    """Resolve ``name`` and its weights; build the module now unless ``build`` is False.

    ``weights``: None for the name's default (released or torchvision) weights, "none" for
    random initialisation, or a path / URL of any checkpoint in a supported container.
    Default weights are found in the mirror or the cache (verified), else downloaded now:
    an error here means they cannot be had. ``weights_url``: a mirror of the release
    bucket (else ``$AABENCH_WEIGHTS_URL``). ``init_seed`` seeds the random
    initialisation, so "none" weights are reproducible. With ``build=False`` nothing
    imports torch for the built-in names; the module is built on first use.
    """
    spec = parse_model_name(name)
    if spec.family == "timm":
        # timm finds its own weights while it builds: nothing to settle up front.
        return _create_timm(spec, weights, init_seed)
    mirror = weights_dir(weights_dir_path)
    base_url = weights_base_url(weights_url)
    if weights is None and spec.weights is None:
        raise UserError(
            f"no released weights for {name}"
            f"{released_hint(spec)}: pass --weights PATH for your own checkpoint, or "
            "--weights none for random initialisation"
        )
    path, record = None, RANDOM_WEIGHTS
    if weights is None:
        source = from_mirror(spec.weights, base_url)
        path, digest = resolve_source(source, mirror, wanted_by=name)
        record = WeightsRecord(
            name=spec.weights.name,
            file=str(path),
            sha256=digest,
            licence=spec.weights.licence,
            url=source.url,
            weights_url=base_url,
        )
    elif weights != "none":
        path, digest = resolve_user_weights(weights, known_file_names())
        url = weights if "://" in weights else None
        record = WeightsRecord(
            name="user checkpoint", file=str(path), sha256=digest, licence="unknown", url=url
        )
    loaded = LoadedModel(
        spec=spec,
        preprocessing=spec.preprocessing,
        weights=record,
        builder=partial(_load, spec, path, init_seed),
    )
    if build:
        loaded.build()
    return loaded


def _load(spec: ModelSpec, path: Path | None, init_seed: int) -> nn.Module:
    import torch

    state = read_state_dict(path) if path is not None else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        module = _build(spec, state)
    if state is not None:
        if spec.family == "torchvision":
            state = _rename_old_densenet_keys(state)
        load_strict(module, state, spec.name)
    return module.eval()


def _build(spec: ModelSpec, state: dict[str, torch.Tensor] | None) -> nn.Module:
    if spec.family == "torchvision":
        import torchvision

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
    from aabench.models.antialiased import build_antialiased

    return build_antialiased(spec.arch, spec.filter_size)


def _rename_old_densenet_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        match = _OLD_DENSENET_KEY.match(key)
        renamed[match[1] + match[2] if match else key] = value
    return renamed


def _create_timm(spec: ModelSpec, weights: str | None, init_seed: int) -> LoadedModel:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return _build_timm(spec, weights)


def _build_timm(spec: ModelSpec, weights: str | None) -> LoadedModel:
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
