"""ImageNet-C's released JPEG cells decoded on the model's device (decoder=nvjpeg).

The device path runs here on the CPU (torchvision's decode_jpeg is libjpeg there): it
must give the pil decoder's records exactly, bad images included. The nvJPEG test
itself needs a GPU and is skipped without one.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from aabench import device_decode
from aabench.data import corruptions as C
from aabench.suites import imagenet_c
from tests.catalogue import FAST
from tests.suites.test_imagenet_c import VAL_FILES, invoke, make_val  # the same tiny val set

CELLS = [("gaussian_noise", 1), ("gaussian_noise", 2), ("brightness", 1)]
# A released file whose bytes are a PNG under its .JPEG name: decoded in the worker.
PNG_CELL = ("brightness", 1, VAL_FILES[1])
JPEG_FILES = len(VAL_FILES) * len(CELLS) - 1


def make_released(root: Path, val: Path) -> Path:
    """Cell k (from 1): the centre crop brightened by 8 k, as the generator's JPEG."""
    for name in VAL_FILES:
        with Image.open(val / name) as image:
            centre = C.center_224(image)
        for number, (corruption, severity) in enumerate(CELLS, start=1):
            path = root / corruption / str(severity) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            shifted = np.clip(centre.astype(int) + 8 * number, 0, 255).astype(np.uint8)
            if (corruption, severity, name) == PNG_CELL:
                Image.fromarray(shifted).save(path, format="PNG")
            else:
                path.write_bytes(C.jpeg_bytes(shifted))
    return root


def run_args(val: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "imagenet-c",
        "--data", str(val), "--imagenet-c", str(root), "--out", str(out),
        "--set", "corruptions=gaussian_noise,brightness", "--batch-size", "4", *FAST, *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def device_decode_on_the_cpu():
    """decoder=nvjpeg allowed on the CPU; yields the number of files each batched
    decode_jpeg call was given, so a test sees the device path really ran."""
    calls: list[int] = []

    def counting(files, **kwargs):
        calls.append(len(files) if isinstance(files, list) else 1)
        return decode_jpeg(files, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(imagenet_c, "NVJPEG_DEVICE_TYPES", ("cuda", "cpu"))
        patch.setattr(device_decode, "decode_jpeg", counting)
        yield calls


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("device_decode")
    val = make_val(base / "val")
    return {"base": base, "val": val, "root": make_released(base / "imagenet-c", val)}


@pytest.fixture(scope="module")
def runs(tree):
    """The same run decoded by PIL in the workers, and by decode_jpeg in the main process
    (one worker: the bytes cross the process boundary as they do in a real run)."""
    from aabench.models import weights

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to reach the network: {url}")

    base, val, root = tree["base"], tree["val"], tree["root"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(weights, "urlopen", refuse)
        patch.setenv("TORCH_HOME", str(base / "torch_home"))
        code, _, err = invoke(*run_args(val, root, base / "pil"))
        assert code == 0, err
        with device_decode_on_the_cpu() as calls:
            code, _, err = invoke(
                *run_args(val, root, base / "nvjpeg", "--set", "decoder=nvjpeg", "--workers", "1")
            )
        assert code == 0, err
    return {"pil": base / "pil" / "resnet18_aa", "nvjpeg": base / "nvjpeg" / "resnet18_aa"} | {
        "calls": calls
    }


def provenance(directory: Path) -> dict:
    return json.loads((directory / "imagenet-c.json").read_text())


def samples(directory: Path) -> bytes:
    return gzip.decompress((directory / "imagenet-c.samples.csv.gz").read_bytes())


def test_torchvision_decodes_the_generators_jpegs_to_pils_pixels():
    # Measured on 285 files (the 5 sample images x 19 corruptions x severities 1, 3, 5,
    # quality 85): not one level differs. These cover smooth and noisy content.
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    smooth = np.broadcast_to(np.linspace(0, 255, 224, dtype=np.uint8)[:, None, None], noise.shape)
    arrays = [noise, np.ascontiguousarray(smooth)]
    arrays += [C.corrupt(noise, c, 3, 0) for c in ("gaussian_noise", "defocus_blur", "contrast")]
    for array in arrays:
        data = C.jpeg_bytes(np.ascontiguousarray(array))
        pil = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), pil)


def test_device_path_on_the_cpu_gives_the_pil_records_exactly(runs):
    # One batched call per loader batch of 1 image (batch 4 / 4 views), JPEG files only.
    assert runs["calls"] == [len(CELLS), len(CELLS) - 1]
    assert sum(runs["calls"]) == JPEG_FILES
    assert samples(runs["nvjpeg"]) == samples(runs["pil"])
    pil = pd.read_csv(runs["pil"] / "imagenet-c.csv").drop(columns="run_id")
    nvjpeg = pd.read_csv(runs["nvjpeg"] / "imagenet-c.csv").drop(columns="run_id")
    pd.testing.assert_frame_equal(nvjpeg, pil)
    # The cells do differ from each other, so a view put at another's place would show.
    records = pd.read_csv(io.BytesIO(samples(runs["pil"])))
    assert records["p_true"].nunique() == len(records) == len(VAL_FILES) * (1 + len(CELLS))


def test_provenance_records_the_decoder_and_pil_runs_keep_their_protocol(runs):
    pil, nvjpeg = provenance(runs["pil"]), provenance(runs["nvjpeg"])
    assert pil["parameters"]["decoder"] == "pil"  # auto on the CPU
    assert nvjpeg["parameters"]["decoder"] == "nvjpeg"
    assert "decoder" not in pil["protocol"]  # as every run before the decoder was chosen
    assert nvjpeg["protocol"]["decoder"] == "nvjpeg"
    assert {k: v for k, v in nvjpeg["protocol"].items() if k != "decoder"} == pil["protocol"]
    assert nvjpeg["run_id"] != pil["run_id"]


def test_compare_refuses_to_mix_decoders_unless_allowed(cli, runs):
    pil, nvjpeg = str(runs["pil"] / "imagenet-c.csv"), str(runs["nvjpeg"] / "imagenet-c.csv")
    code, stdout, err = cli("compare", pil, nvjpeg)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("aabench: error: ")
    assert "different JPEG decoders: pil vs nvjpeg" in err
    assert "protocol parameters differ" not in err  # the decoder is said once
    assert "--allow-mismatch" in err
    code, stdout, err = cli("compare", pil, nvjpeg, "--allow-mismatch", "--bootstrap", "20")
    assert code == 0, err
    assert "different JPEG decoders: pil vs nvjpeg" in stdout + err


def test_runs_without_a_recorded_decoder_compare_as_pil(cli, runs, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("imagenet-c.csv", "imagenet-c.samples.csv.gz"):
        (old / name).write_bytes((runs["pil"] / name).read_bytes())
    written = provenance(runs["pil"])
    del written["parameters"]["decoder"]
    (old / "imagenet-c.json").write_text(json.dumps(written))
    old_table = str(old / "imagenet-c.csv")
    code, _, err = cli(
        "compare", old_table, str(runs["pil"] / "imagenet-c.csv"), "--bootstrap", "20"
    )
    assert code == 0, err
    code, _, err = cli("compare", old_table, str(runs["nvjpeg"] / "imagenet-c.csv"))
    assert code == 2 and "different JPEG decoders: pil vs nvjpeg" in err


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (("--set", "decoder=nvjpeg"), "decoder=nvjpeg decodes on the model's GPU, but the model"),
        (("--set", "decoder=nvjpeg", "--set", "generate=true"), "generate=true makes its cells"),
        (("--set", "decoder=libjpeg"), "decoder must be one of auto, pil, nvjpeg, got 'libjpeg'"),
    ],
)
def test_a_decoder_that_cannot_run_is_one_line_and_nothing_written(
    cli, tree, tmp_path, extra, words
):
    out = tmp_path / "out"
    code, stdout, err = cli(*run_args(tree["val"], tree["root"], out, *extra))
    assert code == 2 and stdout == ""
    assert err.startswith("aabench: error: ") and err.count("\n") == 1
    assert words in err
    assert not out.exists()


def corrupt_tree(tree, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the released set whose gaussian_noise/2 file of the first image is cut
    in half: its header reads, its pixels do not."""
    root = tmp_path / "imagenet-c"
    for path in tree["root"].rglob("*"):
        if path.is_file():
            (root / path.relative_to(tree["root"])).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(tree["root"])).write_bytes(path.read_bytes())
    bad = root / "gaussian_noise" / "2" / VAL_FILES[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return root, bad


def test_a_corrupt_jpeg_is_the_same_bad_image_for_both_decoders(cli, tree, tmp_path):
    root, bad = corrupt_tree(tree, tmp_path)
    errors = {}
    for decoder in ("pil", "nvjpeg"):
        with device_decode_on_the_cpu():
            out = tmp_path / decoder
            code, stdout, err = cli(
                *run_args(tree["val"], root, out, "--set", f"decoder={decoder}")
            )
        assert code == 2 and stdout == "" and not out.exists()
        errors[decoder] = err
    assert errors["nvjpeg"] == errors["pil"]
    assert errors["pil"].startswith(f"aabench: error: cannot decode image {bad} (OSError: ")
    assert errors["pil"].count("\n") == 1


def test_skip_bad_images_skips_the_same_image_with_both_decoders(cli, tree, tmp_path):
    root, bad = corrupt_tree(tree, tmp_path)
    for decoder in ("pil", "nvjpeg"):
        with device_decode_on_the_cpu() as calls:
            code, _, err = cli(
                *run_args(tree["val"], root, tmp_path / decoder, "--set", f"decoder={decoder}"),
                "--skip-bad-images",
            )
        assert code == 0, err
        if decoder == "nvjpeg":
            # The batch fails, then the image's files one by one find the culprit.
            assert calls == [3, 1, 1, 2]
    pil, nvjpeg = (tmp_path / d / "resnet18_aa" for d in ("pil", "nvjpeg"))
    assert samples(nvjpeg) == samples(pil)
    skipped = provenance(nvjpeg)["data"]["skipped_images"]
    assert skipped == provenance(pil)["data"]["skipped_images"]
    assert len(skipped) == 1 and skipped[0].startswith(f"{bad}: OSError: ")


def test_auto_is_nvjpeg_only_for_released_cells_on_a_device_it_decodes_on(monkeypatch):
    monkeypatch.setattr(imagenet_c, "NVJPEG_DEVICE_TYPES", ("cuda",))
    resolved = {
        (generate, device): imagenet_c.ImageNetCSuite(generate=generate).resolve_decoder(device)
        for generate in (False, True)
        for device in (None, "cpu", torch.device("cuda"), "cuda:1")
    }
    assert resolved == {
        (False, None): "pil",
        (False, "cpu"): "pil",
        (False, torch.device("cuda")): "nvjpeg",
        (False, "cuda:1"): "nvjpeg",
        (True, None): "pil",
        (True, "cpu"): "pil",
        (True, torch.device("cuda")): "pil",  # generated cells are made on the CPU
        (True, "cuda:1"): "pil",
    }
    suite = imagenet_c.ImageNetCSuite(decoder="pil")
    assert suite.resolve_decoder("cuda") == "pil" and suite.parameters()["decoder"] == "pil"


def test_read_cell_leaves_what_the_device_would_decode_differently_to_pil(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    jpeg, png, cmyk = tmp_path / "a.JPEG", tmp_path / "b.JPEG", tmp_path / "c.JPEG"
    jpeg.write_bytes(C.jpeg_bytes(rgb))
    Image.fromarray(rgb).save(png, format="PNG")
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    read = device_decode.read_cell(jpeg)
    assert isinstance(read, device_decode.JPEGFile)
    assert read.data == jpeg.read_bytes() and read.size == (16, 16)
    for path in (png, cmyk):
        decoded = device_decode.read_cell(path)
        assert isinstance(decoded, Image.Image) and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), np.asarray(Image.open(path).convert("RGB")))


# --- on a GPU ------------------------------------------------------------------------------

# nvJPEG is not libjpeg: torchvision's own test of its GPU decoder bounds the mean absolute
# difference from the CPU decoder by 2 levels. The GPU check (tools/gpu_check.sh) measures
# the difference and the top-1 agreement on the sample images.
NVJPEG_MEAN_LEVELS = 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs a CUDA GPU")
def test_nvjpeg_on_the_gpu_is_within_the_documented_bound_of_pil(cli, tree, tmp_path):
    files = sorted(
        path for path in tree["root"].rglob("*.JPEG") if path.read_bytes()[:2] == b"\xff\xd8"
    )
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device="cuda")
    differences = []
    for path, tensor in zip(files, decoded, strict=True):
        pil = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)
        differences.append((tensor.cpu().int() - pil.int()).abs())
    levels = torch.stack(differences).float()
    print(f"nvJPEG vs PIL: mean {levels.mean():.4f} levels, max {int(levels.max())}")
    assert levels.mean() < NVJPEG_MEAN_LEVELS
    for decoder in ("pil", "nvjpeg"):
        args = run_args(
            tree["val"], tree["root"], tmp_path / decoder, "--set", f"decoder={decoder}"
        )
        code, _, err = cli(*[a if a != "cpu" else "cuda" for a in args])
        assert code == 0, err
    pil, nvjpeg = (
        pd.read_csv(io.BytesIO(samples(tmp_path / d / "resnet18_aa"))) for d in ("pil", "nvjpeg")
    )
    clean = pil["corruption"] == "clean"
    # The clean views are PIL's in both runs: the same pixels at the same places.
    assert (nvjpeg["pred"][clean] == pil["pred"][clean]).all()
    agreement = (nvjpeg["pred"][~clean] == pil["pred"][~clean]).mean()
    print(f"top-1 agreement of the decoded cells: {agreement:.4f}")
    # Each cell's view sits at its place: the cells of an image differ by 8 levels of
    # brightness, the decoders by about one, so every nvjpeg record's p(true) is nearest
    # to the pil record of its own cell among that image's records.
    for _, image in pil.groupby("sample"):
        theirs = nvjpeg.loc[image.index, "p_true"].to_numpy()
        ours = image["p_true"].to_numpy()
        nearest = np.abs(theirs[:, None] - ours[None, :]).argmin(axis=1)
        assert (nearest == np.arange(len(ours))).all()


def test_bench_reads_the_released_cells_and_times_their_device_decode(tree):
    # bench reads the suite's released set as run does, and counts the cells still
    # encoded when they leave the workers as views.
    args = [
        "bench", "--model", "resnet18_aa", "--weights", "none", "--suite", "imagenet-c",
        "--data", str(tree["val"]), "--imagenet-c", str(tree["root"]), "--baseline", "none",
        "--set", "corruptions=gaussian_noise,brightness", "--set", "decoder=nvjpeg",
        "--batch-size", "4", "--images", "2", "--seconds", "12", "--json", *FAST[:4],
    ]  # fmt: skip
    with device_decode_on_the_cpu() as calls:
        code, out, err = invoke(*args)
    assert code == 0, err
    report = json.loads(out)
    views = len(VAL_FILES) * (1 + len(CELLS))
    assert (report["pipeline_views"], report["end_to_end_views"]) == (views, views)
    assert sum(calls) == JPEG_FILES  # the end-to-end phase decoded them on the device
    assert report["end_to_end_device_decode_seconds"] > 0
