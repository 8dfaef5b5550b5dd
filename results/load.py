"""Reading what `aabench run` wrote: a tidy table, its provenance and its samples file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from aabench.errors import UserError
from aabench.results.table import EXTRA_COLUMNS, TIDY_COLUMNS

SAMPLES_SUFFIX = ".samples.csv.gz"


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
    _samples: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def dimensions(self) -> list[str]:
        if self.provenance and "dimensions" in self.provenance:
            return list(self.provenance["dimensions"])
        return [c for c in self.table.columns if c not in (*TIDY_COLUMNS, *EXTRA_COLUMNS)]

    def samples(self) -> pd.DataFrame | None:
        if self._samples is None and self.samples_path is not None:
            try:
                self._samples = pd.read_csv(self.samples_path)
            except (OSError, ValueError, EOFError) as error:
                raise UserError(
                    f"cannot read samples file {self.samples_path} ({error}): re-run the "
                    "suite, or delete the file to compare without paired statistics"
                ) from error
        return self._samples


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path} does not exist: pass a table written by `aabench run`")
    if path.is_dir():
        raise UserError(f"{path} is a directory: pass a <suite>.csv file, or two run directories")
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise UserError(
            f"{path} is not a CSV table ({error}): pass a table written by `aabench run`"
        ) from error
    missing = [column for column in TIDY_COLUMNS if column not in table.columns]
    if missing:
        raise UserError(
            f"{path} is not an aabench table: it lacks the columns {', '.join(missing)}; "
            "pass a <suite>.csv written by `aabench run`"
        )
    return table


def load_run(path: str | Path) -> RunData:
    """A ``<suite>.csv`` written by `aabench run`, with its provenance and samples."""
    path = Path(path)
    table = read_table(path)
    suites = table["suite"].dropna().unique()
    if len(suites) != 1:
        raise UserError(
            f"{path} holds {len(suites)} suites ({', '.join(map(str, suites))}): pass one "
            "<suite>.csv per run"
        )
    suite = str(suites[0])
    provenance = None
    provenance_path = path.with_suffix(".json")
    if provenance_path.exists():
        try:
            provenance = json.loads(provenance_path.read_text())
        except (ValueError, OSError) as error:
            raise UserError(f"cannot read provenance {provenance_path} ({error})") from error
    samples_path = path.parent / f"{path.stem}{SAMPLES_SUFFIX}"
    label = str(table["model"].iloc[0]) if len(table) else path.stem
    return RunData(
        label=label,
        suite=suite,
        table=table,
        provenance=provenance,
        samples_path=samples_path if samples_path.exists() else None,
        path=path,
    )


def load_directory(path: str | Path) -> dict[str, RunData]:
    """Every suite table in a run directory (``runs/<model>/``), by suite."""
    path = Path(path)
    tables = sorted(p for p in path.glob("*.csv") if not p.name.startswith("."))
    if not tables:
        raise UserError(
            f"{path} holds no <suite>.csv tables: pass a directory written by `aabench run`"
        )
    runs = [load_run(p) for p in tables]
    return {run.suite: run for run in runs}
