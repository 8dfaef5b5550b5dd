"""Your own model: ``python:PATH_OR_MODULE:FACTORY`` calls a factory that returns an
``nn.Module`` (or a ``(module, preprocessing)`` pair).

Two halves. :func:`parse_target` and :func:`check_target` are torch-free: they read the
name, find the file (or, for a module, its file, without importing anything) and parse
it, so a missing file, a syntax error or a factory the file does not define is one line
before torch is imported. :func:`build_from_factory` imports the file, calls the factory
(seeded) and checks what it returned; every failure there is one line too, with the
factory's traceback kept as the cause (``--debug`` shows it).

``--factory-arg key=value`` values are typed by the factory's annotation when the
parameter has a simple one (int, float, bool, str, or one of them ``| None``); otherwise
by literal parsing: Python literals (``3``, ``0.5``, ``None``, ``True``, ``'text'``,
``(1, 2)``), ``true``/``false``/``none`` in any case, and anything else as a string.

What identifies the code of a model (:func:`module_identity`): the SHA-256 of the
factory's file and of the source file of every class in the module (torch's own left
out: its version is recorded), and the SHA-256 of the module's ``repr`` (its layers and
their hyper-parameters, which a factory may change without touching any class).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from aabench.errors import UserError
from aabench.models.preprocessing import Preprocessing
from aabench.models.weights import first_line, sha256_of

if TYPE_CHECKING:
    import torch
    from torch import nn

PREFIX = "python:"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_FORMAT = "write --model python:PATH.py:FACTORY or python:package.module:FACTORY"


@dataclass(frozen=True)
class FactoryTarget:
    """A parsed ``python:`` name: where the factory lives and what it is called."""

    text: str  # the name as given
    location: str  # the file path or the module name
    factory: str
    file: Path | None  # the file to import (a module's file, when found without import)
    is_module: bool  # imported by module name, not from a file path


def is_factory_name(name: str) -> bool:
    return name.startswith(PREFIX)


def parse_target(name: str) -> FactoryTarget:
    """``python:LOCATION:FACTORY`` -> a target, checked without importing anything."""
    location, sep, factory = name.removeprefix(PREFIX).rpartition(":")
    if not sep or not location or not factory:
        raise UserError(f"model {name!r} names no factory: {_FORMAT}")
    if not _IDENTIFIER.match(factory):
        raise UserError(f"factory {factory!r} in {name!r} is not a Python name: {_FORMAT}")
    if location.endswith(".py") or "/" in location or "\\" in location:
        path = Path(location).expanduser()
        if not path.exists():
            raise UserError(f"factory file {path} does not exist: check the path in --model")
        if not path.is_file():
            raise UserError(f"factory file {path} is a directory: name the .py file inside it")
        return FactoryTarget(name, location, factory, path.resolve(), is_module=False)
    if not _MODULE_NAME.match(location):
        raise UserError(f"{location!r} in {name!r} is neither a .py file nor a module: {_FORMAT}")
    return FactoryTarget(name, location, factory, _module_file(location, name), is_module=True)


def _module_file(module: str, name: str) -> Path | None:
    """The source file of ``module``, found without importing it or its packages."""
    if module in sys.modules:
        found = getattr(sys.modules[module], "__file__", None)
        return Path(found).resolve() if found else None
    search = _module_path()
    spec = None
    for depth, part in enumerate(module.split(".")):
        if search is None:  # the name goes on below a plain module, not a package
            raise UserError(
                f"no module named {module!r}: {'.'.join(module.split('.')[:depth])!r} is a "
                "module, not a package; give the factory's module, or the file: "
                "python:PATH.py:FACTORY"
            )
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            where = ".".join(module.split(".")[:depth]) or "sys.path"
            raise UserError(
                f"no module named {module!r} ({part!r} is not in {where}): install it, run "
                f"from the directory that holds it, or give the file: python:PATH.py:FACTORY"
            )
        search = spec.submodule_search_locations
    origin = getattr(spec, "origin", None)
    return Path(origin).resolve() if origin and origin.endswith(".py") else None


def _module_path() -> list[str]:
    """Where a module name is looked for: sys.path, then the current directory (which
    `python -m` puts on sys.path, and the `aabench` script does not), last, so it never
    shadows an installed module."""
    cwd = str(Path.cwd())
    return [*sys.path, cwd] if cwd not in sys.path and "" not in sys.path else list(sys.path)


@contextlib.contextmanager
def _module_search():
    extra = [p for p in _module_path() if p not in sys.path]
    sys.path.extend(extra)
    try:
        yield
    finally:
        for entry in extra:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)


def check_target(target: FactoryTarget) -> None:
    """Parse the factory's file (no import): a syntax error, or a factory the file does
    not define, is one line now."""
    if target.file is None:
        return
    try:
        tree = ast.parse(target.file.read_bytes(), filename=str(target.file))
    except SyntaxError as error:
        raise UserError(
            f"factory file {target.file} has a syntax error at line {error.lineno}: "
            f"{error.msg}; fix the file"
        ) from error
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read factory file {target.file} ({error})") from error
    defined, dynamic = _top_level_names(tree)
    if target.factory not in defined and not dynamic:
        callables = sorted(n for n in defined if not n.startswith("_")) or ["nothing"]
        raise UserError(
            f"factory file {target.file} defines no {target.factory!r} (it defines "
            f"{', '.join(callables[:8])}): name the function that builds the model"
        )


def _top_level_names(tree: ast.Module) -> tuple[set[str], bool]:
    """Names a module binds at its top level (inside if/try/with too), and whether it may
    bind others we cannot see (``import *``, a module ``__getattr__``, ``globals()``)."""
    names: set[str] = set()
    dynamic = False

    def visit(statements):
        nonlocal dynamic
        for node in statements:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.name == "*":
                        dynamic = True
                    names.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
                if isinstance(node, ast.For):
                    names.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
            if any(isinstance(n, ast.Name) and n.id == "globals" for n in ast.walk(node)):
                dynamic = True

    visit(tree.body)
    return names, dynamic or "__getattr__" in names


# ------------------------------------------------------------------ --factory-arg


def parse_factory_args(assignments: list[str] | None) -> dict[str, str]:
    """``key=value`` strings -> {key: raw value} (typed later, by the factory)."""
    parsed: dict[str, str] = {}
    for item in assignments or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not _IDENTIFIER.match(key):
            raise UserError(
                f"--factory-arg {item!r} is not key=value with a Python name as key: "
                "write e.g. --factory-arg depth=18"
            )
        if key in parsed:
            raise UserError(f"--factory-arg {key} is given twice: give it once")
        parsed[key] = value.strip()
    return parsed


def literal(value: str) -> object:
    """A raw value by literal parsing: Python literals, true/false/none, else the text."""
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


def typed_value(value: str, annotation: object, key: str, factory: str) -> object:
    """A raw value as the parameter's simple annotation says, else by literal parsing."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    simple = [o for o in options if o in (int, float, bool, str)]
    if not simple or len(simple) + (type(None) in options) != len(options):
        return literal(value)
    if type(None) in options and value.lower() in ("none", "null"):
        return None
    for option in simple:
        if option is bool:
            if value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            continue
        with contextlib.suppress(ValueError):
            return option(value)
    expected = " or ".join(o.__name__ for o in options)
    raise UserError(
        f"--factory-arg {key}={value!r}: {factory}'s parameter {key} is {expected}; "
        "give a value of that type"
    )


def bind_args(factory, raw: dict[str, str], name: str) -> dict[str, object]:
    """Type ``raw`` by the factory's signature; an unknown key is one line naming the
    factory's parameters."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: literals only
        return {key: literal(value) for key, value in raw.items()}
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # unresolvable annotations: fall back to literal parsing
        hints = {}
    typed = {}
    for key, value in raw.items():
        parameter = parameters.get(key)
        keyword = parameter is not None and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if not keyword and not takes_any:
            accepted = [
                p.name
                for p in parameters.values()
                if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            listing = ", ".join(accepted) or "none"
            raise UserError(
                f"--factory-arg {key}: factory {name} has no parameter {key!r} (its "
                f"parameters: {listing})"
            )
        annotation = hints.get(key, parameter.annotation if parameter else None)
        typed[key] = typed_value(value, annotation, key, name)
    try:
        signature.bind(**typed)
    except TypeError as error:
        raise UserError(
            f"factory {name} cannot be called with {_call_text(name, typed)}: {error}; "
            "give its required parameters with --factory-arg key=value"
        ) from None
    return typed


def _call_text(name: str, arguments: dict) -> str:
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"


# -------------------------------------------------------------- importing and calling


@contextlib.contextmanager
def _beside(directory: Path | None):
    """The factory file's directory on sys.path, as when it is run as a script, so it can
    import the modules next to it."""
    if directory is None:
        yield
        return
    entry = str(directory)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def import_factory(target: FactoryTarget):
    """The factory callable; every failure of the import is one line."""
    check_target(target)
    directory = None if target.is_module else target.file.parent
    try:
        with _beside(directory), _module_search():
            if target.is_module:
                module = importlib.import_module(target.location)
            else:
                module = _import_file(target.file)
    except UserError:
        raise
    except BaseException as error:
        if isinstance(error, KeyboardInterrupt):
            raise
        where = target.file or target.location
        raise UserError(
            f"cannot import factory {'module' if target.is_module else 'file'} {where}: "
            f"{type(error).__name__}: {first_line(error)}{_where(error, target.file)} "
            "(--debug shows the traceback)"
        ) from error
    factory = getattr(module, target.factory, None)
    if factory is None:
        raise UserError(
            f"{target.file or target.location} defines no {target.factory!r}: name the "
            "function that builds the model"
        )
    if not callable(factory):
        raise UserError(
            f"{target.factory} in {target.file or target.location} is a "
            f"{type(factory).__name__}, not a function: name the function that builds "
            "the model"
        )
    return factory


def _import_file(path: Path) -> types.ModuleType:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    module_name = f"_aabench_factory_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as import does: dataclasses and pickling look it up.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _where(error: BaseException, file: Path | None) -> str:
    """' (file.py line N)': the deepest frame of the traceback in ``file``."""
    if file is None:
        return ""
    line = None
    for frame, number in _frames(error):
        if Path(frame.f_code.co_filename).resolve() == file:
            line = number
    if isinstance(error, SyntaxError) and error.lineno:
        line = error.lineno
    return f" ({file.name} line {line})" if line else ""


def _frames(error: BaseException):
    tb = error.__traceback__
    while tb is not None:
        yield tb.tb_frame, tb.tb_lineno
        tb = tb.tb_next


def build_from_factory(
    target: FactoryTarget, raw_args: dict[str, str], init_seed: int
) -> tuple[nn.Module, Preprocessing | None, dict]:
    """Import and call the factory (seeded): (module, its preprocessing or None, the
    provenance of the factory)."""
    import torch
    from torch import nn

    factory = import_factory(target)
    name = target.factory  # the attribute, always a Python name (a lambda's is not)
    arguments = bind_args(factory, raw_args, name)
    directory = None if target.is_module else target.file.parent
    try:
        with _beside(directory), torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            returned = factory(**arguments)
    except UserError:
        raise
    except Exception as error:
        raise UserError(
            f"factory {_call_text(name, arguments)} raised {type(error).__name__}: "
            f"{first_line(error)}{_where(error, target.file)} (--debug shows the traceback)"
        ) from error
    module, preprocessing = _returned(returned, name)
    if not isinstance(module, nn.Module):
        raise UserError(
            f"factory {name} returned {_kind(returned)}, not a torch.nn.Module (or a "
            "(module, preprocessing) pair): return the model"
        )
    files = [target.file] if target.file else []
    defined_in = _source_file(factory)
    if defined_in and defined_in not in files:
        files.append(defined_in)
    record = {
        "factory": target.text,
        "factory_name": name,
        "factory_args": {key: _jsonable(value) for key, value in arguments.items()},
        "factory_files": [{"file": str(f), "sha256": sha256_of(f)} for f in files],
    }
    return module, preprocessing, record


def _returned(returned, name: str):
    if isinstance(returned, tuple) and len(returned) == 2:
        module, preprocessing = returned
        return module, as_preprocessing(preprocessing, f"factory {name}'s preprocessing")
    return returned, None


def _kind(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return "None" if value is None else f"a {type(value).__name__}"


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, int | float | str | bool | type(None) | list) else repr(value)


def _source_file(obj) -> Path | None:
    try:
        found = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return Path(found).resolve() if found and Path(found).is_file() else None


# ----------------------------------------------------------------- preprocessing


_ALIASES = {"resize": "resize_size", "crop": "crop_size"}
INTERPOLATIONS = ("bilinear", "bicubic")


_FLAGS = {"resize_size": "--resize", "crop_size": "--crop"}


def preprocessing_overrides(values: dict, cli: bool = False) -> dict:
    """Checked overrides {field: value} from a dict (``resize``/``crop`` accepted for
    ``resize_size``/``crop_size``; None values are left out). ``cli``: name the flags
    (``--crop``) in errors, not the keys."""
    known = {f.name for f in fields(Preprocessing)}
    checked: dict = {}
    for key, value in values.items():
        field_name = _ALIASES.get(key, key)
        label = _FLAGS.get(field_name, f"--{field_name}") if cli else f"preprocessing {key!r}"
        if field_name not in known:
            raise UserError(
                f"unknown preprocessing key {key!r}: use {', '.join(sorted(known))} "
                "(or resize, crop)"
            )
        if value is None:
            continue
        if field_name in ("resize_size", "crop_size"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{label} must be a whole number of pixels >= 1, got {value!r}")
        elif field_name == "interpolation":
            if value not in INTERPOLATIONS:
                raise UserError(f"{label} must be {' or '.join(INTERPOLATIONS)}, got {value!r}")
        else:
            value = _three(value, label)
            if field_name == "std" and any(v <= 0 for v in value):
                raise UserError(f"{label} must be positive, got {','.join(map(str, value))}")
        checked[field_name] = value
    if checked.get("crop_size", 0) > checked.get("resize_size", float("inf")):
        raise UserError(
            f"crop {checked['crop_size']} is larger than the resize {checked['resize_size']}: "
            "the centre crop would be padded with black; give --resize at least --crop"
        )
    return checked


def _three(value, label: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise UserError(f"{label} must be three finite numbers (R,G,B), e.g. 0.485,0.456,0.406")
    return numbers


def as_preprocessing(value, what: str = "preprocessing") -> Preprocessing | None:
    """A Preprocessing, a dict of its fields (or None) -> a Preprocessing (or None)."""
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        return Preprocessing(**preprocessing_overrides(value))
    raise UserError(
        f"{what} is a {type(value).__name__}: give an aabench Preprocessing or a dict with "
        "mean, std, resize_size, crop_size, interpolation"
    )


def apply_overrides(base: Preprocessing, overrides: dict) -> Preprocessing:
    from dataclasses import replace

    result = replace(base, **overrides)
    if result.crop_size > result.resize_size:
        raise UserError(
            f"crop {result.crop_size} is larger than the resize {result.resize_size}: the "
            "centre crop would be padded with black; give --resize at least --crop"
        )
    return result


# ------------------------------------------------------------------- identity


def module_identity(module: nn.Module, extra_files: list[Path] = ()) -> dict:
    """What identifies a module's code: SHA-256 of the source file of every class in it
    (torch's own left out) and of ``extra_files`` (the factory's), and of its repr."""
    paths = {Path(f) for f in extra_files}
    for sub in module.modules():
        cls = type(sub)
        if cls.__module__.split(".")[0] == "torch":
            continue
        found = _class_file(cls)
        if found:
            paths.add(found)
    return {
        "source_files": [{"file": str(p), "sha256": sha256_of(p)} for p in sorted(paths)],
        "architecture_sha256": hashlib.sha256(repr(module).encode()).hexdigest(),
    }


def _class_file(cls) -> Path | None:
    """A class's source file; through its methods' code when its module is not in
    sys.modules (a file loaded with importlib's spec_from_file_location, say)."""
    found = _source_file(cls)
    if found:
        return found
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None and Path(code.co_filename).is_file():
            return Path(code.co_filename).resolve()
    return None


def state_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state dict: names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        tensor: torch.Tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype():
    import torch

    return torch.uint8
