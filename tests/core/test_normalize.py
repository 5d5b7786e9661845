"""Percentile normalisation, contrast stretch, CLAHE, and the pixel check every input passes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from segtune.core.normalize import (
    DEFAULT_PERCENTILES,
    STRETCH_PERCENTILES,
    check_pixels,
    clahe,
    percentile_normalize,
    percentiles,
)


def test_percentiles_map_to_zero_and_one():
    image = np.arange(1001, dtype=np.uint16).reshape(7, 143)  # 0..1000: percentile p is 10 p
    out = percentile_normalize(image, 10, 90)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.flat[100] == pytest.approx(0.0) and out.flat[900] == pytest.approx(1.0)
    assert out.min() == pytest.approx(-0.125) and out.max() == pytest.approx(1.125)  # tails kept ...
    stretched = percentile_normalize(image, *STRETCH_PERCENTILES, clip=True)
    assert stretched.min() == 0.0 and stretched.max() == 1.0  # ... unless clipped
    assert DEFAULT_PERCENTILES == (1.0, 99.8)


def test_given_limits_replace_the_image_own_percentiles():
    """Tiles of a stack normalised with the whole stack's limits match the whole normalised at once."""
    stack = np.random.default_rng(0).gamma(2.0, 100.0, (4, 64, 64)).astype(np.float32)
    limits = percentiles(stack)
    whole = percentile_normalize(stack)
    tile = percentile_normalize(stack[2, :32, 16:48], limits=limits)
    np.testing.assert_allclose(tile, whole[2, :32, 16:48], rtol=1e-6)
    flat = np.full((8, 8), 5.0)  # no contrast at all: no division by zero
    assert np.isfinite(percentile_normalize(flat)).all()


def test_large_and_lazy_images_are_sampled_deterministically():
    rng = np.random.default_rng(1)
    big = rng.normal(1000.0, 50.0, (2000, 2100)).astype(np.float32)  # 4.2 M pixels, over the sample limit
    exact = np.percentile(big, [1.0, 99.8])
    sampled = percentiles(big)
    assert sampled == percentiles(big)  # the same sample every time
    np.testing.assert_allclose(sampled, exact, rtol=0.01)
    lazy = da.from_array(big, chunks=(500, 500))
    assert percentiles(lazy) == pytest.approx(sampled)


def test_bad_percentiles_are_refused_with_their_values():
    with pytest.raises(ValueError, match="0 <= low < high <= 100, got low=99.0, high=1.0"):
        percentile_normalize(np.zeros((4, 4)), 99.0, 1.0)
    with pytest.raises(ValueError, match="got low=0.0, high=101.0"):
        percentiles(np.zeros((4, 4)), 0.0, 101.0)


def test_clahe_raises_local_contrast_in_a_dim_region():
    rng = np.random.default_rng(2)
    image = np.zeros((256, 256), np.float32)
    image[:, :128] = 10 + rng.normal(0, 1, (256, 128))  # dim, low-contrast half
    image[:, 128:] = 1000 + rng.normal(0, 100, (256, 128))  # bright half
    out = clahe(image, kernel_size=64)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    plain = percentile_normalize(image, 0, 100)
    assert out[:, :128].std() > 5 * plain[:, :128].std()
    with pytest.raises(ValueError, match="clip_limit must be positive, got 0"):
        clahe(image, clip_limit=0)


def test_check_pixels_refuses_what_no_network_takes():
    check_pixels(np.zeros((3, 4), np.uint16))  # integers: fine, not even scanned
    check_pixels(np.ones((3, 4), np.float64) * 1e30)  # large but within float32
    with pytest.raises(ValueError, match=r"cells.tif is empty \(shape \(0, 4\)\)"):
        check_pixels(np.zeros((0, 4)), "cells.tif")
    with pytest.raises(ValueError, match=r"holds complex numbers \(dtype complex64\)"):
        check_pixels(np.zeros((2, 2), np.complex64))
    bad = np.ones((4, 5), np.float32)
    bad[1, 2], bad[3, 3] = np.nan, np.inf
    with pytest.raises(ValueError, match="has 2 NaN or infinite pixel\\(s\\) of 20; replace them"):
        check_pixels(bad)
    with pytest.raises(ValueError, match="1 NaN or infinite pixel"):
        check_pixels(np.array([[1e39, 0.0]]))  # beyond float32: infinite once the network sees it
    with pytest.raises(ValueError, match=r"of 20 \(every pixel\)"):
        check_pixels(da.full((4, 5), np.nan, chunks=2))
