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
from aabench.models import custom
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
    checkpoint_format,
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

    ``preprocessing`` is the model's own (``base_preprocessing``: its name's, timm's,
    or what a factory returned) with ``overrides`` applied (``--resize``, ``--crop``,
    ``--interpolation``, ``--mean``, ``--std``). ``source``: for a module that is not a
    built-in (a ``python:`` factory, a module given to :func:`aabench.evaluate`), what
    identifies its code (files and SHA-256s, see :func:`custom.module_identity`).
    """

    def __init__(
        self,
        spec: ModelSpec,
        module: nn.Module | None = None,
        preprocessing: Preprocessing | None = None,
        weights: WeightsRecord = RANDOM_WEIGHTS,
        builder: Callable[[], nn.Module] | None = None,
        overrides: dict | None = None,
        name: str | None = None,
        source: dict | None = None,
    ) -> None:
        if module is None and builder is None:
            raise ValueError("LoadedModel needs a module or a builder")
        self.spec = spec
        self.base_preprocessing = preprocessing or spec.preprocessing
        self.overrides = dict(overrides or {})
        self.weights = weights
        self.source = source
        self._name = name
        self._module = module
        self._builder = builder
        if self.spec.family != "python" or module is not None:
            self.preprocessing  # noqa: B018 - a crop larger than the resize fails now

    @property
    def name(self) -> str:
        return self._name or self.spec.name

    @property
    def preprocessing(self) -> Preprocessing:
        if self.spec.family == "python" and not self.built:
            self.build()  # a factory may return its own preprocessing
        return custom.apply_overrides(self.base_preprocessing, self.overrides)

    @property
    def built(self) -> bool:
        return self._module is not None

    @property
    def module(self) -> nn.Module:
        return self.build()

    def build(self) -> nn.Module:
        """The module in eval mode with its weights loaded (built once)."""
        if self._module is None:
            builder, self._builder = self._builder, None
            self._module = builder()
        return self._module

    def identity(self) -> dict | None:
        """The code identity that enters the run id: SHA-256s only (paths differ between
        machines, contents do not)."""
        if self.source is None:
            return None
        return {
            "source_sha256": sorted(f["sha256"] for f in self.source["source_files"]),
            "architecture_sha256": self.source["architecture_sha256"],
        }

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
    preprocessing: dict | None = None,
    factory_args: list[str] | dict[str, str] | None = None,
    display_name: str | None = None,
) -> LoadedModel:
    """Resolve ``name`` and its weights; build the module now unless ``build`` is False.

    ``weights``: None for the name's default (released or torchvision) weights, "none" for
    random initialisation, or a path / URL of any checkpoint in a supported container.
    Default weights are found in the mirror or the cache (verified), else downloaded now:
    an error here means they cannot be had. ``weights_url``: a mirror of the release
    bucket (else ``$AABENCH_WEIGHTS_URL``). ``init_seed`` seeds the random
    initialisation, so "none" weights are reproducible. With ``build=False`` nothing
    imports torch for the built-in names; the module is built on first use.

    ``preprocessing``: overrides of the model's own (resize_size, crop_size,
    interpolation, mean, std). ``factory_args``: ``key=value`` strings (or a dict of raw
    strings) for a ``python:`` factory. ``display_name``: the name in the outputs.
    """
    overrides = custom.preprocessing_overrides(preprocessing or {})
    if display_name is not None:
        check_display_name(display_name)
    spec = parse_model_name(name)
    raw_args = (
        dict(factory_args)
        if isinstance(factory_args, dict)
        else custom.parse_factory_args(factory_args)
    )
    if raw_args and spec.family != "python":
        raise UserError(f"--factory-arg is for python: models (a factory of your own), not {name}")
    if spec.family == "timm":
        # timm finds its own weights while it builds: nothing to settle up front.
        loaded = _create_timm(spec, weights, init_seed)
        loaded.overrides, loaded._name = overrides, display_name
        loaded.preprocessing  # noqa: B018 - checks the overrides against timm's sizes
        return loaded
    if spec.family == "python":
        return _create_python(spec, weights, init_seed, raw_args, overrides, display_name, build)
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
            format=checkpoint_format(path),
        )
    elif weights != "none":
        path, record = _user_weights(weights)
    loaded = LoadedModel(
        spec=spec,
        preprocessing=spec.preprocessing,
        weights=record,
        builder=partial(_load, spec, path, record.sha256, init_seed),
        overrides=overrides,
        name=display_name,
    )
    if build:
        loaded.build()
    return loaded


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+:-]*$")


def check_display_name(name: str) -> None:
    """A name for the outputs is a directory name too (``<out>/<name>/``)."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise UserError(
            f"--name {name!r} cannot name the outputs' directory: use letters, digits and "
            "_ . + : - (starting with a letter or digit)"
        )


def _user_weights(weights: str, known: frozenset[str] | None = None) -> tuple[Path, WeightsRecord]:
    path, digest = resolve_user_weights(weights, known_file_names() if known is None else known)
    url = weights if "://" in weights else None
    return path, WeightsRecord(
        name="user checkpoint",
        file=str(path),
        sha256=digest,
        licence="unknown",
        url=url,
        format=checkpoint_format(path),
    )


def _create_python(
    spec: ModelSpec,
    weights: str | None,
    init_seed: int,
    raw_args: dict[str, str],
    overrides: dict,
    display_name: str | None,
    build: bool,
) -> LoadedModel:
    """A ``python:`` factory's model: the checkpoint (if any) is found and hashed now,
    the factory is imported and called on first use."""
    path, record = (None, RANDOM_WEIGHTS) if weights in (None, "none") else _user_weights(weights)
    loaded = LoadedModel(spec=spec, weights=record, overrides=overrides, name=display_name,
                         builder=lambda: None)  # fmt: skip
    loaded._builder = partial(
        _build_python, loaded, path, weights is None, init_seed, raw_args, record.sha256
    )
    if build:
        loaded.build()
    return loaded


def _build_python(
    loaded: LoadedModel,
    path: Path | None,
    own: bool,
    init_seed: int,
    raw_args: dict,
    expected_sha256: str | None = None,
) -> nn.Module:
    from aabench.models.weights import own_weights

    target = loaded.spec.factory
    module, preprocessing, record = custom.build_from_factory(target, raw_args, init_seed)
    if path is not None:
        state = read_state_dict(path, expected_sha256)
        load_strict(module, state, f"factory {record['factory_name']}")
    module.eval()
    if preprocessing is not None:
        loaded.base_preprocessing = preprocessing
    if loaded._name is None:
        loaded._name = record["factory_name"]
    files = [Path(f["file"]) for f in record["factory_files"]]
    loaded.source = {**record, **custom.module_identity(module, files)}
    if own:  # no --weights: the factory's own weights, recorded by their digest
        loaded.weights = own_weights(custom.state_sha256(module))
    return module


def _load(spec: ModelSpec, path: Path | None, sha256: str | None, init_seed: int) -> nn.Module:
    import torch

    state = read_state_dict(path, sha256) if path is not None else None
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
        path, record = _user_weights(weights, frozenset())
        load_strict(module, read_state_dict(path, record.sha256), spec.name)
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
