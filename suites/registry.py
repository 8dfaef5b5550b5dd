"""Suites by name: the built-in ones, plus any another package registers under the
``aabench.suites`` entry-point group (the entry point names a Suite subclass)."""

from __future__ import annotations

import difflib
from importlib.metadata import entry_points

from aabench.errors import UserError
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.base import Suite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.equivariance import EquivarianceSuite
from aabench.suites.fractional_shift import FractionalShiftSuite
from aabench.suites.imagenet_c import ImageNetCSuite
from aabench.suites.imagenet_p import ImageNetPSuite
from aabench.suites.pixel_shift import PixelShiftSuite
from aabench.suites.shift import ShiftSuite
from aabench.suites.worst_shift import WorstShiftSuite

ENTRY_POINT_GROUP = "aabench.suites"
BUILTIN: dict[str, type[Suite]] = {
    s.name: s
    for s in (
        AccuracySuite,
        ShiftSuite,
        DiagonalSuite,
        ImageNetCSuite,
        ImageNetPSuite,
        EquivarianceSuite,
        FractionalShiftSuite,
        PixelShiftSuite,
        WorstShiftSuite,
    )
}


def available_suites() -> dict[str, type[Suite]]:
    """Every suite, built-in first; plugins are looked up afresh on each call."""
    suites = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            suite = entry.load()
        except Exception as error:
            raise UserError(
                f"suite plugin {entry.name!r} ({entry.value}) failed to load: {error}; "
                "fix or uninstall the package that provides it"
            ) from error
        if not (isinstance(suite, type) and issubclass(suite, Suite)):
            raise UserError(
                f"suite plugin {entry.name!r} ({entry.value}) is not a Suite subclass: "
                "fix the package that provides it"
            )
        if suite.name in BUILTIN:
            raise UserError(
                f"suite plugin {entry.value} reuses the built-in name {suite.name!r}: "
                "rename it in the package that provides it"
            )
        suites[suite.name] = suite
    return suites


def get_suite(name: str) -> type[Suite]:
    suites = available_suites()
    if name not in suites:
        close = difflib.get_close_matches(name, list(suites), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(
            f"unknown suite {name!r}{hint}: available suites are {', '.join(suites)}; "
            "`aabench suites` describes them"
        )
    return suites[name]
