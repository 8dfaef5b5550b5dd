"""Modules imported on first use, so that `aabench --help`, `models`, `suites` and
argument errors answer without paying for torch (seconds) or pandas."""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands for a module; the first attribute read imports it (once, via sys.modules)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def _module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attribute: str):
        return getattr(self._module(), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> LazyModule:
    return LazyModule(name)
