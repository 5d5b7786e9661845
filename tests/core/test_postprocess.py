"""Post-processing: thresholds, components, watershed splits, size filters and hole filling, in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.core.postprocess import (
    fill_label_holes,
    filter_sizes,
    instances_from_binary,
    instances_from_three_class,
    label_blockwise,
    label_components,
    mask_from_probabilities,
    postprocess,
    relabel_sequential,
    split_touching,
    threshold,
)


def disc(shape: tuple[int, ...], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


def test_threshold_is_strict():
    np.testing.assert_array_equal(threshold(np.array([0.2, 0.5, 0.51]), 0.5), [False, False, True])
    with pytest.raises(ValueError, match="threshold"):
        threshold(np.zeros(3), 1.5)


def test_components_2d_and_3d_with_connectivity():
    mask = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], bool)
    four = label_components(mask)
    assert four.max() == 4 and four[0, 0] == four[0, 1] == 1 and four[1, 2] == 2
    eight = label_components(mask, connectivity=2)
    assert eight.max() == 3 and eight[0, 1] == eight[1, 2]
    volume = np.zeros((3, 4, 4), bool)
    volume[0, 0, 0] = volume[1, 0, 0] = True  # touching through a face across slices
    volume[2, 3, 3] = True
    assert label_components(volume).max() == 2
    with pytest.raises(ValueError, match="connectivity"):
        label_components(volume, connectivity=4)


def test_filter_sizes_removes_and_renumbers():
    labels = np.zeros((10, 10), np.int32)
    labels[0, :2] = 3  # 2 px
    labels[2:5, 2:5] = 7  # 9 px
    labels[6:10, 6:10] = 9  # 16 px
    out = filter_sizes(labels, min_size=3, max_size=10)
    assert set(np.unique(out)) == {0, 1}
    assert (out[2:5, 2:5] == 1).all() and out[0, 0] == 0 and out[7, 7] == 0
    with pytest.raises(ValueError, match="min_size"):
        filter_sizes(labels, min_size=5, max_size=2)


def test_relabel_sequential_keeps_order():
    labels = np.array([[0, 5, 5], [9, 0, 2]])
    np.testing.assert_array_equal(relabel_sequential(labels), [[0, 2, 2], [3, 0, 1]])


def test_fill_holes_only_inside_one_object():
    labels = np.zeros((9, 9), np.int32)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole in object 1
    labels[6:9, 6:9] = 2
    labels[7, 7] = 0  # a hole in object 2
    labels[0, 7] = 3
    out = fill_label_holes(labels)
    assert out[3, 3] == 1 and out[7, 7] == 2
    ring = np.zeros((7, 7), np.int32)
    ring[1:6, 1:6] = 1
    ring[2:5, 2:5] = 0
    ring[3, 3] = 2  # enclosed by 1 but holding another object: not a hole
    assert fill_label_holes(ring)[3, 3] == 2 and fill_label_holes(ring)[2, 2] == 1
    shell = np.ones((5, 5, 5), np.int32)
    shell[2, 2, 2] = 0
    assert fill_label_holes(shell)[2, 2, 2] == 1


def test_split_touching_separates_two_discs_and_keeps_one():
    shape = (40, 60)
    pair = disc(shape, (20, 20), 10) | disc(shape, (20, 37), 10)
    labels = split_touching(pair, min_distance=5)
    assert labels.max() == 2
    assert labels[20, 15] != labels[20, 42] and labels[20, 15] > 0 and labels[20, 42] > 0
    assert (labels > 0).sum() == pair.sum()  # every foreground pixel keeps a label
    single = split_touching(disc(shape, (20, 30), 10), min_distance=5)
    assert single.max() == 1
    balls = disc((30, 40, 60), (15, 20, 20), 9) | disc((30, 40, 60), (15, 20, 36), 9)
    assert split_touching(balls, min_distance=4).max() == 2


def test_instances_from_binary_with_filters():
    p = np.zeros((30, 30), np.float32)
    p[2:8, 2:8] = 0.9  # 36 px
    p[20:22, 20:22] = 0.8  # 4 px
    p[4, 4] = 0.1  # a hole
    labels = instances_from_binary(p, 0.5, min_size=10, fill_holes=True)
    assert labels.max() == 1 and labels[4, 4] == 1 and labels[21, 21] == 0
    assert labels.dtype == np.int32


def _three_class_cells(shape, centres, radius):
    """Background/interior/boundary probabilities for touching round cells."""
    interior = np.zeros(shape, np.float32)
    boundary = np.zeros(shape, np.float32)
    for c in centres:
        inside = disc(shape, c, radius - 2)
        ring = disc(shape, c, radius) & ~inside
        interior[inside] = 0.9
        boundary[ring] = np.maximum(boundary[ring], 0.8)
    interior[boundary > 0] = 0.1
    background = np.clip(1.0 - interior - boundary, 0.0, 1.0)
    return np.stack([background, interior, boundary])


def test_three_class_watershed_splits_touching_cells_along_the_boundary():
    probs = _three_class_cells((40, 60), [(20, 18), (20, 36)], 10)
    labels = instances_from_three_class(probs, 0.5)
    assert labels.max() == 2
    assert labels[20, 18] != labels[20, 36]
    foreground = probs[0] < 0.5
    assert ((labels > 0) == foreground).all()
    volume = _three_class_cells((20, 40, 60), [(10, 20, 18), (10, 20, 36)], 9)
    assert instances_from_three_class(volume, 0.5).max() == 2


def test_three_class_keeps_foreground_without_a_seed():
    probs = _three_class_cells((30, 30), [(15, 15)], 8)
    probs[:, 0:3, 0:3] = np.array([0.1, 0.2, 0.7])[:, None, None]  # boundary-only blob, no interior seed
    labels = instances_from_three_class(probs, 0.5)
    assert labels.max() == 2 and labels[1, 1] > 0


def test_mask_and_postprocess_per_head():
    probs = _three_class_cells((30, 30), [(15, 15)], 8)
    mask = mask_from_probabilities(probs, "three_class", 0.5)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    np.testing.assert_array_equal(postprocess(probs, "three_class"), mask)
    semantic = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.5), np.full((4, 4), 0.3)])
    semantic[2, 0, 0] = 0.9
    classes = postprocess(semantic, "semantic")
    assert classes[0, 0] == 2 and classes[1, 1] == 1
    with pytest.raises(ValueError, match="semantic"):
        postprocess(semantic, "semantic", instances=True)
    with pytest.raises(ValueError, match="3 output channels"):
        postprocess(semantic[:2], "three_class")
    binary = np.zeros((1, 20, 20), np.float32)
    binary[0, 2:5, 2:5] = 0.9
    binary[0, 10:18, 10:18] = 0.9
    np.testing.assert_array_equal(np.unique(postprocess(binary, "binary", instances=True)), [0, 1, 2])
    small_gone = postprocess(binary, "binary", min_size=20)
    assert small_gone[3, 3] == 0 and small_gone[12, 12] == 1


@pytest.mark.parametrize("shape, chunks", [((100, 130), (32, 40)), ((20, 50, 45), (8, 16, 16))])
def test_label_blockwise_equals_labelling_the_whole(tmp_path, shape, chunks):
    import zarr
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    probability = ndi.gaussian_filter(rng.random(shape), 2.0).astype(np.float32)
    level = float(np.quantile(probability, 0.6))  # blobs of many sizes, many crossing block borders
    out = zarr.open_array(str(tmp_path / "labels.zarr"), mode="w", shape=shape, chunks=chunks, dtype="int32")
    count = label_blockwise(probability, out, level)
    labels = out[:]
    whole = label_components(probability > level)
    assert count == whole.max() > 5
    assert ((labels > 0) == (whole > 0)).all()
    pairs = np.unique(np.stack([labels[whole > 0], whole[whole > 0]]), axis=1)
    assert pairs.shape[1] == count  # one-to-one: the same objects, numbered possibly differently
    assert set(np.unique(labels)) == set(range(count + 1))


def test_three_class_distance_seeds_split_a_bridged_pair():
    # two touching discs whose interiors the "network" joined: interior seeds give one object,
    # distance-peak seeds (split_distance ~ a third of the diameter) give the two discs
    yy, xx = np.mgrid[:40, :70]
    left = np.hypot(yy - 20, xx - 20) <= 12
    right = np.hypot(yy - 20, xx - 44) <= 12
    foreground = left | right
    probabilities = np.zeros((3, 40, 70), np.float32)
    probabilities[0] = ~foreground
    probabilities[1] = foreground
    merged = instances_from_three_class(probabilities)
    split = instances_from_three_class(probabilities, split_distance=8)
    assert merged.max() == 1
    assert split.max() == 2
    # each piece is one disc, cut where the discs meet
    for index in (1, 2):
        piece = split == index
        assert (piece & left).sum() > 0.95 * piece.sum() or (piece & right).sum() > 0.95 * piece.sum()
    assert np.array_equal(postprocess(probabilities, "three_class", instances=True, split=True, min_distance=8), split)
    with pytest.raises(ValueError, match="split_distance"):
        instances_from_three_class(probabilities, split_distance=0)


@pytest.mark.parametrize("shape, sampling", [((64, 80), None), ((9, 40, 50), (2.5, 1.0, 1.0))])
def test_distance_to_background_equals_scipy(shape, sampling):
    from scipy import ndimage as ndi

    from segtune.core.postprocess import distance_to_background

    rng = np.random.default_rng(7)
    mask = ndi.gaussian_filter(rng.random(shape), 2) > 0.5
    expected = ndi.distance_transform_edt(mask, sampling=sampling)
    np.testing.assert_allclose(distance_to_background(mask, sampling=sampling), expected, atol=1e-5)
    padded = ndi.distance_transform_edt(np.pad(mask, 1), sampling=sampling)[(slice(1, -1),) * mask.ndim]
    np.testing.assert_allclose(
        distance_to_background(mask, sampling=sampling, border_is_background=True), padded, atol=1e-5
    )
    full = np.ones(shape, bool)  # no background at all: scipy's convention, not infinity
    np.testing.assert_allclose(
        distance_to_background(full, sampling=sampling), ndi.distance_transform_edt(full, sampling=sampling)
    )
