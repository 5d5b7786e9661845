"""The labels toolkit on hand-made 2D and 3D label images, with exact expected outputs."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.core import labels as lab


def grid(text: str) -> np.ndarray:
    """A 2D label image from rows of digits ('.' is background)."""
    rows = [row.strip() for row in text.strip().splitlines()]
    return np.array([[0 if c == "." else int(c) for c in row] for row in rows], dtype=np.uint16)


def two_discs(radius: int = 6, gap: int = 9) -> np.ndarray:
    """Two overlapping discs as one object (id 3) in a 2D image; centres ``gap`` apart on one row."""
    yy, xx = np.mgrid[:24, :36]
    a = np.hypot(yy - 12, xx - 12) <= radius
    b = np.hypot(yy - 12, xx - 12 - gap) <= radius
    return ((a | b) * 3).astype(np.uint16)


def test_count_sizes_and_label_at():
    a = grid("""
        11.2
        11.2
        ....
        5...
    """)
    assert lab.object_count(a) == 3
    assert lab.object_sizes(a) == {1: 4.0, 2: 2.0, 5: 1.0}
    assert lab.object_sizes(a, pixel_size=(0.5, 0.5)) == {1: 1.0, 2: 0.5, 5: 0.25}
    assert lab.label_at(a, (0.4, 3.2)) == 2 and lab.label_at(a, (9, 9)) == 0
    with pytest.raises(ValueError, match="pixel_size must give 2 positive sizes"):
        lab.object_sizes(a, pixel_size=(0.5,))


def test_fill_holes_2d_and_3d_keeps_ids_and_leaves_open_gaps():
    a = grid("""
        444..
        4.4..
        444.7
        .....
        7.7.7
    """)
    out = lab.fill_holes(a)
    expected = a.copy()
    expected[1, 1] = 4
    np.testing.assert_array_equal(out, expected)
    assert a[1, 1] == 0  # the input is not changed
    shell = np.zeros((5, 5, 5), np.uint8)
    shell[1:4, 1:4, 1:4] = 2
    shell[2, 2, 2] = 0
    assert lab.fill_holes(shell)[2, 2, 2] == 2
    # a well open at the last plane is no hole in 3D, but in each plane it is a closed ring's hole
    cup = np.zeros((3, 5, 5), np.uint8)
    cup[:, 1:4, 1:4] = 1
    cup[1:, 2, 2] = 0
    np.testing.assert_array_equal(lab.fill_holes(cup), cup)
    np.testing.assert_array_equal(lab.fill_holes(cup, planewise=True)[:, 2, 2], [1, 1, 1])


def test_remove_small_in_pixels_and_micrometres_2d_and_3d():
    a = grid("""
        11.22
        11.22
        .....
        3..44
    """)
    np.testing.assert_array_equal(lab.remove_small(a, 4), np.where(np.isin(a, [3, 4]), 0, a))
    # with 0.5 um pixels each pixel is 0.25 um^2: object 4 (2 px) is 0.5 um^2, object 1 is 1 um^2
    out = lab.remove_small(a, 0.5, pixel_size=(0.5, 0.5))
    np.testing.assert_array_equal(out, np.where(a == 3, 0, a))
    np.testing.assert_array_equal(lab.remove_sizes(a, 2, 3), np.where(a == 4, 4, 0))
    stack = np.zeros((2, 4, 4), np.int32)
    stack[0, :2, :2] = 1
    stack[1, :2, :2] = 1  # 8 voxels in 3D, 4 px per plane
    stack[1, 3, 3] = 2
    np.testing.assert_array_equal(lab.remove_small(stack, 5), np.where(stack == 2, 0, stack))
    assert lab.remove_small(stack, 5, planewise=True).max() == 0
    assert lab.remove_small(stack, 2.5, pixel_size=(2.0, 1.0, 1.0)).tolist() == np.where(stack == 2, 0, stack).tolist()
    with pytest.raises(ValueError, match="min_size <= max_size"):
        lab.remove_sizes(a, 5, 2)


def test_remove_border_2d_3d_and_planewise():
    a = grid("""
        1....
        ..2..
        .....
        ....3
    """)
    np.testing.assert_array_equal(lab.remove_border(a), np.where(a == 2, 2, 0))
    stack = np.zeros((3, 5, 5), np.uint8)
    stack[0, 2, 2] = 1  # touches the first plane: on the volume's border
    stack[1, 2, 2] = 2  # inside
    stack[1, 0, 2] = 3  # the Y edge
    np.testing.assert_array_equal(lab.remove_border(stack), np.where(stack == 2, 2, 0))
    np.testing.assert_array_equal(lab.remove_border(stack, planewise=True), np.where(stack == 3, 0, stack))


def test_delete_merge_and_relabel():
    a = grid("""
        11.22
        ....3
        55...
    """)
    np.testing.assert_array_equal(lab.delete_objects(a, [2, 0]), np.where(a == 2, 0, a))
    np.testing.assert_array_equal(lab.merge_objects(a, [3, 1, 2]), np.where(np.isin(a, [1, 2]), 3, a))
    np.testing.assert_array_equal(lab.merge_objects(a, [3]), a)
    np.testing.assert_array_equal(
        lab.relabel_sequential(lab.delete_objects(a, [2])),
        grid("""
        11...
        ....2
        33...
    """),
    )


def test_split_object_2d_at_the_distance_peaks():
    a = two_discs()
    a[0, 0] = 1  # another object, untouched
    out = lab.split_object(a, 3)
    left, right = out[12, 8], out[12, 26]
    assert {int(left), int(right)} == {3, 4}  # the pieces: the old id and one new id (max + 1)
    assert lab.object_count(out) == 3 and out[0, 0] == 1
    np.testing.assert_array_equal(out > 0, a > 0)  # no pixel gained or lost
    # the cut runs down the middle (columns 16-17 between the centres 12 and 21)
    cols = np.nonzero(out[12] == left)[0]
    assert cols.max() in (16, 17)
    # a square with a hole stays whole (its hole's rim is no reason to split)
    ring = np.zeros((14, 14), np.uint8)
    ring[2:12, 2:12] = 6
    ring[5:9, 5:9] = 0
    np.testing.assert_array_equal(lab.split_object(ring, 6), ring)
    # one round object has one peak: stays whole
    disc = (np.hypot(*np.mgrid[-8:9, -8:9]) <= 7).astype(np.uint8) * 2
    np.testing.assert_array_equal(lab.split_object(disc, 2), disc)
    # an id that is not there changes nothing; next_label is honoured
    np.testing.assert_array_equal(lab.split_object(a, 9), a)
    assert set(np.unique(lab.split_object(a, 3, next_label=40))) == {0, 1, 3, 40}


def test_split_3d_and_split_all():
    zz, yy, xx = np.mgrid[:16, :16, :28]
    pair = (np.sqrt((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 8) ** 2) <= 6) | (
        np.sqrt((zz - 8) ** 2 + (yy - 8) ** 2 + (xx - 18) ** 2) <= 6
    )
    volume = pair.astype(np.uint16) * 5
    out = lab.split_object(volume, 5)
    assert sorted(np.unique(out).tolist()) == [0, 5, 6]
    assert out[8, 8, 6] != out[8, 8, 20]
    np.testing.assert_array_equal(out > 0, volume > 0)
    # all objects of a 2D image split at once, each new piece a new id
    a = np.concatenate([two_discs(), two_discs() // 3 * 7], axis=0)
    out = lab.split_objects(a)
    assert lab.object_count(out) == 4
    assert sorted(np.unique(out).tolist()) == [0, 3, 7, 8, 9]
    planes = lab.split_objects(np.stack([two_discs(), two_discs()]), planewise=True)
    # planewise: each plane's pair split; new pieces numbered across the stack
    assert sorted(np.unique(planes).tolist()) == [0, 3, 4, 5] and lab.object_count(planes[0]) == 2


def test_dilate_grows_into_background_without_merging():
    a = grid("""
        ........
        .1....2.
        ........
    """)
    out = lab.dilate(a, 2)
    np.testing.assert_array_equal(
        out,
        grid("""
        111..222
        11112222
        111..222
    """),
    )
    # 1 px in 3D: the 6 face neighbours
    v = np.zeros((3, 3, 3), np.uint8)
    v[1, 1, 1] = 4
    assert int((lab.dilate(v, 1) == 4).sum()) == 7


def test_erode_shrinks_from_background_and_neighbours_not_the_image_edge():
    a = grid("""
        1111222
        1111222
        1111222
        .......
    """)
    np.testing.assert_array_equal(
        lab.erode(a, 1),
        grid("""
        111..22
        111..22
        .......
        .......
    """),
    )
    np.testing.assert_array_equal(lab.erode(a, 0), a)
    cube = np.zeros((5, 5, 5), np.uint8)
    cube[1:4, 1:4, 1:4] = 3
    expected = np.zeros_like(cube)
    expected[2, 2, 2] = 3
    np.testing.assert_array_equal(lab.erode(cube, 1), expected)
    with pytest.raises(ValueError, match="radius must be 0 or more"):
        lab.erode(cube, -1)


def test_smooth_cuts_spurs_and_corners_fills_notches_but_not_into_neighbours():
    a = grid("""
        ..........
        .1111111..
        .11111111.
        .1111111..
        .111.111..
        .1111111..
        .1111111..
        .1111111.2
        .........2
    """)
    out = lab.smooth(a, 1)
    # the spur at (2, 8) and three corners go (the fourth is held by the spur), the hole fills
    np.testing.assert_array_equal(
        out,
        grid("""
        ..........
        ..111111..
        .1111111..
        .1111111..
        .1111111..
        .1111111..
        .1111111..
        ..11111...
        .........2
    """),
    )
    # a neighbour in a notch keeps its pixels; a speck the blur would erase is kept as it was
    b = a.copy()
    b[4, 4] = 3
    out = lab.smooth(b, 1)
    assert out[4, 4] == 3 and (out == 3).sum() == 1
    # 3D: a one-voxel spur on a cube is cut, the cube stays
    cube = np.zeros((7, 7, 7), np.uint8)
    cube[1:6, 1:6, 1:6] = 1
    cube[3, 3, 6] = 1
    assert lab.smooth(cube, 1)[3, 3, 6] == 0 and lab.smooth(cube, 1)[3, 3, 3] == 1
    np.testing.assert_array_equal(lab.smooth(a, 0), a)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="labels must hold integer ids, got dtype float64"):
        lab.fill_holes(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"must be 2D \(Y, X\) or 3D"):
        lab.remove_border(np.zeros((2, 2, 2, 2), np.uint8))


def test_planes_split_and_stack_back_with_ids_running_on():
    stack = np.zeros((2, 3, 5, 6), np.int32)  # (T, Z, Y, X)
    stack[0, 0, 1:3, 1:3] = 1
    stack[1, 2, 0, 0] = 1
    stack[1, 2, 4, 5] = 2
    planes, leading = lab.planes_of(stack)
    assert leading == (2, 3) and len(planes) == 6 and planes[5].shape == (5, 6)
    np.testing.assert_array_equal(lab.stack_planes(planes, leading), stack)
    numbered = lab.stack_planes(planes, leading, renumber=True)
    assert numbered.dtype == np.uint32 and numbered.shape == stack.shape
    # each plane's objects keep their shapes; ids run on: plane 0 has 1, the last plane's 1, 2 become 2, 3
    assert numbered[0, 0, 1, 1] == 1 and numbered[1, 2, 0, 0] == 2 and numbered[1, 2, 4, 5] == 3
    np.testing.assert_array_equal(numbered > 0, stack > 0)
    # a single 2D image passes through unchanged
    plane = np.arange(12, dtype=np.int16).reshape(3, 4)
    (only,), none = lab.planes_of(plane)
    assert none == () and lab.stack_planes([only], none, renumber=True) is only


def test_mask_from_rectangle_polygon_and_ellipse():
    rectangle = lab.mask_from_shapes([("rectangle", [[1, 1], [1, 3], [2, 3], [2, 1]])], (5, 6))
    assert np.argwhere(rectangle).tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    triangle = lab.mask_from_shapes([("polygon", [[0, 0], [0, 8], [8, 0]])], (10, 10))
    assert triangle[1, 1] and triangle[0, 7] and not triangle[8, 8] and not triangle[5, 5]
    # an ellipse by the corners of its box: the whole disc inside, the box's corners outside
    ellipse = lab.mask_from_shapes([("ellipse", [[0, 0], [0, 10], [10, 10], [10, 0]])], (12, 12))
    assert ellipse[5, 5] and ellipse[5, 1] and ellipse[1, 5] and not ellipse[0, 0] and not ellipse[9, 9]
    both = lab.mask_from_shapes(
        [("rectangle", [[1, 1], [1, 3], [2, 3], [2, 1]]), ("polygon", [[0, 0], [0, 8], [8, 0]])], (10, 10)
    )
    np.testing.assert_array_equal(both, np.pad(rectangle, ((0, 5), (0, 4))) | triangle)
    with pytest.raises(ValueError, match="a shape must be one of rectangle, polygon, ellipse, got 'line'"):
        lab.mask_from_shapes([("line", [[0, 0], [3, 3]])], (4, 4))
