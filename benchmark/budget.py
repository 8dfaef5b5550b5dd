"""The arguments of `aabench bench`, checked before torch is imported: an argument error
answers at once, before a model is loaded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aabench import checks
from aabench.errors import UserError

# The phases cycle the data to --images entries, held as one list: a cap keeps a typo of
# a few zeros from exhausting memory. A phase stops at its deadline long before this.
IMAGES_LIMIT = 1_000_000


@contextlib.contextmanager
def _because(why: str) -> Iterator[None]:
    """A check's one line, with what the option is for appended."""
    try:
        yield
    except UserError as error:
        raise UserError(f"{error}: {why}") from None


def check_budget(seconds: float, images: int) -> None:
    """Refuse a budget that measures nothing, or that could not be held in memory."""
    with _because("it is the time budget of the whole bench (a third per phase)"):
        checks.finite(seconds, "--seconds", above=0)
    with _because("it caps the images of the pipeline and end-to-end phases"):
        checks.whole(images, "--images", minimum=1, maximum=IMAGES_LIMIT)


def check_arguments(seconds: float, images: int, batch_size: int, workers: int | None) -> None:
    """Every number `bench` takes, the same way `run` checks its own."""
    check_budget(seconds, images)
    checks.whole(batch_size, "--batch-size", minimum=1)
    if workers is not None:
        checks.workers(workers)
