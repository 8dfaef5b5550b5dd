"""Reading what `aabench run` wrote: a tidy table, its provenance and its samples file.

Nothing read here is trusted as it is: a table's cells are checked as they are parsed,
and a run's table is checked against its provenance and recomputed from its samples
(aabench.results.integrity) before `compare`, `gate` or `--normalize-by` use a number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aabench.checks import printable, reading
from aabench.errors import UserError
from aabench.results import integrity
from aabench.results.table import EXTRA_COLUMNS, TIDY_COLUMNS

SAMPLES_SUFFIX = ".samples.csv.gz"
# Read as text, whatever they look like: a run id of hex digits such as "3e1234567890"
# is not the number 3e1234567890.
TEXT_COLUMNS = ("run_id", "model", "weights", "suite", "metric", "unit", *EXTRA_COLUMNS)


@dataclass
class RunData:
    """One suite of one run: its table, and what lies beside it."""

    label: str
    suite: str
    table: pd.DataFrame
    provenance: dict | None = None
    samples_path: Path | None = None
    source: str | None = None  # for published numbers: where they come from
    path: Path | None = None
    # Why its values could not be recomputed from its samples (None: they were).
    unchecked: str | None = None
    _samples: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def dimensions(self) -> list[str]:
        if self.provenance and "dimensions" in self.provenance:
            return list(self.provenance["dimensions"])
        return [c for c in self.table.columns if c not in (*TIDY_COLUMNS, *EXTRA_COLUMNS)]

    def samples(self) -> pd.DataFrame | None:
        if self._samples is None and self.samples_path is not None:
            self._samples = read_samples(self.samples_path)
        return self._samples


def read_table(path: Path) -> pd.DataFrame:
    """A tidy table, its cells checked: numbers where numbers belong, booleans where
    booleans do (see :func:`aabench.results.integrity.check_cells`)."""
    path = Path(path)
    shown = printable(path)
    # Even looking at a file in a directory one may not search is "permission denied".
    with reading(path, "table"):
        if not path.exists():
            raise UserError(f"{shown} does not exist: pass a table written by `aabench run`")
        if path.is_dir():
            raise UserError(
                f"{shown} is a directory: pass a <suite>.csv file, or two run directories"
            )
    try:
        with reading(path, "table"):
            table = pd.read_csv(path, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(
            f"{shown} is not a CSV table ({_first_line(error)}): pass a table written by "
            "`aabench run`"
        ) from error
    missing = [column for column in TIDY_COLUMNS if column not in table.columns]
    if missing:
        raise UserError(
            f"{shown} is not an aabench table: it lacks the columns {', '.join(missing)}; "
            "pass a <suite>.csv written by `aabench run`"
        )
    return integrity.check_cells(table, path)


def read_provenance(path: Path) -> dict:
    """The provenance JSON beside a table: an object whose entries have the types that
    comparing reads (see :func:`aabench.results.integrity.check_provenance`)."""
    try:
        with reading(path, "provenance"):
            document = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(
            f"cannot read provenance {printable(path)} ({_first_line(error)}): it is not "
            "JSON; rerun the suite, or delete the file to compare without it"
        ) from error
    return integrity.check_provenance(document, path)


def read_samples(path: Path) -> pd.DataFrame:
    try:
        with reading(path, "samples file"):
            return pd.read_csv(path)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as error:
        raise UserError(
            f"cannot read samples file {printable(path)} ({_first_line(error)}): rerun the "
            "suite, or delete the file to compare without paired statistics"
        ) from error


def load_run(path: str | Path) -> RunData:
    """A ``<suite>.csv`` written by `aabench run`, with its provenance and samples, the
    three checked against each other."""
    path = Path(path)
    table = read_table(path)
    suites = table["suite"].dropna().unique()
    if len(suites) != 1:
        raise UserError(
            f"{printable(path)} holds {len(suites)} suites "
            f"({printable(', '.join(map(str, suites)))}): pass one <suite>.csv per run"
        )
    suite = str(suites[0])
    provenance_path = path.with_suffix(".json")
    samples_path = path.parent / f"{path.stem}{SAMPLES_SUFFIX}"
    with reading(path.parent, "run directory"):
        has_provenance, has_samples = provenance_path.exists(), samples_path.exists()
    provenance = read_provenance(provenance_path) if has_provenance else None
    label = str(table["model"].iloc[0]) if len(table) else path.stem
    run = RunData(
        label=label,
        suite=suite,
        table=table,
        provenance=provenance,
        samples_path=samples_path if has_samples else None,
        path=path,
    )
    integrity.check_run(run)
    return run


def load_directory(path: str | Path) -> dict[str, RunData]:
    """Every suite table in a run directory (``runs/<model>/``), by suite."""
    path = Path(path)
    # iterdir, not glob: glob reads an unreadable directory as an empty one.
    with reading(path, "run directory"):
        entries = list(path.iterdir())
    tables = sorted(p for p in entries if p.suffix == ".csv" and not p.name.startswith("."))
    if not tables:
        raise UserError(
            f"{printable(path)} holds no <suite>.csv tables: pass a directory written by "
            "`aabench run`"
        )
    runs = [load_run(p) for p in tables]
    return {run.suite: run for run in runs}


def _first_line(error: BaseException) -> str:
    """An exception's message as one safe line (parsers' messages span several)."""
    lines = str(error).strip().splitlines()
    return printable(lines[0]) if lines else type(error).__name__
