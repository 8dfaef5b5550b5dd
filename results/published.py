"""Published reference numbers shipped with the package (``results/published/<name>.csv``).

Each file is a tidy table without ``run_id``: model, weights, suite, metric, value, unit,
higher_is_better, n, source, then the dimension columns its suites need (blank where a
row has none). ``n`` is blank where the source does not say how many images it used.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from aabench.errors import UserError
from aabench.results.load import RunData

TEXT_COLUMNS = ("model", "weights", "suite", "metric", "unit", "source")


def _folder():
    return resources.files("aabench.results").joinpath("published")


def published_names() -> list[str]:
    """Names of the published tables, sorted (``antialiased-cnns``, ``imagenet-c``, ...)."""
    return sorted(
        entry.name.removesuffix(".csv")
        for entry in _folder().iterdir()
        if entry.name.endswith(".csv") and entry.is_file()
    )


def published_table(name: str) -> pd.DataFrame:
    """The published table ``name`` (with or without ``.csv``), typed like a run's table."""
    names = published_names()
    stem = name.removesuffix(".csv")
    if stem not in names:
        raise UserError(
            f"no published table named {name!r}; available: {', '.join(names) or '(none)'}"
        )
    with _folder().joinpath(f"{stem}.csv").open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle, dtype=str, keep_default_na=False, na_values=[""])
    return _typed(table)


def _typed(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in table.columns:
        if column in TEXT_COLUMNS:
            table[column] = table[column].astype(object)
        elif column == "value":
            table[column] = table[column].astype(float)
        elif column == "higher_is_better":
            table[column] = table[column].map({"True": True, "False": False}).astype(bool)
        elif column == "n":
            table[column] = pd.to_numeric(table[column]).astype("Int64")
        else:
            # Dimension columns: integers (severity) stay integers, text stays text.
            numbers = pd.to_numeric(table[column], errors="coerce")
            present = table[column].notna()
            if present.any() and numbers[present].notna().all():
                whole = (numbers[present] % 1 == 0).all()
                table[column] = numbers.astype("Int64") if whole else numbers
            else:
                table[column] = table[column].astype(object)
    return table


def with_published(name: str, groups: list[list[RunData]]) -> tuple[list[list[RunData]], list[str]]:
    """Each suite group with the published numbers of ``name`` first, as its reference.

    A suite without published numbers for its model is left out and named ("imagenet-p:
    no published numbers for resnet18_aa in antialiased-cnns; not compared"); an error
    only when no suite has any.
    """
    kept, skipped, reasons = [], [], []
    for group in groups:
        try:
            kept.append([published_reference(name, group[0]), *group])
        except UserError as error:
            model = str(group[0].table["model"].iloc[0]) if len(group[0].table) else "?"
            skipped.append(
                f"{group[0].suite}: no published numbers for {model} in {name}; not compared"
            )
            reasons.append(str(error))
    if not kept:
        raise UserError("; ".join(dict.fromkeys(reasons)))
    return kept, skipped


def published_reference(name: str, run: RunData) -> RunData:
    """The published rows for ``run``'s model and suite, as a reference to compare with.

    Published numbers have no samples, so such a comparison has no paired statistics;
    their n (50 000 for the papers' tables) must match the run's unless --allow-mismatch.
    """
    table = published_table(name)
    model = str(run.table["model"].iloc[0])
    rows = table[(table["model"] == model) & (table["suite"] == run.suite)]
    if rows.empty:
        models = sorted(table.loc[table["suite"] == run.suite, "model"].unique())
        raise UserError(
            f"published table {name!r} has no {run.suite} numbers for {model}; it has them "
            f"for: {', '.join(models) or 'no model'}"
        )
    rows = rows.assign(run_id=f"published:{name}").reset_index(drop=True)
    source = str(rows["source"].iloc[0])
    return RunData(
        label=f"published ({source})",
        suite=run.suite,
        table=rows,
        provenance=None,
        source=source,
    )
