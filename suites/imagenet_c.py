"""ImageNet-C (Hendrycks & Dietterich 2019): top-1 error under 15 common corruptions at 5
severities, normalised by AlexNet's errors.

E(c, s): top-1 error on corruption c at severity s; CE(c) = sum_s E(c, s) / sum_s
E_AlexNet(c, s); mCE = 100 * mean of CE over the 15 common corruptions; relative mCE uses
E(c, s) - E(clean) over AlexNet's same difference; ``mean_error`` is the unnormalised
mean over the 15. The 4 extra corruptions get their own ``ce``, never inside mCE.

Every metric is linear in per-image error indicators, so each is written as per-image
terms and the paired bootstrap of `aabench compare` applies to mCE as to any other row.
A metric that needs a cell the run does not have is not computed: its row carries the
reason in ``note`` and no value.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aabench.data import corruptions as C
from aabench.errors import UserError
from aabench.lazy import lazy_module
from aabench.suites import alexnet_errors
from aabench.suites.base import Metric, Suite, Views, not_computed_row, term_frame

pd = lazy_module("pandas")  # imported on first use (see aabench.lazy)
torch = lazy_module("torch")
device_decode = lazy_module("aabench.device_decode")  # torchvision.io, the engine

CLEAN = "clean"
# How released JPEG cells are decoded: auto = nvjpeg when the model runs on CUDA and the
# cells are released files, else pil (PIL in the DataLoader workers).
DECODERS = ("auto", "pil", "nvjpeg")
# Device types the nvjpeg decoder decodes on. The tests add "cpu", where decode_jpeg runs
# libjpeg, to run that code path without a GPU.
NVJPEG_DEVICE_TYPES = ("cuda",)


@dataclass
class ImageNetCSuite(Suite):
    name = "imagenet-c"
    description = "ImageNet-C: corruption errors, CE, mCE (AlexNet-normalised), relative mCE."
    headline = ("mce", "relative_mce", "clean_error")
    metrics = {  # noqa: RUF012 - class-level protocol facts
        "error": Metric("%", False, "top-1 error on one cell", outcome=True),
        "top5_error": Metric(
            "%", False, "top-5 error on one corruption and severity", outcome=True
        ),
        "clean_error": Metric("%", False, "top-1 error on the clean centre crop", outcome=True),
        "ce": Metric("%", False, "corruption error: sum_s E / sum_s E_AlexNet"),
        "mce": Metric("%", False, "mean CE over the 15 common corruptions (or a category)"),
        "relative_mce": Metric("%", False, "mean relative CE over the 15 common corruptions"),
        "mean_error": Metric("%", False, "unnormalised mean top-1 error over the 15 common"),
    }
    dimensions = ("corruption", "severity", "category")
    locations = ("imagenet_c",)

    corruptions: str = "common"  # names, categories, common, extra or all
    severities: str = "1,2,3,4,5"
    generate: bool = False  # corrupt --data images on the fly instead of reading released files
    jpeg_quality: int | None = (
        None  # with generate: JPEG round trip at this quality (85 = released)
    )
    imagenet_c: str | None = None  # the released set's root (--imagenet-c)
    decoder: str = "auto"  # released JPEG cells: auto, pil or nvjpeg (on the model's GPU)

    def __post_init__(self):
        self.corruption_list = C.parse_corruptions(self.corruptions)
        self.severity_list = C.parse_severities(self.severities)
        if self.decoder not in DECODERS:
            raise UserError(
                f"imagenet-c decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}"
            )
        if self.decoder == "nvjpeg" and self.generate:
            raise UserError(
                "decoder=nvjpeg decodes released JPEG cells on the GPU, but generate=true "
                "makes its cells on the CPU: drop one of the two"
            )
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"jpeg_quality must be 1..100, got {self.jpeg_quality}")
        if self.jpeg_quality is not None and not self.generate:
            raise UserError(
                "jpeg_quality applies to generated corruptions: add --set generate=true "
                "(released images are already JPEG quality 85)"
            )

    def parameters(self) -> dict:
        parameters = super().parameters()
        parameters.update(
            corruptions=",".join(self.corruption_list),
            severities=",".join(map(str, self.severity_list)),
        )
        if self.generate:
            # Generated images depend on the generator: runs of another version differ.
            parameters["generator_version"] = C.GENERATOR_VERSION
        parameters["decoder"] = self.decoder_in_use()
        return parameters

    def protocol(self) -> dict:
        protocol = super().protocol()
        if protocol["decoder"] == "pil":
            # Every run decoded with PIL before the decoder could be chosen: leaving it
            # out keeps those runs' ids, and their comparisons with new ones.
            del protocol["decoder"]
        return protocol

    def resolve_decoder(self, device) -> str:
        """The decoder of a run whose model is on ``device`` (None: the CPU), from now on
        the one ``parameters`` records; decoder=nvjpeg without CUDA is refused."""
        on_gpu = torch.device(device or "cpu").type in NVJPEG_DEVICE_TYPES
        if self.decoder == "nvjpeg" and not on_gpu:
            raise UserError(
                f"decoder=nvjpeg decodes on the model's GPU, but the model runs on "
                f"{device or 'cpu'}: use --device cuda on a machine with a GPU, or "
                "--set decoder=pil (or auto)"
            )
        if self.decoder == "auto":
            self.resolved_decoder = "nvjpeg" if on_gpu and not self.generate else "pil"
        else:
            self.resolved_decoder = self.decoder
        return self.resolved_decoder

    def decoder_in_use(self) -> str:
        """The resolved decoder; before resolve_decoder, the one asked for."""
        return getattr(self, "resolved_decoder", self.decoder)

    def cells(self) -> list[tuple[str, int]]:
        """The cells this run evaluates: those asked for, less any the data set lacks."""
        missing = set(getattr(self, "missing_cells", ()))
        return [
            (c, s)
            for c in self.corruption_list
            for s in self.severity_list
            if (c, s) not in missing
        ]

    def views_per_image(self) -> int:
        return 1 + len(self.cells())

    def view_size(self, preprocessing) -> int:
        return C.CROP  # the released pipeline's, whatever the model's crop

    # Views: the clean centre crop first, then one view per cell.
    def prepare(self, image, preprocessing):
        # Resize(256) -> CenterCrop(224) whatever the model's own sizes: the pipeline that
        # made the released corrupted images, so clean and corrupted views match.
        return torch.from_numpy(C.center_224(image).copy()).permute(2, 0, 1)

    def views(self, image, sample, position, seed):  # pragma: no cover - views_from is used
        raise AssertionError("ImageNet-C builds its views in views_from")

    def views_from(self, images, sample, position, seed, preprocessing) -> Views:
        clean = self.prepare(images["clean"], preprocessing)
        views, names, levels = [clean], [CLEAN], [0]
        jpegs = []  # (view index, file): released JPEGs the engine decodes on the device
        for index, (corruption, severity) in enumerate(self.cells(), start=1):
            names.append(corruption)
            levels.append(severity)
            if self.generate:
                array = clean.permute(1, 2, 0).numpy()
                cell_seed = C.corruption_seed(seed, sample.key, corruption, severity)
                corrupted = C.corrupt(array, corruption, severity, cell_seed)
                if self.jpeg_quality is not None:
                    encoded = io.BytesIO(C.jpeg_bytes(corrupted, self.jpeg_quality))
                    corrupted = np.array(Image.open(encoded).convert("RGB"))
                views.append(torch.from_numpy(np.ascontiguousarray(corrupted)).permute(2, 0, 1))
                continue
            # Released images are evaluated as they are: no resize, no crop.
            image = images[(corruption, severity)]
            if isinstance(image, device_decode.JPEGFile):
                width, height = image.size
                _check_released_size((height, width), clean, sample, corruption, severity)
                jpegs.append((index, image))
            else:
                view = _to_tensor(image)
                _check_released_size(tuple(view.shape[1:]), clean, sample, corruption, severity)
                views.append(view)
        meta = {"corruption": np.array(names, dtype=object), "severity": np.array(levels)}
        if self.decoder_in_use() != "nvjpeg":
            return Views(torch.stack(views), meta)
        # Every image of the run, even one without JPEG cells, so that all of them have
        # their views on the device.
        return device_decode.EncodedViews(
            torch.stack(views), meta, encoded=device_decode.EncodedCells.of(jpegs)
        )

    def terms(self, records: pd.DataFrame) -> pd.DataFrame:
        wrong = ~records["correct"].astype(bool)
        wrong5 = ~records["top5_correct"].astype(bool)
        parts = []
        cells = records[records["corruption"] != CLEAN]
        for (corruption, severity), group in cells.groupby(["corruption", "severity"], sort=False):
            dims = {"corruption": corruption, "severity": int(severity)}
            parts += [
                term_frame("error", group["sample"], wrong[group.index], **dims),
                term_frame("top5_error", group["sample"], wrong5[group.index], **dims),
            ]
        clean = records["corruption"] == CLEAN
        parts.append(term_frame("clean_error", records.loc[clean, "sample"], wrong[clean]))
        errors = _ErrorSums(records, wrong)
        for corruption in self.corruption_list:
            if errors.covers([corruption]):
                parts.append(
                    term_frame("ce", errors.images, errors.ce(corruption), corruption=corruption)
                )
        if errors.covers(C.COMMON):
            ces = sum(errors.ce(c) for c in C.COMMON) / len(C.COMMON)
            parts.append(term_frame("mce", errors.images, ces))
            mean = sum(errors.total(c) for c in C.COMMON) / (len(C.SEVERITIES) * len(C.COMMON))
            parts.append(term_frame("mean_error", errors.images, mean))
            relative = sum(errors.relative_ce(c) for c in C.COMMON) / len(C.COMMON)
            parts.append(term_frame("relative_mce", errors.images, relative))
        for category in CATEGORY_NAMES:
            members = C.CATEGORIES[category]
            if errors.covers(members):
                ces = sum(errors.ce(c) for c in members) / len(members)
                parts.append(term_frame("mce", errors.images, ces, category=category))
        return pd.concat(parts, ignore_index=True)

    def summarise(self, records: pd.DataFrame) -> list[dict]:
        return super().summarise(records) + self.not_computed()

    def not_computed(self) -> list[dict]:
        """A row, with its reason, for each aggregate whose cells this run lacks."""
        have = set(self.cells())
        rows = []

        def lacking(corruptions) -> str | None:
            needed = [(c, s) for c in corruptions for s in C.SEVERITIES]
            absent = [f"{c}/{s}" for c, s in needed if (c, s) not in have]
            if not absent:
                return None
            shown = ", ".join(absent[:6]) + (", ..." if len(absent) > 6 else "")
            return f"needs every severity of its corruptions; missing {len(absent)} cells ({shown})"

        for corruption in self.corruption_list:
            if reason := lacking([corruption]):
                rows.append(not_computed_row("ce", reason, corruption=corruption))
        if reason := lacking(C.COMMON):
            rows += [not_computed_row(m, reason) for m in ("mce", "relative_mce", "mean_error")]
        for category in CATEGORY_NAMES:
            if reason := lacking(C.CATEGORIES[category]):
                rows.append(not_computed_row("mce", reason, category=category))
        return rows


CATEGORY_NAMES = ("noise", "blur", "weather", "digital")


class _ErrorSums:
    """Per-image top-1 errors summed over severities, by corruption, plus the clean error."""

    def __init__(self, records: pd.DataFrame, wrong: pd.Series):
        table = records.assign(wrong=wrong.astype(float))
        self.images = pd.Index(sorted(table["sample"].unique()), name="sample")
        clean = table[table["corruption"] == CLEAN].set_index("sample")["wrong"]
        self.clean = clean.reindex(self.images).to_numpy()
        cells = table[table["corruption"] != CLEAN]
        self.severities = cells.groupby("corruption")["severity"].agg(lambda s: set(s.astype(int)))
        self.sums = (
            cells.groupby(["sample", "corruption"])["wrong"]
            .sum()
            .unstack("corruption")
            .reindex(self.images)
        )

    def covers(self, corruptions) -> bool:
        return all(
            c in self.severities and self.severities[c] == set(C.SEVERITIES) for c in corruptions
        )

    def total(self, corruption: str) -> np.ndarray:
        return self.sums[corruption].to_numpy()

    def ce(self, corruption: str) -> np.ndarray:
        return self.total(corruption) / sum(alexnet_errors.ERRORS[corruption])

    def relative_ce(self, corruption: str) -> np.ndarray:
        severities = len(C.SEVERITIES)
        alexnet = sum(alexnet_errors.ERRORS[corruption]) - severities * alexnet_errors.CLEAN_ERROR
        return (self.total(corruption) - severities * self.clean) / alexnet


def _check_released_size(shape, clean, sample, corruption: str, severity: int) -> None:
    if tuple(shape) != tuple(clean.shape[1:]):
        raise UserError(
            f"ImageNet-C image for {sample.path} in {corruption}/{severity} is "
            f"{tuple(shape)}, not {tuple(clean.shape[1:])}: released "
            "ImageNet-C is 224 x 224 and is evaluated without resizing"
        )


def _to_tensor(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
