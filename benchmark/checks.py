"""Shared checks of the numbers and paths a user gives us.

Every command validates its inputs through these, so the same mistake gets the same one
line (a UserError: what is wrong, what to do) wherever it is made: a NaN that would
disable a check, a seed numpy cannot take, a file the user may not read, a file name
whose bytes would garble the terminal.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from aabench.errors import UserError

# numpy's and torch's generators take seeds in [0, 2**63): one range for every seed.
SEED_LIMIT = 2**63


def printable(text: object) -> str:
    """``text`` as one safe terminal line: bytes that are not UTF-8 (file names decoded
    with surrogateescape) become ``\\xNN``, and control characters (newlines, escape
    sequences) their backslash escapes, so a hostile file name can neither split the
    one-line error nor move the cursor."""
    text = str(text)
    with contextlib.suppress(UnicodeError):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(
        char if not unicodedata.category(char).startswith("C") else _escape(char) for char in text
    )


def _escape(char: str) -> str:
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if char in named:
        return named[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def finite(value: float, flag: str, *, minimum: float | None = None, above: float | None = None):
    """A finite float, optionally ``>= minimum`` or ``> above``: NaN compares false with
    everything, so an unchecked NaN silently disables whatever threshold it sets."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number, got {printable(value)!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{flag} must be a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise UserError(f"{flag} must be {minimum:g} or more, got {value!r}")
    if above is not None and number <= above:
        raise UserError(f"{flag} must be more than {above:g}, got {value!r}")
    return number


def whole(value: int, flag: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{flag} must be a whole number, got {printable(value)!r}")
    if minimum is not None and value < minimum:
        raise UserError(f"{flag} must be {minimum} or more, got {value}")
    if maximum is not None and value > maximum:
        raise UserError(f"{flag} must be at most {maximum}, got {value}")
    return value


def seed(value: int, flag: str = "--seed") -> int:
    """A seed every generator the suites use accepts."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value < SEED_LIMIT:
        raise UserError(f"{flag} must be in 0 .. 2**63-1, got {value}")
    return whole(value, flag)


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Open-time failures of ``path`` (the user's ``what``: "weights", "table", ...) as one
    line: permission denied, a directory where a file is expected, a vanished file."""
    path = Path(path)
    try:
        yield path
    except PermissionError:
        raise UserError(
            f"cannot read {what} {printable(path)}: permission denied; make it readable "
            "(chmod) or point at a copy you can read"
        ) from None
    except IsADirectoryError:
        raise UserError(f"{what} {printable(path)} is a directory, not a file") from None
    except FileNotFoundError:
        raise UserError(f"{what} {printable(path)} does not exist") from None


def workers(value: int, flag: str = "--workers") -> int:
    """A worker-process count this machine can hold: each is a process, so a typo of a few
    zeros would start thousands of them before anything else could fail."""
    cores = os.cpu_count() or 1
    limit = max(32, 4 * cores)
    whole(value, flag, minimum=0)
    if value > limit:
        raise UserError(
            f"{flag} must be at most {limit} on this machine ({cores} cores; each worker is "
            f"a process), got {value}"
        )
    return value


# Why a write failed, and what to do about it, by errno.
_WRITE_FAILURES = {
    errno.ENOSPC: ("no space left on device", "free space there or choose {flag} on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free space there or choose {flag} on another disk"),
    errno.EROFS: ("read-only file system", "choose {flag} on a writable disk"),
    errno.EACCES: ("permission denied", "make it writable (chmod) or choose another {flag}"),
    errno.EPERM: ("permission denied", "make it writable (chmod) or choose another {flag}"),
}


def write_failure(error: OSError, path: str | os.PathLike, flag: str = "--out") -> str:
    """``error``, raised writing ``path``, as the start of one line: what failed, why, and
    what to do."""
    reason, advice = _WRITE_FAILURES.get(
        error.errno, (error.strerror or str(error), "choose a writable {flag} with free space")
    )
    return f"cannot write {printable(path)}: {printable(reason)}; {advice.format(flag=flag)}"


@contextlib.contextmanager
def writing(path: str | os.PathLike, flag: str = "--out", then: str = "") -> Iterator[Path]:
    """Write-time failures of ``path`` (a full disk, a read-only file system, a directory
    without write permission) as one line; ``then`` ends it (what is kept, how to go on)."""
    path = Path(path)
    try:
        yield path
    except OSError as error:
        raise UserError(write_failure(error, path, flag) + (f"; {then}" if then else "")) from None
