"""Training data: samples from arrays, targets per head, splits, and the patch sampler's filter."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.core.train.augment import AugmentConfig
from segtune.core.train.data import Sample, make_sample, make_targets, split_samples
from segtune.core.train.patches import PatchSampler, normalize_patch_shape


def _touching_pair():
    labels = np.zeros((8, 10), np.uint16)
    labels[1:7, 1:5] = 3
    labels[1:7, 5:9] = 7
    return labels


def test_three_class_targets_separate_touching_objects():
    target = make_targets(_touching_pair(), "three_class")
    expected_row = np.array([0, 2, 1, 1, 2, 2, 1, 1, 2, 0], np.uint8)
    np.testing.assert_array_equal(target[3], expected_row)
    np.testing.assert_array_equal(target[1, 1:9], 2)  # top rim
    assert target[0].sum() == 0


def test_binary_mask_gets_instances_by_connected_components():
    mask = np.zeros((8, 12), np.uint8)
    mask[1:7, 1:5] = 255
    mask[1:7, 7:11] = 255
    target = make_targets(mask, "three_class")
    assert (target == 1).sum() == 2 * 2 * 4  # each 6x4 object has a 4x2 interior
    np.testing.assert_array_equal(make_targets(mask, "binary"), mask > 0)


def test_semantic_targets_checked_against_classes():
    labels = np.array([[0, 1], [2, 1]])
    np.testing.assert_array_equal(make_targets(labels, "semantic", n_classes=3), labels)
    with pytest.raises(ValueError, match="not a class of a 2-class"):
        make_targets(labels, "semantic", n_classes=2)


def test_make_sample_channels_first_last_and_none():
    labels = np.zeros((20, 30), np.uint8)
    rgb = np.random.default_rng(0).random((20, 30, 3))
    sample = make_sample(rgb, labels)
    assert sample.image.shape == (3, 1, 20, 30)
    assert make_sample(np.moveaxis(rgb, -1, 0), labels).image.shape == (3, 1, 20, 30)
    assert make_sample(rgb[..., 0], labels).image.shape == (1, 1, 20, 30)
    stack = make_sample(np.zeros((4, 20, 30)), np.zeros((4, 20, 30), np.uint8))
    assert stack.image.shape == (1, 4, 20, 30) and stack.labels.shape == (4, 20, 30)
    with pytest.raises(
        ValueError, match=r"image \(shape \(20, 31\)\) and its labels \(shape \(20, 30\)\) do not match"
    ):
        make_sample(np.zeros((20, 31)), labels, name="pair 1")


def test_make_sample_normalises_and_ignores():
    image = np.arange(1000, dtype=np.float32).reshape(20, 50)
    labels = np.zeros((20, 50), np.uint8)
    labels[:5] = 255
    labels[5:10] = 1
    sample = make_sample(image, labels, ignore_value=255, normalization=(0, 100))
    assert sample.image.min() == 0 and sample.image.max() == 1
    assert not sample.valid[0, :5].any() and sample.valid[0, 5:].all()
    assert sample.labels[0, :5].max() == 0
    masked = make_sample(image, labels, mask=np.arange(1000).reshape(20, 50) % 2)
    assert masked.valid.mean() == 0.5


def test_make_sample_rescales_labels_by_nearest_neighbour():
    labels = np.zeros((100, 80), np.uint16)
    labels[10:50, 10:50] = 5
    sample = make_sample(np.zeros((100, 80)), labels, scale=0.25)
    assert sample.labels.shape == (1, 25, 20)
    assert set(np.unique(sample.labels)) == {0, 5}
    assert sample.image.shape == (1, 1, 25, 20)


def test_split_by_image_and_by_region():
    samples = [
        Sample(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 8, 8), np.uint8), np.ones((1, 8, 8), bool), str(i))
        for i in range(10)
    ]
    train, val = split_samples(samples, 0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert {s.name for s in train}.isdisjoint({s.name for s in val})
    assert split_samples(samples, 0.2, seed=0)[1][0].name == val[0].name  # reproducible
    one = Sample(
        np.zeros((1, 1, 10, 40), np.float32), np.arange(400).reshape(1, 10, 40), np.ones((1, 10, 40), bool), "one"
    )
    train, val = split_samples([one], 0.25)
    assert train[0].labels.shape == (1, 10, 30) and val[0].labels.shape == (1, 10, 10)
    np.testing.assert_array_equal(val[0].labels, one.labels[:, :, 30:])
    assert split_samples(samples, 0.0)[1] == []


def _sample_with_corner_object(shape=(1, 64, 64)):
    labels = np.zeros(shape, np.uint16)
    labels[..., :16, :16] = 1  # 6 % of the image, all in one corner
    image = labels[None].astype(np.float32)
    return Sample(image, labels, np.ones(shape, bool), "corner")


def test_min_foreground_filter_skips_empty_crops():
    sample = _sample_with_corner_object()
    sampler = PatchSampler([sample], (16, 16), min_foreground=0.03, rng=np.random.default_rng(0), max_tries=50)
    fractions = [np.mean(sampler.sample()[1] > 0) for _ in range(40)]
    assert min(fractions) >= 0.03
    assert sampler.skipped > 0
    unfiltered = PatchSampler([sample], (16, 16), min_foreground=0.0, rng=np.random.default_rng(0))
    assert min(np.mean(unfiltered.sample()[1] > 0) for _ in range(40)) < 0.03


def test_patches_are_aligned_crops():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, (1, 40, 50)).astype(np.uint16)
    sample = Sample(labels[None].astype(np.float32), labels, np.ones_like(labels, bool), "x")
    sampler = PatchSampler([sample], (16, 24), min_foreground=0.0, rng=rng)
    for _ in range(10):
        image, crop, valid = sampler.sample()
        np.testing.assert_array_equal(image[0], crop)
        assert valid.all()
    x, y, v = sampler.batch(3, head="semantic", augmentation=AugmentConfig(), n_classes=5)
    assert x.shape == (3, 1, 16, 24) and y.shape == (3, 16, 24) and v.shape == (3, 16, 24)


def test_small_images_are_padded_as_ignored():
    sample = _sample_with_corner_object((1, 10, 12))
    sampler = PatchSampler([sample], (16, 16), min_foreground=0.0, rng=np.random.default_rng(0))
    image, labels, valid = sampler.sample()
    assert image.shape == (1, 16, 16)
    assert valid[:10, :12].all() and not valid[10:].any() and not valid[:, 12:].any()


def test_2d_patches_from_stacks_and_3d_patches():
    labels = np.zeros((6, 32, 32), np.uint16)
    labels[:, 8:24, 8:24] = np.arange(1, 7)[:, None, None]  # a different id per plane
    sample = Sample(labels[None].astype(np.float32), labels, np.ones(labels.shape, bool), "stack")
    planes = PatchSampler([sample], (16, 16), spatial_dims=2, min_foreground=0.0, rng=np.random.default_rng(0))
    seen = {int(planes.sample()[1].max()) for _ in range(40)} - {0}
    assert len(seen) >= 4  # patches come from many planes
    volumes = PatchSampler([sample], (4, 16, 16), spatial_dims=3, rng=np.random.default_rng(0))
    x, y, v = volumes.batch(2, head="three_class", augmentation=AugmentConfig())
    assert x.shape == (2, 1, 4, 16, 16) and y.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="3D model needs"):
        PatchSampler([_sample_with_corner_object()], (4, 16, 16), spatial_dims=3)


def test_patch_shape():
    assert normalize_patch_shape(64, 3) == (64, 64, 64)
    assert normalize_patch_shape([32, 64], 2) == (32, 64)
    with pytest.raises(ValueError, match="must be a positive size"):
        normalize_patch_shape((1, 2, 3), 2)
