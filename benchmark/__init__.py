"""aabench: shift-invariance and corruption-robustness benchmarks for image classifiers."""

__version__ = "0.1.0"

# The Python API, imported on first use: `import aabench` stays free of torch.
_API = ("evaluate", "Result", "ShiftConsistency")
__all__ = ["Preprocessing", "Result", "ShiftConsistency", "__version__", "evaluate"]


def __getattr__(name: str):
    if name in _API:
        from aabench import api

        return getattr(api, name)
    if name == "Preprocessing":
        from aabench.models.preprocessing import Preprocessing

        return Preprocessing
    raise AttributeError(f"module 'aabench' has no attribute {name!r}")
