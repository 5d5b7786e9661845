"""Tests of the synthetic nuclei and organoid generators: labels match what is drawn, seeds, shapes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from segtune.core.diameter import labels_diameter
from segtune.core.synthetic import random_nuclei_parameters, synthetic_nuclei, synthetic_organoids


def _contrast(image: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean intensity inside the labels and in background well away from them."""
    far = ~ndi.binary_dilation(labels > 0, iterations=4)
    return float(image[labels > 0].mean()), float(image[far].mean())


def test_labels_are_the_bright_drawn_objects_2d():
    sample = synthetic_nuclei((192, 192), diameter=20, debris=0, read_noise=2, seed=4)
    labels = sample.labels
    assert labels.dtype == np.uint16 and sample.image.dtype == np.uint16
    ids = np.unique(labels)[1:]
    assert np.array_equal(ids, np.arange(1, len(ids) + 1))  # consecutive ids
    assert len(sample.diameters) == len(ids) > 5
    inside, outside = _contrast(sample.image, labels)
    assert inside > 4 * outside
    # each object is one connected piece, and its size is close to the diameter it was drawn at
    for index, drawn in zip(ids, sample.diameters, strict=True):
        mask = labels == index
        assert ndi.label(mask)[1] == 1
        equivalent = 2 * np.sqrt(mask.sum() / np.pi)
        assert equivalent <= drawn * 1.05 + 1  # touching neighbours only take pixels away
    assert labels_diameter(labels) == pytest.approx(np.median(sample.diameters), rel=0.2)


def test_same_seed_same_image_other_seed_other_image():
    kwargs = {"diameter": 16, "elastic": 3.0, "overlap": 0.3, "halo": 0.2}
    a = synthetic_nuclei((96, 96), seed=11, **kwargs)
    b = synthetic_nuclei((96, 96), seed=11, **kwargs)
    c = synthetic_nuclei((96, 96), seed=12, **kwargs)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_defaults_unchanged_by_new_options():
    # the extra draws of overlap/elastic happen only when asked for: sample data stays the same
    plain = synthetic_nuclei((80, 80), seed=5)
    explicit = synthetic_nuclei((80, 80), seed=5, overlap=0.0, elastic=0.0, halo=0.0)
    assert np.array_equal(plain.image, explicit.image)
    assert np.array_equal(plain.labels, explicit.labels)


def test_overlap_keeps_every_nucleus_mostly_visible():
    sample = synthetic_nuclei((160, 160), diameter=24, overlap=0.6, touching=0.0, debris=0, seed=3)
    areas = np.bincount(sample.labels.ravel())[1:]
    drawn_areas = np.pi / 4 * sample.diameters**2
    # a nucleus partly under another keeps more than half of its (nominal) area
    assert np.all(areas > 0.4 * drawn_areas * (1 - 0.5) ** 2)
    # overlapping fluorescence adds up: the brightest pixels are brighter than without overlap
    flat = synthetic_nuclei((160, 160), diameter=24, overlap=0.0, touching=0.0, debris=0, seed=3)
    assert np.percentile(sample.image, 99.9) > np.percentile(flat.image, 99.9)


def test_elastic_deformation_bends_shapes_but_keeps_label_and_signal_together():
    straight = synthetic_nuclei((128, 128), diameter=24, eccentricity=0.0, debris=0, seed=2)
    bent = synthetic_nuclei((128, 128), diameter=24, eccentricity=0.0, debris=0, elastic=6.0, seed=2)

    def roundness(labels):
        values = []
        for index in np.unique(labels)[1:]:
            mask = labels == index
            if mask.sum() < 100:
                continue
            distance = ndi.distance_transform_edt(mask).max()
            values.append(mask.sum() / (np.pi * distance**2))  # 1 for a disc
        return np.median(values)

    assert roundness(bent.labels) > roundness(straight.labels) + 0.03
    inside, outside = _contrast(bent.image, bent.labels)
    assert inside > 4 * outside


def test_uint8_dim_variant():
    sample = synthetic_nuclei((96, 96), dtype=np.uint8, uint8_peak=50, brightness=200, seed=1)
    assert sample.image.dtype == np.uint8
    assert 40 <= np.percentile(sample.image, 99.9) <= 60
    with pytest.raises(ValueError, match="dtype"):
        synthetic_nuclei((32, 32), dtype=np.float32)


def test_3d_anisotropy_flattens_along_z():
    iso = synthetic_nuclei((40, 64, 64), diameter=16, eccentricity=0.0, diameter_spread=0.0, debris=0, seed=8)
    flat = synthetic_nuclei(
        (40, 64, 64), diameter=16, eccentricity=0.0, diameter_spread=0.0, debris=0, z_anisotropy=2.0, seed=8
    )
    assert iso.image.shape == iso.labels.shape == (40, 64, 64)

    def extent(labels):
        z, y = [], []
        for box in ndi.find_objects(labels):
            if box is None:
                continue
            z.append(box[0].stop - box[0].start)
            y.append(box[1].stop - box[1].start)
        return np.median(z), np.median(y)

    z_iso, y_iso = extent(iso.labels)
    z_flat, y_flat = extent(flat.labels)
    assert z_iso == pytest.approx(y_iso, rel=0.25)
    assert z_flat == pytest.approx(y_flat / 2, rel=0.3)
    inside, outside = _contrast(flat.image, flat.labels)
    assert inside > 3 * outside


def test_random_parameters_make_valid_images():
    rng = np.random.default_rng(0)
    for _ in range(4):
        params = random_nuclei_parameters(rng, diameter=(10, 20))
        assert 10 <= params["diameter"] <= 20
        sample = synthetic_nuclei((64, 64), seed=int(rng.integers(1000)), **params)
        assert sample.image.shape == (64, 64)
    params3d = random_nuclei_parameters(rng, ndim=3)
    assert 1 <= params3d["z_anisotropy"] <= 3
    with pytest.raises(ValueError, match="ndim"):
        random_nuclei_parameters(rng, ndim=4)


def test_organoids_dark_irregular_labelled_blobs():
    sample = synthetic_organoids((192, 192), diameter=60, out_of_focus=2, seed=3)
    assert sample.image.dtype == np.uint8 and sample.labels.shape == (192, 192)
    ids = np.unique(sample.labels)[1:]
    assert len(ids) >= 1
    inside, outside = _contrast(sample.image, sample.labels)
    assert inside < 0.85 * outside  # brightfield: organoids absorb light
    # the rim (just inside the edge) is darker than the middle
    mask = sample.labels == ids[0]
    depth = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]  # the image edge is an edge too
    assert sample.image[(depth > 0) & (depth <= 2)].mean() < sample.image[depth > depth.max() / 2].mean()
    # irregular: not a disc
    equivalent = 2 * np.sqrt(mask.sum() / np.pi)
    assert 2 * depth.max() < 0.97 * equivalent
    again = synthetic_organoids((192, 192), diameter=60, out_of_focus=2, seed=3)
    assert np.array_equal(sample.image, again.image)
