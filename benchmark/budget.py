"""The time budget of `aabench bench`, checked before torch is imported: an argument
error answers at once."""

from __future__ import annotations

import math

from aabench.errors import UserError


def check_budget(seconds: float, images: int) -> None:
    """Refuse a budget that measures nothing (called by the CLI before loading a model)."""
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(
            f"--seconds must be a positive number of seconds, got {seconds}: it is the "
            "time budget of the whole bench (a third per phase)"
        )
    if images < 1:
        raise UserError(
            f"--images must be at least 1, got {images}: it caps the images of the "
            "pipeline and end-to-end phases"
        )
