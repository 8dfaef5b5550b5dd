"""Aligning runs, their differences, and whether each difference is real.

The first run is the reference. Rows are aligned on (suite, metric, dimension columns).
When both runs kept their samples files and saw the same images (same data
fingerprint), each difference gets paired statistics over images: an exact McNemar test
where the metric is one 0/1 outcome per image, and a seeded paired-bootstrap 95 %
interval (with a two-sided bootstrap p-value) for every metric.

The per-dimension rows of one (candidate, suite, metric) -- 33 offsets, 15 corruptions --
are one family of tests: their p-values are Holm-adjusted within it (``p_adjusted``,
``family_size``, ``correction``) and ``significant`` is the adjusted decision at 5 %. A
suite's overall row (blank dimensions) is a family of one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from aabench.checks import reading
from aabench.errors import UserError
from aabench.results.integrity import dimension_key
from aabench.results.load import RunData, load_directory, load_run
from aabench.results.stats import holm, mcnemar_exact, paired_bootstrap_test
from aabench.suites.registry import available_suites

SIGNIFICANCE = 0.05


@dataclass
class RunTables:
    label: str
    table: pd.DataFrame


@dataclass
class Comparison:
    runs: list[RunTables]
    rows: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    # One line per suite that could not be paired ("diagonal: only in runs/a; not compared").
    unpaired: list[str] = field(default_factory=list)


def differing_keys(reference: dict, candidate: dict) -> str:
    """The keys whose values differ, as "key: reference vs candidate" ("-" where a run
    lacks the key), so a refusal names what differs rather than printing both dicts."""
    missing = "-"
    keys = sorted({*reference, *candidate}, key=str)
    return "; ".join(
        f"{key}: {reference.get(key, missing)} vs {candidate.get(key, missing)}"
        for key in keys
        if reference.get(key, missing) != candidate.get(key, missing)
    )


def mismatches(reference: RunData, candidate: RunData) -> list[str]:
    """Why two runs do not measure the same thing (empty: comparable)."""
    found = []
    if reference.suite != candidate.suite:
        return [f"different suites: {reference.suite} vs {candidate.suite}"]
    ref, cand = reference.provenance, candidate.provenance
    if ref and cand:
        if jpeg_decoder(ref) != jpeg_decoder(cand):
            found.append(
                f"different JPEG decoders: {jpeg_decoder(ref)} vs {jpeg_decoder(cand)} "
                "(nvJPEG and libjpeg may differ by a level or so in some pixels)"
            )
        # The decoder has its own line above, not a second one among the parameters.
        ref_protocol = _without_decoder(ref.get("protocol", ref.get("parameters")))
        cand_protocol = _without_decoder(cand.get("protocol", cand.get("parameters")))
        if ref_protocol != cand_protocol:
            found.append(
                f"{reference.suite} protocol parameters differ: "
                + differing_keys(ref_protocol or {}, cand_protocol or {})
            )
        ref_data = ref.get("data", {}).get("fingerprint")
        cand_data = cand.get("data", {}).get("fingerprint")
        if ref_data != cand_data:
            found.append(f"different data: {ref_data} vs {cand_data}")
        # The images a model sees (resize, crop, interpolation, normalisation) are part
        # of the protocol: --crop 288 and the default 224 measure different things.
        ref_pre, cand_pre = ref.get("preprocessing"), cand.get("preprocessing")
        if ref_pre and cand_pre and ref_pre != cand_pre:
            keys = {*ref_pre, *cand_pre}
            differing = sorted(k for k in keys if ref_pre.get(k) != cand_pre.get(k))
            found.append(
                "different preprocessing: "
                + ", ".join(f"{k} {ref_pre.get(k)} vs {cand_pre.get(k)}" for k in differing)
            )
        if ref.get("data_source") != cand.get("data_source"):
            found.append(
                f"different data sources: {ref.get('data_source')} vs {cand.get('data_source')}"
            )
    ref_n = set(reference.table["n"].dropna().astype(int))
    cand_n = set(candidate.table["n"].dropna().astype(int))
    if ref_n != cand_n:
        found.append(f"different n: {sorted(ref_n)} vs {sorted(cand_n)}")
    return found


def jpeg_decoder(provenance: dict) -> str:
    """What decoded a run's released JPEGs (ImageNet-C's ``decoder``): runs written
    before it was recorded, and suites without it, decoded with PIL."""
    return (provenance.get("parameters") or {}).get("decoder", "pil")


def _without_decoder(protocol: dict | None) -> dict | None:
    if protocol is None:
        return None
    return {key: value for key, value in protocol.items() if key != "decoder"}


def compare(
    runs: list[RunData],
    allow_mismatch: bool = False,
    replicates: int = 1000,
    seed: int = 0,
) -> Comparison:
    if len(runs) < 2:
        raise UserError("compare needs at least two tables: a reference and a candidate")
    reference = runs[0]
    warnings = []
    for candidate in runs[1:]:
        problems = mismatches(reference, candidate)
        if problems and (not allow_mismatch or reference.suite != candidate.suite):
            fix = (
                "compare tables of the same suite (--allow-mismatch cannot align them)"
                if reference.suite != candidate.suite
                else "compare runs of the same protocol and data (or pass --allow-mismatch, "
                "and the report will say so)"
            )
            raise UserError(
                f"{reference.label} and {candidate.label} are not comparable: "
                f"{'; '.join(problems)}; {fix}"
            )
        warnings += [f"{candidate.label} vs {reference.label}: {p}" for p in problems]
    for run in runs:  # what the run itself warned about (random weights, ...)
        for warning in (run.provenance or {}).get("warnings") or []:
            line = f"{run.label}: {warning}"
            if line not in warnings:
                warnings.append(line)
    # What could not be checked is said, not silently trusted.
    warnings += [f"{run.label}: {run.unchecked}" for run in runs if run.unchecked]
    rows = pd.concat(
        [_compare_pair(reference, candidate, replicates, seed) for candidate in runs[1:]],
        ignore_index=True,
    )
    return Comparison(
        runs=[RunTables(run.label, run.table) for run in runs], rows=rows, warnings=warnings
    )


def _keys(run: RunData) -> list[str]:
    return ["suite", "metric", *run.dimensions]


def _compare_pair(
    reference: RunData, candidate: RunData, replicates: int, seed: int
) -> pd.DataFrame:
    dims = reference.dimensions
    ref = reference.table.assign(_key=dimension_key(reference.table, dims))
    cand = candidate.table.assign(_key=dimension_key(candidate.table, dims))
    # Every reference row stays: a row the candidate lacks shows (and gates) as missing.
    for table in (ref, cand):
        if "note" not in table:
            table["note"] = None
    merged = ref.merge(
        cand[["suite", "metric", "_key", "value", "n", "note"]].assign(_found=True),
        on=["suite", "metric", "_key"],
        how="left",
        suffixes=("_ref", "_cand"),
    )
    if merged["value_cand"].isna().all() and not cand["value"].isna().all():
        raise UserError(
            f"{reference.label} and {candidate.label} share no (suite, metric) rows to compare"
        )
    rows = pd.DataFrame(
        {
            "suite": merged["suite"],
            "metric": merged["metric"],
            **{dim: merged.get(dim, pd.NA) for dim in dims},
            "unit": merged["unit"],
            "higher_is_better": merged["higher_is_better"].astype(bool),
            "reference": reference.label,
            "candidate": candidate.label,
            "reference_value": merged["value_ref"],
            "candidate_value": merged["value_cand"],
        }
    )
    rows["delta"] = rows["candidate_value"] - rows["reference_value"]
    direction = np.where(rows["higher_is_better"], 1.0, -1.0)
    rows["improved"] = rows["delta"] * direction > 0
    rows["reference_n"] = _integers(merged["n_ref"])
    rows["candidate_n"] = _integers(merged["n_cand"])
    rows["note"] = [
        _note(ref_note, cand_note, found, candidate.label)
        for ref_note, cand_note, found in zip(
            merged["note_ref"], merged["note_cand"], merged["_found"], strict=True
        )
    ]
    statistics, reason = paired_statistics_or_reason(reference, candidate, replicates, seed)
    empty = {
        "test": None,
        "p_value": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "n": None,
    }
    looked_up = [
        statistics.get((metric, key), empty) if statistics else empty
        for metric, key in zip(merged["metric"], merged["_key"], strict=True)
    ]
    for column in ("test", "p_value", "ci_low", "ci_high"):
        rows[column] = [entry[column] for entry in looked_up]
    # n: the images both runs share -- those paired image by image, else the tables' n
    # where both say the same.
    same_n = [
        int(a) if not pd.isna(a) and not pd.isna(b) and a == b else None
        for a, b in zip(rows["reference_n"], rows["candidate_n"], strict=True)
    ]
    rows["n"] = pd.array(
        [
            entry["n"] if entry["n"] is not None else n
            for entry, n in zip(looked_up, same_n, strict=True)
        ],
        dtype="Int64",
    )
    rows["no_statistics"] = [
        "" if entry["test"] else (reason or "no paired test for this row") for entry in looked_up
    ]
    _adjust(rows, dims)
    return rows.reset_index(drop=True)


def _integers(values: pd.Series) -> pd.Series:
    return pd.array(pd.to_numeric(values, errors="coerce").round(), dtype="Int64")


def _text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _note(ref_note, cand_note, found, candidate_label: str) -> str:
    """Why a value is missing, from the reference's and the candidate's rows."""
    ref_note, cand_note = _text(ref_note), _text(cand_note)
    if found is not True:
        cand_note = f"{candidate_label} has no such row"
    if ref_note and cand_note and ref_note != cand_note:
        return f"reference: {ref_note}; candidate: {cand_note}"
    return ref_note or cand_note


def _adjust(rows: pd.DataFrame, dims: list[str]) -> None:
    """Holm within each family: the rows of one (candidate, suite, metric) broken down by
    the same dimensions (per layer, per (dh, dw) cell, per (corruption, severity) and per
    corruption are separate families); an overall row is a family of one.
    ``significant``: adjusted p < 5 % (None: no test)."""
    p_adjusted = np.full(len(rows), np.nan)
    family_size = np.zeros(len(rows), dtype=int)
    filled = rows[dims].notna().to_numpy() if dims else np.zeros((len(rows), 0), dtype=bool)
    # Which dimensions a row is broken down by, e.g. "layer,depth"; "" for an overall row.
    dimensioned = np.array(
        [",".join(d for d, f in zip(dims, row, strict=True) if f) for row in filled], dtype=object
    )
    tested = rows["p_value"].notna().to_numpy()
    positions = np.arange(len(rows))
    for (_, _, _, per_dimension), group in pd.DataFrame(
        {
            "candidate": rows["candidate"].to_numpy(),
            "suite": rows["suite"].to_numpy(),
            "metric": rows["metric"].to_numpy(),
            "per_dimension": dimensioned,
            "position": positions,
        }
    ).groupby(["candidate", "suite", "metric", "per_dimension"], sort=False):
        members = group["position"].to_numpy()
        members = members[tested[members]]
        families = [members] if per_dimension != "" else [[m] for m in members]
        for family in families:
            family = np.asarray(family, dtype=int)
            p_adjusted[family] = holm(rows["p_value"].to_numpy()[family])
            family_size[family] = len(family)
    rows["p_adjusted"] = p_adjusted
    rows["family_size"] = family_size
    rows["correction"] = np.where(family_size > 1, "holm", "")
    rows["significant"] = [
        bool(p < SIGNIFICANCE) if t else None for p, t in zip(p_adjusted, tested, strict=True)
    ]


def paired_statistics(
    reference: RunData, candidate: RunData, replicates: int, seed: int
) -> dict[tuple[str, str], dict] | None:
    """Paired tests by (metric, dimension key), or None when the runs cannot be paired
    image by image."""
    return paired_statistics_or_reason(reference, candidate, replicates, seed)[0]


def paired_statistics_or_reason(
    reference: RunData, candidate: RunData, replicates: int, seed: int
) -> tuple[dict[tuple[str, str], dict] | None, str]:
    """:func:`paired_statistics` and, when there are none, why not (a short phrase)."""
    for run in (reference, candidate):
        if run.source is not None:
            return None, "published numbers have no per-image samples"
        if run.provenance is None:
            return None, f"{run.label} has no provenance file"
    if reference.provenance.get("data", {}).get("fingerprint") != candidate.provenance.get(
        "data", {}
    ).get("fingerprint"):
        return None, "the runs saw different data"
    for run in (reference, candidate):
        if run.samples_path is None:
            return None, f"{run.label} has no samples file"
    samples_ref, samples_cand = reference.samples(), candidate.samples()
    suite_class = available_suites().get(reference.suite)
    if suite_class is None:
        return None, f"unknown suite {reference.suite}"
    suite_ref = suite_class.from_provenance(reference.provenance)
    suite_cand = suite_class.from_provenance(candidate.provenance)
    dims = list(suite_class.dimensions)
    matrices = [
        _per_image(suite.terms(samples), dims)
        for suite, samples in ((suite_ref, samples_ref), (suite_cand, samples_cand))
    ]
    (num_a, den_a), (num_b, den_b) = matrices
    images = num_a.index.intersection(num_b.index)
    metrics = num_a.columns.intersection(num_b.columns)
    if len(images) == 0:
        return None, "the runs share no image"
    if len(metrics) == 0:
        return None, "the runs share no per-image terms"
    aligned = [m.loc[images, metrics].to_numpy() for m in (num_a, den_a, num_b, den_b)]
    scale = np.array([suite_class.metrics[metric].scale for metric, _ in metrics])
    low, high, p_boot = paired_bootstrap_test(
        *aligned, scale=scale, replicates=replicates, seed=seed
    )
    statistics = {}
    for index, (metric, key) in enumerate(metrics):
        outcome_a, outcome_b = aligned[0][:, index], aligned[2][:, index]
        entry = {
            "test": "bootstrap",
            "p_value": float(p_boot[index]),
            "ci_low": float(low[index]),
            "ci_high": float(high[index]),
            "n": len(images),
        }
        binary = suite_class.metrics[metric].outcome and all(
            np.all(den == 1) and np.all((num == 0) | (num == 1))
            for num, den in ((outcome_a, aligned[1][:, index]), (outcome_b, aligned[3][:, index]))
        )
        if binary:
            only_a = int(np.sum((outcome_a == 1) & (outcome_b == 0)))
            only_b = int(np.sum((outcome_a == 0) & (outcome_b == 1)))
            p_value = mcnemar_exact(only_a, only_b)
            entry.update(test="mcnemar", p_value=p_value)
        statistics[(metric, key)] = entry
    return statistics, ""


def _per_image(terms: pd.DataFrame, dims: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images x (metric, dimension key)) matrices of summed num and den."""
    keyed = terms.assign(_key=dimension_key(terms, dims))
    summed = keyed.groupby(["sample", "metric", "_key"], sort=False)[["num", "den"]].sum()
    num = summed["num"].unstack(["metric", "_key"], fill_value=0.0)
    den = summed["den"].unstack(["metric", "_key"], fill_value=0.0)
    return num, den


@dataclass
class Pairing:
    """The tables to compare, grouped by suite, and a line per suite left out."""

    groups: list[list[RunData]]
    unpaired: list[str] = field(default_factory=list)


def load_runs(paths: list[str], every_reference_suite: bool = False) -> list[list[RunData]]:
    """Tables to compare, grouped by suite: files (one suite) or run directories (every
    suite the directories share). The first path is the reference; with
    ``every_reference_suite`` (the gate) a suite the reference has and another lacks is
    an error, not skipped."""
    return pair_runs(paths, every_reference_suite).groups


def pair_runs(paths: list[str], every_reference_suite: bool = False) -> Pairing:
    """:func:`load_runs`, also naming each suite that only some directories have
    ("diagonal: only in runs/resnet18_aa; not compared")."""
    unpaired: list[str] = []
    kinds = set()
    for path in paths:
        with reading(path, "table or run directory"):
            kinds.add(Path(path).is_dir())
    if kinds == {True}:
        directories = [load_directory(p) for p in paths]
        shared = [suite for suite in directories[0] if all(suite in d for d in directories)]
        lacking = [suite for suite in directories[0] if suite not in shared]
        if every_reference_suite and lacking:
            raise UserError(
                f"the reference {paths[0]} has suites {', '.join(lacking)} that "
                f"{', '.join(paths[1:])} lacks: run them for the candidate too"
            )
        if not shared:
            raise UserError(
                f"the directories {', '.join(paths)} share no suite: run the same suite "
                "for both models"
            )
        groups = [[d[suite] for d in directories] for suite in shared]
        every = [suite for d in directories for suite in d]
        for suite in dict.fromkeys(every):
            if suite not in shared:
                having = [p for p, d in zip(paths, directories, strict=True) if suite in d]
                unpaired.append(f"{suite}: only in {', '.join(having)}; not compared")
    elif kinds == {False}:
        groups = [[load_run(p) for p in paths]]
    else:
        raise UserError("pass either tables (<suite>.csv) or run directories, not a mix")
    for group in groups:
        _distinct_labels(group)
    return Pairing(groups, unpaired)


def _distinct_labels(runs: list[RunData]) -> None:
    """Runs of the same model are told apart by their directories."""
    labels = [run.label for run in runs]
    for run in runs:
        if labels.count(run.label) > 1 and run.path is not None:
            run.label = f"{run.label} ({run.path.parent})"
    seen: dict[str, int] = {}
    for run in runs:  # the very same table given twice
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"


def compare_groups(
    groups: list[list[RunData]],
    allow_mismatch: bool = False,
    metrics: list[str] | None = None,
    replicates: int = 1000,
    seed: int = 0,
    unpaired: list[str] | None = None,
) -> Comparison:
    """One comparison over several suites (run directories): rows of every suite.
    ``unpaired``: the suites left out (see :func:`pair_runs`), kept on the result."""
    parts = [
        compare(group, allow_mismatch=allow_mismatch, replicates=replicates, seed=seed)
        for group in groups
    ]
    rows = pd.concat([part.rows for part in parts], ignore_index=True)
    if metrics:
        unknown = sorted(set(metrics) - set(rows["metric"]))
        if unknown:
            raise UserError(
                f"--metric {', '.join(unknown)} is not in these tables: they hold "
                f"{', '.join(sorted(rows['metric'].unique()))}"
            )
        rows = rows[rows["metric"].isin(metrics)].reset_index(drop=True)
    runs = [
        RunTables(
            label=groups[0][index].label,
            table=pd.concat([group[index].table for group in groups], ignore_index=True),
        )
        for index in range(len(groups[0]))
    ]
    warnings = list(dict.fromkeys(w for part in parts for w in part.warnings))
    return Comparison(runs=runs, rows=rows, warnings=warnings, unpaired=list(unpaired or []))


def dimension_columns(groups: list[list[RunData]]) -> list[str]:
    columns: list[str] = []
    for group in groups:
        for dim in group[0].dimensions:
            if dim not in columns:
                columns.append(dim)
    return columns
