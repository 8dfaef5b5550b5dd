"""The engine: exact batches, per-view records, softmax outputs, workers, bad images."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from aabench.data.folder import open_image_folder
from aabench.engine import EngineOptions, evaluate, resolve_device
from aabench.errors import UserError
from aabench.suites.accuracy import AccuracySuite
from aabench.suites.diagonal import DiagonalSuite
from aabench.suites.shift import ShiftSuite
from tests.helpers import (
    GOLDFISH,
    TABBY,
    TENCH,
    Constant,
    Recording,
    loaded,
    make_image_folder,
    run,
    solid,
)

RECORD_COLUMNS = ["sample", "view", "label", "pred", "correct", "top5_correct", "p_true", "p_other"]


class Brightness(nn.Module):
    """Logit k = -(k - 306 * mean brightness)^2 / 100: peaks at class 1.2 x grey level."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2, 3))[:, None]
        k = torch.arange(1000, dtype=torch.float32)[None, :]
        return -((k - 306 * mean) ** 2) / 100


def brightness_logits(grey: int) -> np.ndarray:
    k = np.arange(1000, dtype=np.float64)
    return -((k - 1.2 * grey) ** 2) / 100


GREYS = {TENCH: [0, 2, 60], GOLDFISH: [1], TABBY: [234, 255]}
LABELS = {TENCH: 0, GOLDFISH: 1, TABBY: 281}


@pytest.fixture
def grey_root(tmp_path):
    images = {wnid: [solid(40, g) for g in greys] for wnid, greys in GREYS.items()}
    return make_image_folder(tmp_path / "grey", images)


def test_batches_hold_exactly_batch_size_views(grey_root):
    # 6 images x 6 views (3 epochs x 2) = 36 views in passes of 8: 4 x 8 + 4.
    model = Recording(Constant())
    evaluation = run(
        model, ShiftSuite(max_shift=8, epochs=3), grey_root, batch_size=8, forward_chunk=0
    )
    assert model.batch_sizes == [8, 8, 8, 8, 4]
    assert evaluation.views == 36
    assert evaluation.images == 6


@pytest.mark.parametrize("batch_size", [1, 5, 33, 64])
def test_batch_sizes_for_many_views_per_image(grey_root, batch_size):
    model = Recording(Constant())
    suite = DiagonalSuite(max_offset=8)  # 54 views
    run(model, suite, grey_root, batch_size=batch_size, forward_chunk=0)
    full, rest = divmod(54, batch_size)
    assert model.batch_sizes == [batch_size] * full + ([rest] if rest else [])


def test_a_pass_goes_through_the_model_in_chunks_with_the_same_records(grey_root):
    # Passes of 8 views (36 = 4 x 8 + 4) called in chunks of 3: 3, 3, 2 and 3, 1; the
    # records are those of whole passes (Brightness treats every view on its own).
    suite = ShiftSuite(max_shift=8, epochs=3)
    whole = run(Brightness(), suite, grey_root, batch_size=8, forward_chunk=0)
    model = Recording(Brightness())
    chunked = run(model, suite, grey_root, batch_size=8, forward_chunk=3)
    assert model.batch_sizes == [3, 3, 2] * 4 + [3, 1]
    pd.testing.assert_frame_equal(chunked.records, whole.records)
    assert chunked.views == 36
    # On the CPU the default is the measured chunk.
    model = Recording(Brightness())
    run(model, suite, grey_root, batch_size=16)
    assert model.batch_sizes == [8, 8] * 2 + [4]


def test_records_have_one_row_per_image_and_view(grey_root):
    suite = ShiftSuite(max_shift=8, epochs=2)
    records = run(Constant(), suite, grey_root, batch_size=3).records
    assert list(records.columns) == [*RECORD_COLUMNS, "epoch", "member", "dy", "dx"]
    folder = open_image_folder(grey_root)
    expected = [(s.path, view, s.label) for s in folder.samples for view in range(4)]
    assert list(zip(records["sample"], records["view"], records["label"], strict=True)) == expected
    assert records["epoch"].tolist() == [0, 0, 1, 1] * 6
    assert records["member"].tolist() == [0, 1, 0, 1] * 6
    assert not records.duplicated(["sample", "view"]).any()


def test_outputs_are_the_softmax_of_the_logits_at_the_label(grey_root):
    records = run(Brightness(), AccuracySuite(), grey_root, batch_size=4).records
    greys = [g for wnid in sorted(GREYS) for g in GREYS[wnid]]
    labels = [LABELS[wnid] for wnid in sorted(GREYS) for _ in GREYS[wnid]]
    assert records["label"].tolist() == labels
    for row, grey, label in zip(records.itertuples(), greys, labels, strict=True):
        logits = brightness_logits(grey)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-logits, kind="stable")
        assert row.pred == order[0]
        assert row.correct == (order[0] == label)
        assert row.top5_correct == (label in order[:5])
        assert row.p_true == pytest.approx(probs[label], rel=1e-5, abs=1e-7)
        assert row.p_other == pytest.approx(np.delete(probs, label).max(), rel=1e-5)
    # Predictions 0, 2, 72, 1, 281, 306: some right, some wrong, top-5 differs from top-1.
    assert records["pred"].tolist() == [0, 2, 72, 1, 281, 306]
    assert records["correct"].tolist() == [True, False, False, True, True, False]
    assert records["top5_correct"].tolist() == [True, True, False, True, True, False]
    assert 0.05 < records["p_true"].iloc[0] < 0.95  # not saturated


def test_normalisation_uses_the_model_mean_and_std(grey_root):
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 1000)

    model = loaded(Spy())
    model.base_preprocessing = model.preprocessing.__class__(
        mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), resize_size=40, crop_size=32
    )
    folder = open_image_folder(grey_root)
    evaluate(model, AccuracySuite(), folder, EngineOptions(device="cpu", workers=0, quiet=True))
    x = torch.cat(seen)
    grey = torch.tensor([0, 2, 60, 1, 234, 255], dtype=torch.float32) / 255
    expected = torch.stack([(grey - 0.5) / 0.5, (grey - 0.25) / 0.25, grey], dim=1)
    assert torch.allclose(x.amax(dim=(2, 3)), expected, atol=1e-6)
    assert torch.allclose(x.amin(dim=(2, 3)), expected, atol=1e-6)


def test_workers_do_not_change_the_records(grey_root):
    suite = ShiftSuite(max_shift=8, epochs=2)
    inline = run(Brightness(), suite, grey_root, workers=0, batch_size=5).records
    workers = run(Brightness(), suite, grey_root, workers=1, batch_size=5).records
    pd.testing.assert_frame_equal(inline, workers)


def write_bad_images(root):
    (root / TENCH / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(
        png, format="PNG"
    )
    (root / TABBY / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    return [f"{TENCH}/broken.jpg", f"{TABBY}/truncated.png"]


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("bad", [f"{TENCH}/broken.jpg", f"{TABBY}/truncated.png"])
def test_a_bad_image_is_a_user_error_naming_it(tmp_path, workers, bad):
    root = make_image_folder(tmp_path / "d", {TENCH: [solid(40, 1)], TABBY: [solid(40, 2)]})
    write_bad_images(root)
    # Keep only the bad image under test.
    other = f"{TABBY}/truncated.png" if bad.startswith(TENCH) else f"{TENCH}/broken.jpg"
    (root / other).unlink()
    with pytest.raises(UserError) as error:
        run(Constant(), AccuracySuite(), root, workers=workers)
    message = str(error.value)
    assert f"cannot decode image {root / bad}" in message
    assert "--skip-bad-images" in message


def test_skip_bad_images_records_them_and_goes_on(tmp_path):
    root = make_image_folder(tmp_path / "d", {TENCH: [solid(40, 1)], TABBY: [solid(40, 2)]})
    bad = write_bad_images(root)
    evaluation = run(Constant(), ShiftSuite(max_shift=8, epochs=1), root, skip_bad_images=True)
    assert [entry.split(": ")[0] for entry in evaluation.skipped] == bad
    assert all(re.match(r"^\S+: \w+(Error)?: ", entry) for entry in evaluation.skipped)
    assert evaluation.images == 2
    assert sorted(set(evaluation.records["sample"])) == [f"{TENCH}/img0.png", f"{TABBY}/img0.png"]
    assert evaluation.views == len(evaluation.records) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_user_error(grey_root, device):
    with pytest.raises(UserError, match=f"--device {device} asked for a GPU but PyTorch sees none"):
        run(Constant(), AccuracySuite(), grey_root, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_run_device_cuda_without_a_gpu_exits_2(cli, tmp_path):
    code, _, err = cli(
        "run", "--model", "resnet18_aa", "--weights", "none", "--suite", "accuracy",
        "--device", "cuda", "--out", str(tmp_path), "--quiet",
    )  # fmt: skip
    assert code == 2
    assert "asked for a GPU but PyTorch sees none" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(UserError, match="unsupported device 'meta'"):
        resolve_device("meta")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"amp": "fp8"}, "--amp must be one of off, bf16, fp16, got 'fp8'"),
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"workers": -1}, "--workers must be 0 or more, got -1"),
        ({"forward_chunk": -1}, "--forward-chunk must be 0 (the whole pass) or more, got -1"),
        ({"forward_chunk": True}, "--forward-chunk must be a whole number of views, got True"),
    ],
)
def test_invalid_options_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)):
        EngineOptions(**kwargs)


class RunsOutOfMemoryAbove(nn.Module):
    """Raises CUDA's out-of-memory error (or ``error``) for batches larger than ``limit``."""

    def __init__(self, inner: nn.Module, limit: int, error: Exception | None = None):
        super().__init__()
        self.inner, self.limit = inner, limit
        self.error = error or torch.OutOfMemoryError("CUDA out of memory (injected)")
        self.batch_sizes: list[int] = []

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise self.error
        self.batch_sizes.append(x.shape[0])
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_changes_no_result(grey_root):
    suite = ShiftSuite(max_shift=8, epochs=3)
    plain = run(Constant(), suite, grey_root, batch_size=2)
    model = RunsOutOfMemoryAbove(Constant(), limit=2)
    halved = run(model, suite, grey_root, batch_size=8)
    assert halved.batch_size_halvings == [4, 2]
    assert set(model.batch_sizes) == {2}
    pd.testing.assert_frame_equal(halved.records, plain.records)


def test_a_batch_too_large_for_32_bit_indexing_is_halved_too(grey_root):
    # What reflect padding raised on an H100 for a batch of 65536 views.
    error = RuntimeError("input tensor must fit into 32-bit index math")
    model = RunsOutOfMemoryAbove(Constant(), limit=3, error=error)
    halved = run(model, ShiftSuite(max_shift=8, epochs=3), grey_root, batch_size=8)
    assert halved.batch_size_halvings == [4, 2]


def test_other_runtime_errors_are_not_mistaken_for_a_batch_too_large(grey_root):
    model = RunsOutOfMemoryAbove(Constant(), limit=0, error=RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(model, AccuracySuite(), grey_root, batch_size=2)


def test_out_of_memory_at_batch_size_one_is_a_user_error(grey_root):
    model = RunsOutOfMemoryAbove(Constant(), limit=0)
    with pytest.raises(UserError, match="out of GPU memory even at batch size 1"):
        run(model, AccuracySuite(), grey_root, batch_size=2)


def test_the_main_process_keeps_few_threads_while_a_gpu_runs_the_model():
    from aabench.engine import GPU_MAIN_THREADS, _main_threads

    before = torch.get_num_threads()
    with _main_threads(torch.device("cuda")):
        assert torch.get_num_threads() == min(before, GPU_MAIN_THREADS)
    assert torch.get_num_threads() == before
    with _main_threads(torch.device("cpu")):  # on the CPU the model needs them all
        assert torch.get_num_threads() == before


def test_a_suite_that_measures_layers_sees_whole_passes_of_the_unfolded_model():
    from aabench.suites.equivariance import EquivarianceSuite

    cpu, options = torch.device("cpu"), EngineOptions()
    assert options.chunk_for(cpu, ShiftSuite()) == 8  # the CPU's defaults otherwise
    assert options.folds_batchnorm(cpu, ShiftSuite()) is True
    assert options.chunk_for(cpu, EquivarianceSuite()) == 0
    assert options.folds_batchnorm(cpu, EquivarianceSuite()) is False
