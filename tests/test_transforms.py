"""The paper's augmentation: flips, rotation and translation drawn as Keras drew them."""

from __future__ import annotations

import numpy as np
import pytest

from histo.data.transforms import augmentations, eval_transform, train_transform


def dot_image(size=64):
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[size // 2, size // 2] = 255
    return image


def centre_of_mass(image):
    ys, xs = np.nonzero(image[..., 0] > 40)
    return ys.mean(), xs.mean()


def test_translation_is_drawn_independently_per_axis():
    transform = train_transform(64, augment={"translate": 0.3, "border": "constant"})
    shifts = []
    for seed in range(40):
        transform.set_random_seed(seed)
        y, x = centre_of_mass(transform(image=dot_image())["image"])
        shifts.append((y - 32, x - 32))
    shifts = np.array(shifts)
    assert np.abs(shifts).max() <= 0.3 * 64 + 1
    assert np.abs(shifts).max() > 0.15 * 64  # the range is used
    assert abs(np.corrcoef(shifts[:, 0], shifts[:, 1])[0, 1]) < 0.5  # not one value for both axes


def test_paper_augmentation_keeps_size_and_dtype():
    transform = train_transform(48, augment={"hflip": 0.5, "vflip": 0.5, "rotate": 36, "translate": 0.3})
    out = transform(image=np.random.default_rng(0).integers(0, 255, (46, 70, 3), dtype=np.uint8))["image"]
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8


def test_no_augmentation_is_just_the_resize():
    image = np.random.default_rng(1).integers(0, 255, (46, 70, 3), dtype=np.uint8)
    assert augmentations(name="none") == []
    np.testing.assert_array_equal(train_transform(32, augment={})(image=image)["image"],
                                  eval_transform(32)(image=image)["image"])


def test_bad_choices_name_their_key():
    with pytest.raises(ValueError, match="augment.border"):
        augmentations(rotate=10, border="mirror")
    with pytest.raises(ValueError, match="data.interpolation"):
        eval_transform(32, "lanczos9")
