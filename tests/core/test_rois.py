"""ImageJ ROIs from labels: outlines along pixel edges fill back to exactly the objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from segtune.core.rois import label_outlines, polygon_mask, read_imagej_rois, write_imagej_rois


def test_square_outline_is_its_four_corners() -> None:
    labels = np.zeros((6, 7), np.uint8)
    labels[1:4, 2:5] = 3
    ((label, polygon),) = label_outlines(labels)
    assert label == 3
    # (x, y) pixel corners, clockwise on screen, starting top-left
    assert polygon.tolist() == [[2, 1], [5, 1], [5, 4], [2, 4]]


def test_diagonal_pieces_are_one_outline_and_holes_are_filled() -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1, 1] = labels[2, 2] = 1  # touch at a corner: one 8-connected object
    labels[3:6, 3:6] = 2
    labels[4, 4] = 0  # a hole
    outlines = label_outlines(labels)
    assert [label for label, _ in outlines] == [1, 2]
    np.testing.assert_array_equal(polygon_mask(outlines[0][1], labels.shape), labels == 1)
    np.testing.assert_array_equal(polygon_mask(outlines[1][1], labels.shape), ndimage.binary_fill_holes(labels == 2))


@pytest.mark.parametrize("seed", range(5))
def test_random_objects_fill_back_exactly(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels, n = ndimage.label(rng.random((20, 20)) < 0.45, structure=np.ones((3, 3)))
    outlines = label_outlines(labels)
    assert sorted({label for label, _ in outlines}) == list(range(1, n + 1))
    for label in range(1, n + 1):
        filled = np.zeros(labels.shape, bool)
        for _, polygon in (o for o in outlines if o[0] == label):
            filled |= polygon_mask(polygon, labels.shape)
        np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(labels == label))


def test_roi_zip_reads_back_identical_and_is_never_overwritten(tmp_path: Path) -> None:
    labels = np.zeros((40, 50), np.uint16)
    labels[2:10, 3:9] = 1
    labels[20:35, 10:30] = 7
    labels[12:18, 40:49] = 300
    path = write_imagej_rois(tmp_path / "rois.zip", labels)
    np.testing.assert_array_equal(read_imagej_rois(path, labels.shape), labels)
    with pytest.raises(FileExistsError):
        write_imagej_rois(path, labels)
    with pytest.raises(ValueError, match="2D"):
        write_imagej_rois(tmp_path / "stack.zip", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="no objects"):
        write_imagej_rois(tmp_path / "empty.zip", np.zeros((4, 4), np.uint8))
