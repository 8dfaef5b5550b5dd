"""aabench: shift-invariance and corruption-robustness benchmarks for image classifiers."""

__version__ = "0.1.0"
