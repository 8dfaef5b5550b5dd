"""What a suite reads, turned into a source of images per sample, and a description of
that data for the provenance (compare refuses to mix released and generated ImageNet-C).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from aabench.data.folder import ImageFolder
from aabench.errors import UserError


def corruption_library() -> str:
    try:
        return f"imagecorruptions-imaug {version('imagecorruptions-imaug')}"
    except PackageNotFoundError:
        return "imagecorruptions (version unknown)"


def source_for(suite, folder: ImageFolder, device=None):
    """(source or None for the plain val images, data-source description). ``device``:
    the model's (None: the CPU), which decides how ImageNet-C decodes its JPEGs."""
    if suite.name == "imagenet-p":
        return _imagenet_p_source(suite, folder)
    if suite.name != "imagenet-c":
        return None, {"kind": "imagenet-val"}
    suite.resolve_decoder(device)
    if suite.generate:
        return None, {
            "kind": "generated",
            "library": corruption_library(),
            "jpeg_quality": suite.jpeg_quality,
        }
    from aabench.data.imagenet_c import ReleasedImageNetC, find_layout

    if not suite.imagenet_c:
        raise UserError(
            "the imagenet-c suite reads the released set: pass --imagenet-c DIR (or make it "
            "once with `aabench make-imagenet-c`), or --set generate=true to corrupt the "
            "--data images on the fly"
        )
    layout = find_layout(suite.imagenet_c)
    suite.missing_cells = tuple(layout.missing(suite.corruption_list, suite.severity_list))
    if not suite.cells():
        raise UserError(
            f"{layout.root} has none of the requested cells ({suite.corruptions} x "
            f"severities {suite.severities}): check --set corruptions / severities"
        )
    return ReleasedImageNetC(folder, layout, suite.cells(), suite.decoder_in_use()), {
        "kind": "released",
        "missing_cells": [f"{c}/{s}" for c, s in suite.missing_cells],
    }


def _imagenet_p_source(suite, folder: ImageFolder):
    if suite.generate:
        return None, {"kind": "generated", "generator": "aabench perturbations"}
    if not suite.imagenet_p:
        raise UserError(
            "the imagenet-p suite reads the released videos: pass --imagenet-p DIR, or "
            "--generate to make the sequences from the --data images"
        )
    from aabench.data.imagenet_p import ReleasedImageNetP, find_layout, video_folder

    layout = find_layout(suite.imagenet_p, suite.perturbation_list, suite.difficulty)
    videos = video_folder(layout, limit=folder.limit)
    return ReleasedImageNetP(layout, videos), {
        "kind": "released",
        "directories": {p: d.name for p, d in layout.directories.items()},
    }
