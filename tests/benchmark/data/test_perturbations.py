"""Generated ImageNet-P sequences: lengths, the published parameters at the frames where
they are checkable by hand, and determinism."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aabench.data import perturbations as P
from aabench.errors import UserError


@pytest.fixture(scope="module")
def base():
    rng = np.random.default_rng(1)
    # Smooth content: resampling a noise image would blur it beyond recognition.
    y, x = np.mgrid[0:300, 0:400]
    image = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    image[100:140, 150:200] = rng.integers(0, 256, 3, dtype=np.uint8)
    return P.Base.of(Image.fromarray(image))


def generate(base, name, difficulty=1, seed=0):
    return P.generate(base, name, difficulty, np.random.default_rng(seed))


def test_base_is_resize_256_and_its_centre_crop(base):
    assert min(base.resized.size) == 256
    assert base.crop.shape == (224, 224, 3)


@pytest.mark.parametrize("name", list(P.GENERATORS))
def test_every_sequence_has_its_published_length_of_224_frames(base, name):
    frames = generate(base, name)
    assert frames.shape == (P.frame_count(name), 224, 224, 3)
    assert frames.dtype == np.uint8


@pytest.mark.parametrize(
    "name, identity_frame",
    [
        ("translate", 20),  # i - 20 = 0 px
        ("rotate", 15),  # i - 15 = 0 degrees
        # not tilt: the release's camera puts the image plane at z = 1, so its 0 degree
        # frame is scaled by f / (f + 1) (test_perturbations_recipe.py states it)
        ("shear", 15),
        ("scale", 24),  # (2.5 i + 40) / 100 = 1
        ("brightness", 15),  # value + (i - 15) 0.02 = + 0
        ("gaussian_noise", 0),  # noise sequences start clean
        ("shot_noise", 0),
        ("zoom_blur", 0),
    ],
)
def test_the_untransformed_frame_is_the_centre_crop(base, name, identity_frame):
    frames = generate(base, name)
    assert np.abs(frames[identity_frame].astype(int) - base.crop).max() <= 1
    assert (frames != base.crop).any()  # and the sequence does move away from it


def test_translate_moves_one_pixel_per_frame(base):
    frames = generate(base, "translate")
    # Frame 21 is the crop shifted right by 1 px: its columns 1.. are the crop's 0..
    assert np.array_equal(frames[21][:, 1:], base.crop[:, :-1])
    assert np.array_equal(frames[0][:, :-20], generate(base, "translate")[20][:, 20:])


def test_brightness_steps_the_hsv_value_by_0_02(base):
    from skimage.color import rgb2hsv

    frames = generate(base, "brightness")
    value = [rgb2hsv(frames[i])[..., 2].mean() for i in (14, 15, 16)]
    assert value[2] - value[1] == pytest.approx(0.02, abs=0.004)
    assert value[1] - value[0] == pytest.approx(0.02, abs=0.004)


def test_noise_strength_grows_with_difficulty(base):
    spread = []
    for difficulty in (1, 2, 3):
        frames = generate(base, "gaussian_noise", difficulty).astype(float)
        spread.append(np.std(frames[1:] - frames[0]) / 255)
    assert spread[0] == pytest.approx(P.NOISE_SIGMA[1], rel=0.2)
    assert spread[0] < spread[1] < spread[2]


def test_sequences_are_deterministic_per_seed_and_differ_across_seeds(base):
    for name in ("gaussian_noise", "shot_noise", "snow"):
        assert np.array_equal(generate(base, name, seed=5), generate(base, name, seed=5))
        assert not np.array_equal(generate(base, name, seed=5), generate(base, name, seed=6))
    seeds = {P.sequence_seed(0, 1, "rotate", 1), P.sequence_seed(0, 2, "rotate", 1)}
    seeds |= {P.sequence_seed(1, 1, "rotate", 1), P.sequence_seed(0, 1, "scale", 1)}
    assert len(seeds) == 4


def test_validation_perturbations_without_a_generator_say_where_to_get_them(base):
    with pytest.raises(UserError, match="--imagenet-p DIR"):
        generate(base, "spatter")
