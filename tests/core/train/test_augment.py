"""Every geometric augmentation keeps image and labels aligned; intensity ones leave labels alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from segtune.core.train.augment import AugmentConfig, augment, geometric, intensity

NONE = AugmentConfig.none()


def _blobs(shape, seed=0):
    """Instance labels of a few large blobs; asymmetric so that any flip/rotation changes them."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    grid = np.indices(shape)
    for i in range(1, 6):
        centre = [rng.uniform(0.2, 0.8) * n for n in shape]
        radius = rng.uniform(0.08, 0.18) * min(shape[-2:])
        inside = (
            sum(
                ((g - c) / (radius if len(shape) == 2 or k else radius / 2)) ** 2
                for k, (g, c) in enumerate(zip(grid, centre, strict=True))
            )
            < 1
        )
        labels[inside] = i
    return labels


def _check_aligned(image, label, exact):
    """``image`` holds one indicator channel per label value; each must sit on its label region."""
    if exact:
        np.testing.assert_array_equal(np.argmax(image, axis=0), label)
        return
    for value in range(1, image.shape[0]):
        region = label == value
        if region.sum() < 20:  # (almost) moved out of the patch
            continue
        interpolated = image[value] > 0.5
        iou = (region & interpolated).sum() / (region | interpolated).sum()
        assert iou > 0.8, (value, iou)
        centroid_label = np.array(ndi.center_of_mass(region))
        centroid_image = np.array(ndi.center_of_mass(image[value]))
        assert np.linalg.norm(centroid_label - centroid_image) < 0.75, (value, centroid_label, centroid_image)


GEOMETRIC = {
    "flip": (dataclasses.replace(NONE, flip=True), True),
    "rotate90": (dataclasses.replace(NONE, rotate90=True), True),
    "rotation": (dataclasses.replace(NONE, rotation=20.0, affine_probability=1.0), False),
    "shift": (dataclasses.replace(NONE, shift=0.2, affine_probability=1.0), False),
    "shear": (dataclasses.replace(NONE, shear=0.3, affine_probability=1.0), False),
    "zoom": (dataclasses.replace(NONE, zoom=0.3, affine_probability=1.0), False),
    "elastic": (dataclasses.replace(NONE, elastic_probability=1.0, elastic_magnitude=3.0, elastic_spacing=16.0), False),
    "all": (AugmentConfig(affine_probability=1.0, elastic_probability=1.0, elastic_spacing=16.0), False),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("shape", [(48, 48), (8, 40, 40)])
def test_geometric_augmentation_keeps_image_and_labels_aligned(name, shape):
    config, exact = GEOMETRIC[name]
    label = _blobs(shape)
    image = np.stack([label == value for value in range(6)]).astype(np.float32)
    changed = 0
    for seed in range(6):
        out_image, (out_label, out_valid) = geometric(
            image, [label, np.ones(shape, bool)], np.random.default_rng(seed), config
        )
        assert out_image.shape == image.shape and out_label.shape == label.shape
        assert out_label.dtype == label.dtype and out_valid.dtype == bool
        _check_aligned(out_image, out_label, exact)
        assert set(np.unique(out_label)) <= set(np.unique(label))  # no invented label values
        changed += not np.array_equal(out_label, label)
    assert changed >= 3  # the augmentation really moves things


def test_rotation_is_a_rotation():
    """A small rotation moves a point off the centre along the expected circle."""
    label = np.zeros((65, 65), np.uint8)
    label[32, 52] = 1  # 20 px right of the centre
    config = dataclasses.replace(NONE, rotation=30.0, affine_probability=1.0)
    _, (out,) = geometric(np.zeros((1, 65, 65), np.float32), [label], np.random.default_rng(1), config)
    y, x = np.argwhere(out)[0]
    assert np.hypot(y - 32, x - 32) == pytest.approx(20, abs=1.5)
    assert (y, x) != (32, 52)


def test_elastic_deformation_is_smooth_and_as_large_as_asked():
    """The displacement field has the requested spread at its control points, varies slowly, and
    deforms (not merely shifts) the patch."""
    from segtune.core.train.augment import random_elastic

    config = dataclasses.replace(NONE, elastic_probability=1.0, elastic_magnitude=5.0, elastic_spacing=16.0)
    rng = np.random.default_rng(0)
    fields = np.stack([random_elastic(rng, config, (65, 65)) for _ in range(200)])
    assert fields.shape == (200, 2, 65, 65)
    corners = fields[:, :, ::16, ::16]  # the control points (65 px, 16 apart: 5 per axis)
    assert corners.std() == pytest.approx(5.0, rel=0.1)
    assert np.abs(np.diff(fields, axis=-1)).max() < 5.0  # smooth: neighbouring pixels move together
    assert np.abs(fields).mean() > 2.0
    # a 3D patch gets the same in-plane field in every Z plane (no Z displacement)
    label = _blobs((6, 40, 40))
    _, (out,) = geometric(
        np.zeros((1, 6, 40, 40), np.float32),
        [label],
        np.random.default_rng(1),
        dataclasses.replace(config, flip=False, rotate90=False),
    )
    assert not np.array_equal(out, label)
    assert random_elastic(rng, NONE, (65, 65)) is None


def test_intensity_augmentations_touch_only_the_image():
    rng = np.random.default_rng(0)
    image = rng.random((1, 32, 32)).astype(np.float32)
    label = _blobs((32, 32))
    for name, config in {
        "brightness": dataclasses.replace(NONE, brightness=0.5),
        "contrast": dataclasses.replace(NONE, contrast=0.5),
        "blur": dataclasses.replace(NONE, blur_probability=1.0),
        "noise": dataclasses.replace(NONE, noise_probability=1.0, noise_std=0.5),
        "salt_pepper": dataclasses.replace(NONE, salt_pepper_probability=1.0, salt_pepper_amount=0.2),
    }.items():
        out, (out_label,) = augment(image, [label], np.random.default_rng(3), config)
        np.testing.assert_array_equal(out_label, label)
        assert out.shape == image.shape and out.dtype == np.float32
        assert not np.allclose(out, image), name
    blurred = intensity(image, rng, dataclasses.replace(NONE, blur_probability=1.0))
    assert blurred.std() < image.std()
    peppered = intensity(image, rng, dataclasses.replace(NONE, salt_pepper_probability=1.0, salt_pepper_amount=0.2))
    changed = peppered != image
    assert np.isin(peppered[changed], [image.min(), image.max()]).all()
    assert 0.1 < changed.mean() < 0.3


def test_no_augmentation_is_identity_and_seeds_reproduce():
    image = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    label = _blobs((16, 16))
    out, (out_label,) = augment(image, [label], np.random.default_rng(0), NONE)
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_label, label)
    a = augment(image, [label], np.random.default_rng(7))
    b = augment(image, [label], np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1][0], b[1][0])


def test_config_round_trip_and_errors():
    config = AugmentConfig(rotation=5.0, blur_sigma=(1.0, 2.0))
    assert AugmentConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        AugmentConfig.from_dict({"rotatoin": 3})
    with pytest.raises(ValueError, match="does not match"):
        geometric(np.zeros((1, 8, 8)), [np.zeros((8, 9))], np.random.default_rng(0), NONE)
