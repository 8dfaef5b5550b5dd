"""ImageNet-P (Hendrycks & Dietterich 2019): how often, and how far, predictions move
along sequences of gradually stronger perturbations.

Per perturbation p, over sequences of frames x_1..x_n with predictions f(x_j):
- pairs: noise perturbations compare every frame x_j (j >= 2) with the first, clean one;
  the others compare (x_{j-d}, x_j) at stride d = difficulty, every offset 0..d-1 its own
  chain;
- flip_prob = mean over sequences of (mean over that sequence's pairs of 1[f changes]);
- top5_dist = the same average of d(earlier, later) = sum_{i=1..5} |(i-1) -
  min(sigma(i)-1, 5)|, sigma(i) the 1-based rank in the later frame of the class ranked
  i-th in the earlier one;
- with a reference run (``normalize_by``, e.g. AlexNet on the same data): fr = FP / FP_ref
  and t5d = uT5D / uT5D_ref per perturbation, mfr / mt5d = their means over the 10 test
  perturbations, mfr_geometric over rotate, scale and translate.

Each sequence's average is one term per image, so every metric, normalised ones
included, is a mean of per-image terms and gets `aabench compare`'s paired bootstrap.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aabench.data import perturbations as P
from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites.base import RANK_COLUMNS, Metric, Suite, Views, not_computed_row, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")


@dataclass
class ImageNetPSuite(Suite):
    name = "imagenet-p"
    description = "ImageNet-P: flip probability and top-5 distance along perturbation sequences."
    headline = (("mfr", "mean_flip_prob"), ("mt5d", "mean_top5_dist"))  # normalised first
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "flip_prob": Metric("%", False, "probability that the top-1 class flips between frames"),
        "top5_dist": Metric("ranks", False, "mean top-5 rank distance between frames (uT5D)"),
        "fr": Metric("%", False, "flip rate: flip_prob / the reference run's flip_prob"),
        "t5d": Metric("%", False, "top5_dist / the reference run's top5_dist"),
        "mfr": Metric("%", False, "mean flip rate over the 10 test perturbations"),
        "mt5d": Metric("%", False, "mean t5d over the 10 test perturbations"),
        "mfr_geometric": Metric("%", False, "mean flip rate over rotate, scale, translate"),
        "mean_flip_prob": Metric("%", False, "mean flip_prob over the 10 test perturbations"),
        "mean_top5_dist": Metric("ranks", False, "mean top5_dist over the 10 test perturbations"),
        "mean_flip_prob_geometric": Metric(
            "%", False, "mean flip_prob over rotate, scale, translate"
        ),
    }
    dimensions = ("perturbation",)
    locations = ("imagenet_p", "normalize_by")
    ranks = True

    perturbations: str = "geometric"  # geometric, all (the 10 test ones), or names
    difficulty: int = 1  # noise: which noise strength; others: the comparison stride
    generate: bool = False  # make the sequences from --data images instead of the MP4s
    encode: str = "none"  # with generate: "h264" = the release's MP4 encode/decode round trip
    imagenet_p: str | None = None  # the released set's root (--imagenet-p)
    normalize_by: str | None = None  # a reference run's imagenet-p.csv (--normalize-by)

    def __post_init__(self):
        self.perturbation_list = P.parse_perturbations(self.perturbations)
        P.check_difficulty(self.difficulty)
        P.check_encoding(self.encode, self.generate)
        if self.generate and self.imagenet_p:
            raise UserError(
                "--imagenet-p reads the released videos and --generate makes sequences "
                "from --data: choose one"
            )
        if self.generate:
            # Refused now, not after the suites before it have run.
            impossible = [p for p in self.perturbation_list if p not in P.GENERATORS]
            if impossible:
                raise UserError(
                    f"{', '.join(impossible)} cannot be generated: read them from the released "
                    "set with --imagenet-p DIR, or leave them out of --set perturbations"
                )
        self.reference_run = (
            load_reference(Path(self.normalize_by), self) if self.normalize_by else None
        )

    def parameters(self) -> dict:
        parameters = {
            "perturbations": ",".join(self.perturbation_list),
            "difficulty": self.difficulty,
            "generate": self.generate,
            "encode": self.encode,
            "imagenet_p": self.imagenet_p,
            "normalize_by": self.normalize_by,
        }
        if self.generate:
            # Generated frames depend on the generator: runs of another version differ.
            parameters["generator_version"] = P.GENERATOR_VERSION
        if self.reference_run is not None:
            # Normalised values depend on the reference's numbers, not on its path: two
            # references of the same run id may still differ (another GPU, batch size).
            parameters["reference_run_id"] = self.reference_run.run_id
            parameters["reference_values_sha256"] = self.reference_run.values_sha256()
        return parameters

    def protocol(self) -> dict:
        protocol = super().protocol()
        if not self.generate:
            # Released videos are already encoded: runs on them made before `encode`
            # existed stay comparable with new ones.
            protocol.pop("encode")
        return protocol

    @classmethod
    def from_provenance(cls, provenance: dict) -> ImageNetPSuite:
        # The reference's numbers travel in the provenance: the table they came from may
        # have moved since.
        parameters = dict(provenance.get("parameters", {}))
        parameters.pop("reference_run_id", None)
        parameters.pop("reference_values_sha256", None)
        parameters.pop("generator_version", None)
        parameters["normalize_by"] = None
        # Comparing needs no H.264 encoder: the run's encoding is restored as recorded,
        # without the check that making such frames again would need.
        encode = parameters.pop("encode", "none")
        suite = cls(**parameters)
        suite.encode = encode
        if entry := provenance.get("normalization"):
            suite.reference_run = Reference(
                path=Path(entry["table"]),
                run_id=entry["run_id"],
                flip_prob=entry["flip_prob"],
                top5_dist=entry["top5_dist"],
                provenance=entry.get("provenance"),
            )
            suite.normalize_by = entry["table"]
        return suite

    def extra_provenance(self) -> dict:
        if self.reference_run is None:
            return {}
        return {"normalization": self.reference_run.provenance_entry()}

    def frames_per_image(self) -> list[int]:
        return [P.frame_count(p) for p in self.perturbation_list]

    def view_size(self, preprocessing) -> int:
        return 224  # the released frames' (and the generated ones'), whatever the model's

    def views_per_image(self) -> int:
        return sum(self.frames_per_image())

    def prepare(self, image, preprocessing):  # pragma: no cover - views_from is used
        raise AssertionError("ImageNet-P builds its views in views_from")

    def views(self, image, sample, position, seed):  # pragma: no cover - views_from is used
        raise AssertionError("ImageNet-P builds its views in views_from")

    def views_from(self, images, sample, position, seed, preprocessing) -> Views:
        if self.generate:
            base = P.Base.of(images["clean"])
            sequences = {
                p: P.generate(
                    base,
                    p,
                    self.difficulty,
                    np.random.default_rng(P.sequence_seed(seed, sample.key, p, self.difficulty)),
                )
                for p in self.perturbation_list
            }
            if self.encode == "h264":
                # Imported here: it loads torch, which `aabench suites` must not wait for.
                from aabench.data.imagenet_p import h264_round_trip

                sequences = {p: h264_round_trip(s, p) for p, s in sequences.items()}
        else:
            sequences = images
        shapes = {tuple(sequences[p].shape[1:]) for p in self.perturbation_list}
        if len(shapes) > 1:
            raise UserError(
                f"the ImageNet-P videos of {sample.path} differ in frame size "
                f"({sorted(shapes)}): re-extract the set"
            )
        frames = np.concatenate([sequences[p] for p in self.perturbation_list])
        counts = self.frames_per_image()
        return Views(
            torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2),
            {
                "perturbation": np.repeat(np.array(self.perturbation_list, dtype=object), counts),
                "frame": np.concatenate([np.arange(n) for n in counts]),
            },
            groups=counts,
        )

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        series: dict[tuple[str, str], pd.Series] = {}  # (metric, perturbation) -> per image
        for perturbation in self.perturbation_list:
            rows = records[records["perturbation"] == perturbation]
            if rows.empty:
                continue
            flip, distance = sequence_averages(rows, perturbation, self.difficulty)
            series["flip_prob", perturbation], series["top5_dist", perturbation] = flip, distance
            if self.reference_run is not None:
                for metric, raw in NORMALISED.items():
                    if divisor := self.reference_run.value(raw, perturbation):
                        series[metric, perturbation] = series[raw, perturbation] / divisor
        parts = [
            term_frame(metric, values.index, values, perturbation=perturbation)
            for (metric, perturbation), values in series.items()
        ]
        for metric, (members, averaged) in self.means().items():
            if all((averaged, p) in series for p in members):
                mean = sum(series[averaged, p] for p in members) / len(members)
                parts.append(term_frame(metric, mean.index, mean))
        return pd.concat(parts, ignore_index=True)

    def means(self) -> dict[str, tuple[tuple[str, ...], str]]:
        """The means this run reports: normalised ones only with a reference run."""
        return {
            metric: (members, averaged)
            for metric, (members, averaged) in MEANS.items()
            if averaged not in NORMALISED or self.reference_run is not None
        }

    def summarise(self, records: pd.DataFrame) -> list[dict]:
        return super().summarise(records) + self.not_computed()

    def not_computed(self) -> list[dict]:
        """A row, with its reason, for each value this run cannot compute: a mean whose
        perturbations it lacks, or anything the reference cannot divide (missing or 0)."""
        have = set(self.perturbation_list)
        reference = self.reference_run
        rows = []
        for metric, (members, averaged) in self.means().items():
            absent = [p for p in members if p not in have]
            if absent:
                needs = "the 10 test perturbations" if members == P.TEST else ", ".join(members)
                note = f"needs {needs}; this run lacks {', '.join(absent)}"
            elif averaged in NORMALISED and (
                lacking := [p for p in members if not reference.value(NORMALISED[averaged], p)]
            ):
                raw = NORMALISED[averaged]
                note = f"the reference run has no non-zero {raw} for {', '.join(lacking)}"
            else:
                continue
            rows.append(not_computed_row(metric, note))
        if reference is not None:
            for perturbation in self.perturbation_list:
                for metric, raw in NORMALISED.items():
                    if not reference.value(raw, perturbation):
                        note = "the reference run has no non-zero value for it"
                        rows.append(not_computed_row(metric, note, perturbation=perturbation))
        return rows


# Per-perturbation values normalised by a reference run -> what they divide by.
NORMALISED = {"fr": "flip_prob", "t5d": "top5_dist"}
# Means over perturbations: metric -> (perturbations, the per-perturbation metric).
MEANS = {
    "mean_flip_prob": (P.TEST, "flip_prob"),
    "mean_top5_dist": (P.TEST, "top5_dist"),
    "mean_flip_prob_geometric": (P.GEOMETRIC_MFR, "flip_prob"),
    "mfr": (P.TEST, "fr"),
    "mt5d": (P.TEST, "t5d"),
    "mfr_geometric": (P.GEOMETRIC_MFR, "fr"),
}


def pairs(frames: int, perturbation: str, difficulty: int) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) frame indices of the compared pairs of one sequence."""
    if P.is_noise(perturbation):
        later = np.arange(1, frames)
        return np.zeros_like(later), later
    # Stride d: (j - d, j) for every j >= d, which is every offset's chain at once.
    later = np.arange(difficulty, frames)
    return later - difficulty, later


def top5_distance(earlier: np.ndarray, later: np.ndarray) -> np.ndarray:
    """sum_i |(i-1) - min(sigma(i)-1, 5)| for ... x 5 arrays of classes, best first."""
    match = earlier[..., :, None] == later[..., None, :]
    # 0-based rank in the later frame of each earlier class; 5 when outside its top 5.
    rank = np.where(match.any(axis=-1), match.argmax(axis=-1), 5)
    return np.abs(np.arange(5) - rank).sum(axis=-1)


def sequence_averages(
    rows: pd.DataFrame, perturbation: str, difficulty: int
) -> tuple[pd.Series, pd.Series]:
    """Per sequence (= image): mean flip indicator and mean top-5 distance over its pairs."""
    rows = rows.sort_values(["sample", "frame"], kind="stable")
    images = pd.unique(rows["sample"])
    frames = len(rows) // len(images)
    if frames * len(images) != len(rows) or frames < 2:
        raise ValueError(f"{perturbation}: sequences of unequal length in the records")
    preds = rows["pred"].to_numpy().reshape(len(images), frames)
    ranks = rows[list(RANK_COLUMNS)].to_numpy().reshape(len(images), frames, 5)
    earlier, later = pairs(frames, perturbation, difficulty)
    flip = (preds[:, earlier] != preds[:, later]).mean(axis=1)
    distance = top5_distance(ranks[:, earlier], ranks[:, later]).mean(axis=1)
    index = pd.Index(images, name="sample")
    return pd.Series(flip, index=index), pd.Series(distance, index=index)


@dataclass
class Reference:
    """A reference run's flip_prob and top5_dist per perturbation (as fractions)."""

    path: Path
    run_id: str
    flip_prob: dict[str, float]
    top5_dist: dict[str, float]
    provenance: dict | None

    def value(self, metric: str, perturbation: str) -> float | None:
        """The reference's flip_prob or top5_dist (a fraction) for one perturbation."""
        return getattr(self, metric).get(perturbation)

    def values_sha256(self) -> str:
        text = json.dumps([self.flip_prob, self.top5_dist], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def provenance_entry(self) -> dict:
        return {
            "table": str(self.path),
            "run_id": self.run_id,
            "flip_prob": self.flip_prob,
            "top5_dist": self.top5_dist,
            "provenance": self.provenance,
        }


def load_reference(path: Path, suite: ImageNetPSuite) -> Reference:
    """Read a reference imagenet-p table and check it measured the same thing."""
    from aabench.results.load import load_run

    run = load_run(path)
    fix = (
        "make the reference with the same settings, e.g. `aabench run --model alexnet "
        "--weights <alexnet checkpoint> --suite imagenet-p ...` on the same data"
    )
    if run.suite != ImageNetPSuite.name:
        raise UserError(f"--normalize-by {path} is a {run.suite} table, not imagenet-p: {fix}")
    if not run.provenance:
        raise UserError(
            f"--normalize-by {path} has no provenance beside it ({path.with_suffix('.json')}): "
            "without it the reference's difficulty and data cannot be checked; keep the "
            "table and its .json together"
        )
    protocol = run.provenance.get("protocol", {})
    if protocol.get("difficulty", suite.difficulty) != suite.difficulty:
        raise UserError(
            f"--normalize-by {path} was run at difficulty {protocol['difficulty']}, this run "
            f"at {suite.difficulty}: {fix}"
        )
    if protocol.get("generate", suite.generate) != suite.generate:
        kinds = {True: "generated sequences", False: "the released videos"}
        raise UserError(
            f"--normalize-by {path} measured {kinds[protocol['generate']]}, this run "
            f"{kinds[suite.generate]}: {fix}"
        )
    table = run.table
    if "perturbation" not in table.columns:
        raise UserError(f"--normalize-by {path} has no perturbation column: {fix}")
    values: dict[str, dict[str, float]] = {"flip_prob": {}, "top5_dist": {}}
    for metric, scale in (("flip_prob", 100.0), ("top5_dist", 1.0)):
        rows = table[(table["metric"] == metric) & table["perturbation"].notna()]
        for perturbation, value in zip(rows["perturbation"], rows["value"], strict=True):
            if pd.notna(value):
                values[metric][str(perturbation)] = float(value) / scale
    if not values["flip_prob"]:
        raise UserError(f"--normalize-by {path} has no flip_prob rows: {fix}")
    run_ids = table["run_id"].dropna().unique()
    return Reference(
        path=path,
        run_id=str(run_ids[0]) if len(run_ids) else "unknown",
        flip_prob=values["flip_prob"],
        top5_dist=values["top5_dist"],
        provenance=run.provenance,
    )
