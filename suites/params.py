"""``--set key=value`` overrides of suite parameters, typed by the dataclass fields."""

from __future__ import annotations

import dataclasses
import types
import typing

from aabench.errors import UserError
from aabench.suites.base import Suite

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    """``key=value`` items as a dict; a key given twice is refused, not silently won by
    the last (a long command line may set it far from where it is set again)."""
    parsed = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} is not key=value: write e.g. --set epochs=1")
        key, value = key.strip(), value.strip()
        if key in parsed:
            raise UserError(
                f"--set {key} is given twice ({parsed[key]!r} and {value!r}): give each key once"
            )
        parsed[key] = value
    return parsed


def parameter_types(suite: type[Suite]) -> dict[str, object]:
    hints = typing.get_type_hints(suite)
    return {field.name: hints[field.name] for field in dataclasses.fields(suite)}


def convert(value: str, annotation: object, key: str) -> object:
    """A string from the command line as the field's type (int, float, bool, str, None)."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    if type(None) in options and value.lower() in {"none", "null", ""}:
        return None
    for option in options:
        if option is bool:
            if value.lower() in _TRUE | _FALSE:
                return value.lower() in _TRUE
            continue
        if option in (int, float, str):
            try:
                return option(value)
            except ValueError:
                continue
        origin = typing.get_origin(option)
        if origin in (tuple, list):
            return origin(part.strip() for part in value.split(",") if part.strip())
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise UserError(
        f"--set {key}={value!r}: expected {names}; give a value of that type "
        "(`aabench suites` lists every parameter with its type and default)"
    )


def _is_union(annotation: object) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def build_suites(names: list[str], suite_classes: list[type[Suite]], assignments: list[str]):
    """Instantiate each suite with the overrides that name its fields.

    A key no chosen suite has is an error listing the valid keys; a key only some of the
    suites have applies to those.
    """
    overrides = parse_assignments(assignments)
    valid = {key for cls in suite_classes for key in parameter_types(cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        listing = ", ".join(sorted(valid)) or "none"
        raise UserError(
            f"unknown --set key {', '.join(unknown)} for suite {', '.join(names)}: "
            f"valid keys are {listing}"
        )
    suites = []
    for cls in suite_classes:
        types_ = parameter_types(cls)
        kwargs = {
            key: convert(value, types_[key], key)
            for key, value in overrides.items()
            if key in types_
        }
        suites.append(cls(**kwargs))
    return suites
