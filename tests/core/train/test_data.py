"""Training data: samples from image/label pairs, targets per head, object size, held-out splits, files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segtune.core.train.data import (
    Sample,
    load_pairs,
    make_sample,
    make_targets,
    object_diameter,
    split_samples,
)


def _discs(shape=(64, 96), radius=6, spacing=16) -> np.ndarray:
    """Instance labels: discs of ``radius`` on a grid, numbered 1..n."""
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    n = 0
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            n += 1
            labels[np.hypot(yy - cy, xx - cx) <= radius] = n
    return labels


def test_make_sample_normalises_each_channel_and_marks_ignored_pixels():
    labels = _discs()
    labels[:4, :4] = 255  # pseudo-label "unsure"
    rng = np.random.default_rng(0)
    rgb = np.stack([rng.integers(0, 100, labels.shape), rng.integers(1000, 5000, labels.shape), labels * 10], axis=-1)
    mask = np.ones(labels.shape, bool)
    mask[-4:] = False
    sample = make_sample(rgb, labels, mask=mask, ignore_value=255, normalization=(0, 100), name="a")
    assert sample.image.shape == (3, 1, 64, 96) and sample.image.dtype == np.float32  # channels last -> first, Z = 1
    for channel in sample.image:  # each channel on its own scale
        assert channel.min() == pytest.approx(0.0) and channel.max() == pytest.approx(1.0)
    assert sample.labels.shape == sample.valid.shape == (1, 64, 96)
    assert not sample.valid[0, :4, :4].any() and (sample.labels[0, :4, :4] == 0).all()  # ignored: background, not valid
    assert not sample.valid[0, -4:].any() and sample.valid[0, 10:50].all()
    assert 0 < sample.foreground_fraction < 1


def test_make_sample_rescales_labels_without_new_values():
    labels = _discs()
    sample = make_sample(labels.astype(np.float32), labels, scale=0.5)
    assert sample.image.shape == (1, 1, 32, 48) and sample.labels.shape == (1, 32, 48)
    assert set(np.unique(sample.labels)) <= set(np.unique(labels))  # nearest neighbour: ids stay ids
    assert len(np.unique(sample.labels)) == len(np.unique(labels))


def test_make_sample_refuses_what_is_not_labels_naming_the_pair():
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match="cells: labels must be integers"):
        make_sample(image, np.full((8, 8), 0.5), name="cells")
    with pytest.raises(ValueError, match=r"cells: labels must not be negative \(minimum -1\)"):
        make_sample(image, np.full((8, 8), -1), name="cells")
    with pytest.raises(
        ValueError, match=r"cells: the image \(shape \(8, 9\)\) and its labels \(shape \(8, 8\)\) do not match"
    ):
        make_sample(np.zeros((8, 9)), np.zeros((8, 8), np.uint8), name="cells")


def test_targets_per_head():
    labels = np.zeros((8, 10), np.int64)
    labels[1:7, 1:5], labels[1:7, 5:9] = 1, 2  # two touching objects
    np.testing.assert_array_equal(make_targets(labels, "binary"), labels > 0)
    three = make_targets(labels, "three_class")
    assert three.dtype == np.uint8 and (three[labels == 0] == 0).all()
    np.testing.assert_array_equal(
        three[3], [0, 2, 1, 1, 2, 2, 1, 1, 2, 0]
    )  # the rims, where they touch too, are boundary
    np.testing.assert_array_equal(make_targets(labels, "semantic", n_classes=3), labels)
    with pytest.raises(ValueError, match="label value 2 is not a class of a 2-class semantic head"):
        make_targets(labels, "semantic", n_classes=2)
    flags = np.array([[0, 1, 2, 3]])  # nuclei 1, Golgi 2, both 3
    np.testing.assert_array_equal(make_targets(flags, "multilabel", n_classes=2), [[[0, 1, 0, 1]], [[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="bits beyond the 1 classes"):
        make_targets(flags, "multilabel", n_classes=1)
    with pytest.raises(ValueError, match="head must be one of binary, three_class, semantic, multilabel, got 'edges'"):
        make_targets(labels, "edges")


def test_object_diameter_is_the_median_disc_diameter_in_original_pixels():
    sample = make_sample(np.zeros((64, 96), np.float32), _discs(radius=6))
    diameter = object_diameter([sample])
    assert diameter == pytest.approx(12.0, rel=0.1)
    assert object_diameter([sample], scale=0.5) == pytest.approx(2 * diameter)
    assert object_diameter([make_sample(np.zeros((8, 8)), np.zeros((8, 8), np.uint8))]) is None


def test_split_by_image_or_by_a_strip_of_one_image():
    samples = [make_sample(np.zeros((16, 16)), _discs((16, 16)), name=str(i)) for i in range(5)]
    train, val = split_samples(samples, 0.4, seed=3)
    assert len(train) == 3 and len(val) == 2 and {s.name for s in train} | {s.name for s in val} == set("01234")
    assert [s.name for s in split_samples(samples, 0.4, seed=3)[1]] == [s.name for s in val]  # the seed decides
    assert split_samples(samples, 0.0) == (samples, [])
    one = make_sample(np.zeros((64, 96)), _discs())
    (part,), (held,) = split_samples([one], 0.2)
    assert (
        part.labels.shape[2] + held.labels.shape[2] == 96 and held.labels.shape[2] >= 96 * 0.2 - 1
    )  # along the longer X
    assert held.name.endswith("[validation region]") and len(np.unique(held.labels)) > 1
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        split_samples(samples, 1.0)
    assert isinstance(part, Sample)


def test_load_pairs_reads_files_in_the_order_given(tmp_path):
    labels = _discs()
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", (labels * 7).astype(np.uint16))
        tifffile.imwrite(tmp_path / f"{name}_labels.tif", labels)
    images, label_arrays, names = load_pairs(
        [tmp_path / "b.tif", tmp_path / "a.tif"], [tmp_path / "b_labels.tif", tmp_path / "a_labels.tif"]
    )
    assert names == [str(tmp_path / "b.tif"), str(tmp_path / "a.tif")]
    np.testing.assert_array_equal(images[0], labels * 7)
    np.testing.assert_array_equal(label_arrays[1], labels)
    with pytest.raises(ValueError, match="2 image file\\(s\\) but 1 label file\\(s\\)"):
        load_pairs([tmp_path / "a.tif", tmp_path / "b.tif"], [tmp_path / "a_labels.tif"])
    tifffile.imwrite(tmp_path / "small_labels.tif", labels[:32])
    with pytest.raises(
        ValueError,
        match=r"image .*a.tif \(shape \(64, 96\)\) and labels .*small_labels.tif \(shape \(32, 96\)\) do not match",
    ):
        load_pairs([tmp_path / "a.tif"], [tmp_path / "small_labels.tif"])
