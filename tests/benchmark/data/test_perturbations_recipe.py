"""Generated ImageNet-P sequences follow the release's recipe (make_imagenet_p.py): each
perturbation's defining property, and every frame recomputed here from the written
recipe. Also: the frost draw of ImageNet-C, the H.264 option and the generator version."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from torchvision.transforms import functional as TF

from aabench.data import corruptions as C
from aabench.data import perturbations as P
from aabench.errors import UserError

BILINEAR = Image.Resampling.BILINEAR


@pytest.fixture(scope="module")
def base():
    # 400 x 300 -> Resize(256) is 341 x 256: wider than the crop, as most val images are.
    y, x = np.mgrid[0:300, 0:400]
    image = np.stack([(x * 3) % 256, (y * 2) % 256, (x + 2 * y) % 256], axis=-1)
    image[100:180, 150:260] = (200, 40, 90)
    return P.Base.of(Image.fromarray(image.astype(np.uint8)))


def generate(base, name, seed=0, difficulty=1):
    return P.generate(base, name, difficulty, np.random.default_rng(seed))


def crop(image) -> np.ndarray:
    return np.asarray(TF.center_crop(image, 224))


def affine(image, **kw):
    return TF.affine(image, **{"angle": 0, "translate": [0, 0], "scale": 1, "shear": 0, **kw})


def test_rotate_is_clockwise_affine_not_counter_clockwise_rotate(base):
    frames = generate(base, "rotate")
    plus15 = crop(affine(base.resized, angle=15, interpolation=BILINEAR))
    assert np.array_equal(frames[30], plus15)
    assert not np.array_equal(frames[30], crop(TF.rotate(base.resized, 15, interpolation=BILINEAR)))
    for i in range(31):
        expected = crop(affine(base.resized, angle=i - 15, interpolation=BILINEAR))
        assert np.array_equal(frames[i], expected), i


def test_shear_is_along_x_only(base):
    # Rows of one colour each: an x-only shear moves pixels along their row, so the image
    # is unchanged; a shear on both axes would move them across rows.
    y = np.arange(300)[:, None, None]
    rows = np.broadcast_to(
        np.concatenate([y % 256, (3 * y) % 256, (7 * y) % 256], -1), (300, 400, 3)
    )
    striped = P.Base.of(Image.fromarray(rows.astype(np.uint8)))
    frames = generate(striped, "shear")
    assert all(np.array_equal(frame, striped.crop) for frame in frames)
    both = crop(affine(striped.resized, shear=[15.0, 15.0], interpolation=BILINEAR))
    assert not np.array_equal(both, striped.crop)
    sheared = generate(base, "shear")
    for i in range(31):
        assert np.array_equal(
            sheared[i], crop(affine(base.resized, shear=[i - 15.0, 0.0], interpolation=BILINEAR))
        )


def test_scale_and_translate_frames(base):
    scale, translate = generate(base, "scale"), generate(base, "translate")
    for i in range(31):
        expected = crop(affine(base.resized, scale=(i * 2.5 + 40) / 100, interpolation=BILINEAR))
        assert np.array_equal(scale[i], expected), i
    for i in range(41):
        assert np.array_equal(translate[i], crop(affine(base.resized, translate=[i - 20, 0]))), i


def test_tilt_is_the_published_camera(base):
    import cv2

    image = np.asarray(base.resized)
    h, w = image.shape[:2]
    frames = generate(base, "tilt")
    for i in (0, 7, 15, 22, 30):
        a = math.radians(i - 15)
        f = math.hypot(w, h)
        c, s = math.cos(a), math.sin(a)
        to_centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1], [0, 0, 1]])
        about_x = np.array([[1, 0, 0, 0], [0, c, -s, 0], [0, s, c, 0], [0, 0, 0, 1]])
        about_y = np.array([[c, 0, -s, 0], [0, 1, 0, 0], [s, 0, c, 0], [0, 0, 0, 1]])
        away = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, f], [0, 0, 0, 1]])
        project = np.array([[f, 0, w / 2, 0], [0, f, h / 2, 0], [0, 0, 1, 0]])
        matrix = project @ away @ about_x @ about_y @ to_centre
        expected = crop(Image.fromarray(cv2.warpPerspective(image, matrix, (w, h))))
        assert np.array_equal(frames[i], expected), i
    # The plane sits at z = 1, so even 0 degrees shrinks the image by f / (f + 1) about
    # its centre: the published camera, not an identity.
    assert np.allclose(
        P.tilt_matrix(w, h, 0) / (1 + math.hypot(w, h)),
        [
            [math.hypot(w, h) / (1 + math.hypot(w, h)), 0, w / 2 / (1 + math.hypot(w, h))],
            [0, math.hypot(w, h) / (1 + math.hypot(w, h)), h / 2 / (1 + math.hypot(w, h))],
            [0, 0, 1],
        ],
    )


def test_zoom_blur_averages_zooms_of_the_256_image_and_truncates(base):
    frames = generate(base, "zoom_blur")
    total = base.crop.astype(np.float32) / 255
    assert np.array_equal(frames[0], base.crop)
    for i in range(1, 31):
        zoomed = crop(affine(base.resized, scale=1 + 0.004 * i, interpolation=BILINEAR))
        total = total + zoomed.astype(np.float32) / 255
        assert np.array_equal(frames[i], np.floor(total / (i + 1) * 255).astype(np.uint8)), i


def test_noise_frames_are_truncated_never_rounded(base):
    x = base.crop.astype(np.float32) / 255
    for difficulty, sigma in P.NOISE_SIGMA.items():
        frames = generate(base, "gaussian_noise", seed=3, difficulty=difficulty)
        noise = np.random.default_rng(3).standard_normal((30, 224, 224, 3), dtype=np.float32)
        value = np.clip(x + np.float32(sigma) * noise, 0, 1) * 255
        assert np.array_equal(frames[1:], np.floor(value).astype(np.uint8))
        assert (frames[1:] <= value).all()  # never above the float value
    for difficulty, lam in P.SHOT_LAMBDA.items():
        frames = generate(base, "shot_noise", seed=4, difficulty=difficulty)
        counts = np.random.default_rng(4).poisson(
            np.broadcast_to(base.crop / 255 * lam, (30, 224, 224, 3))
        )
        value = np.clip(counts / lam, 0, 1) * 255
        assert np.array_equal(frames[1:], np.floor(value).astype(np.uint8))
        assert np.array_equal(frames[0], base.crop)


def test_brightness_frames(base):
    from skimage.color import hsv2rgb, rgb2hsv

    frames = generate(base, "brightness")
    for i in (0, 10, 15, 30):
        hsv = rgb2hsv(base.crop / 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + (i - 15) * 2 / 100, 0, 1)
        assert np.array_equal(frames[i], np.floor(hsv2rgb(hsv) * 255).astype(np.uint8)), i


def imagemagick_motion_blur(image, radius, sigma, angle):
    """ImageMagick's MotionBlurImage written out pixel by pixel (as its docs and source
    define it): one-sided Gaussian taps along the angle, edge pixels, Q16, 8-bit out."""
    width = 2 * math.ceil(radius) + 1
    weights = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    a = math.radians(angle)
    taps = [
        (math.ceil(i * math.cos(a) - 0.5), math.ceil(i * math.sin(a) - 0.5)) for i in range(width)
    ]
    h, w = image.shape[:2]
    out = np.zeros(image.shape, dtype=np.uint8)
    for y in range(h):
        for x in range(w):
            value = sum(
                k
                * image[min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)].astype(float)
                * 257
                for k, (dx, dy) in zip(weights, taps, strict=True)
            )
            out[y, x] = np.floor(np.clip(value, 0, 65535) + 0.5) // 257
    return out


def test_motion_blur_is_imagemagicks_kernel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 15, 3), dtype=np.uint8)
    for radius, sigma, angle in ((10, 3, -120), (10, 3, 0), (14, 4, -150), (14, 4, -46)):
        got = P.motion_blur(image, radius, sigma, angle)
        assert np.array_equal(got, imagemagick_motion_blur(image, radius, sigma, angle))
    # At 0 degrees a pixel gathers from itself and the 20 to its right: one bright dot
    # spreads to its left only, along its row.
    dot = np.zeros((5, 40), dtype=np.uint8)
    dot[2, 30] = 255
    spread = P.motion_blur(dot, 10, 3, 0)
    assert spread[[0, 1, 3, 4]].max() == 0 and spread[2, 31:].max() == 0
    assert spread[2, 30] > spread[2, 25] > spread[2, 22] > 0  # fading with distance


def test_motion_blur_and_snow_frames(base):
    import cv2

    frames = generate(base, "motion_blur")
    for i in (0, 30):
        assert np.array_equal(frames[i], P.motion_blur(base.crop, 10, 3, (i - 30) * 4))
    snow = generate(base, "snow", seed=9)
    layer = np.random.default_rng(9).normal(size=(224, 224), loc=0.05, scale=0.3)
    side = math.ceil(224 / 3)
    top = (224 - side) // 2
    from scipy.ndimage import zoom

    layer = zoom(layer[top : top + side, top : top + side, None], (3, 3, 1), order=1)[:224, :224]
    layer[layer < 0.5] = 0
    layer = (np.clip(layer[..., 0], 0, 1) * 255).astype(np.uint8)
    x = base.crop / 255
    grey = cv2.cvtColor(np.float32(x), cv2.COLOR_RGB2GRAY)[..., None]
    dimmed = 0.85 * x + (1 - 0.85) * np.maximum(x, grey * 1.5 + 0.5)
    for i in (0, 15, 30):
        flakes = P.motion_blur(layer, 14, 4, i * 4 - 150)[..., None] / 255
        expected = np.uint8(np.clip(dimmed + flakes + np.rot90(flakes, k=2), 0, 1) * 255)
        assert np.array_equal(snow[i], expected), i


def test_frost_draws_one_of_the_first_five_pictures_and_crops_it_as_released():
    image = np.full((224, 224, 3), 100, dtype=np.uint8)
    seen = set()
    for seed in range(60):
        np.random.seed(seed)
        index = np.random.randint(5)
        picture = C.frost_picture(index)
        top = np.random.randint(0, picture.shape[0] - 224)
        left = np.random.randint(0, picture.shape[1] - 224)
        expected = np.clip(0.7 * image + 0.7 * picture[top : top + 224, left : left + 224], 0, 255)
        assert np.array_equal(C.corrupt(image, "frost", 3, seed), expected.astype(np.uint8))
        seen.add(index)
    assert seen == {0, 1, 2, 3, 4}  # all five drawn; frost6 never exists to draw


def test_encode_needs_generate_and_a_known_name():
    with pytest.raises(UserError, match="generate=true"):
        P.check_encoding("h264", generate=False)
    with pytest.raises(UserError, match="none, h264"):
        P.check_encoding("x265", generate=True)
    assert P.check_encoding("none", generate=False) == "none"


def test_h264_round_trip_or_a_clear_error(monkeypatch):
    if P.h264_encoder() is not None:
        with pytest.raises(UserError, match=r"needs an H\.264 encoder"):
            P.check_encoding("h264", generate=True)
        return
    from aabench.data.imagenet_p import h264_round_trip

    y, x = np.mgrid[0:64, 0:64]
    frames = np.stack([np.stack([(x + 4 * i) % 256, y * 3, x + y], -1) for i in range(5)]).astype(
        np.uint8
    )
    once = h264_round_trip(frames, "rotate")
    assert once.shape == frames.shape and once.dtype == np.uint8
    assert np.array_equal(once, h264_round_trip(frames, "rotate"))  # reproducible
    assert 0 < np.abs(once.astype(int) - frames).mean() < 3  # lossy, but close
    monkeypatch.setattr(P, "h264_encoder", lambda: "PyAV is not installed (pip install av)")
    with pytest.raises(UserError, match=r"needs an H\.264 encoder: PyAV is not installed"):
        P.check_encoding("h264", generate=True)


def test_an_encoded_run_is_rebuilt_for_compare_without_an_encoder(monkeypatch):
    from aabench.suites.imagenet_p import ImageNetPSuite

    made = ImageNetPSuite(generate=True, perturbations="rotate", encode="none").parameters()
    made["encode"] = "h264"  # as recorded by a run on a machine that had PyAV
    monkeypatch.setattr(P, "h264_encoder", lambda: "PyAV is not installed")
    rebuilt = ImageNetPSuite.from_provenance({"parameters": made})
    assert rebuilt.protocol()["encode"] == "h264"
    # Released videos are not generated: their protocol has no encoding to compare.
    assert "encode" not in ImageNetPSuite(perturbations="rotate").protocol()


def test_compare_refuses_runs_of_an_earlier_generator():
    from aabench.results.compare import mismatches
    from aabench.results.load import RunData
    from aabench.suites.imagenet_p import ImageNetPSuite

    suite = ImageNetPSuite(generate=True, perturbations="rotate")
    assert suite.protocol()["generator_version"] == P.GENERATOR_VERSION
    assert "generator_version" not in ImageNetPSuite(perturbations="rotate").protocol()
    assert ImageNetPSuite.from_provenance({"parameters": suite.parameters()}).generate
    table = pd.DataFrame({"metric": ["flip_prob"], "value": [1.0], "n": [5]})
    old = {k: v for k, v in suite.protocol().items() if k not in ("generator_version", "encode")}
    new_run = RunData("new", "imagenet-p", table, {"protocol": suite.protocol()})
    old_run = RunData("old", "imagenet-p", table, {"protocol": old})
    (problem,) = mismatches(old_run, new_run)
    # One line naming only what differs, not both protocols whole.
    assert problem == (
        "imagenet-p protocol parameters differ: "
        f"encode: - vs none; generator_version: - vs {P.GENERATOR_VERSION}"
    )
    assert mismatches(new_run, new_run) == []
