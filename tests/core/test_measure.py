"""Tests of segtune.core.measure: known squares and cubes in physical units, intensity sums."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from segtune.core.io import PhysicalPixelSizes
from segtune.core.measure import measure, save_table


def _two_squares():
    labels = np.zeros((14, 10), np.uint16)
    labels[2:6, 2:6] = 3  # 16 px
    labels[10:12, 1:4] = 5  # 6 px
    return labels


def test_2d_areas_centroids_bboxes_in_micrometres():
    table = measure(_two_squares(), pixel_sizes=(None, 0.5, 0.25))
    assert table["label"].tolist() == [3, 5]
    assert table["unit"].tolist() == ["um", "um"]
    assert table["n_pixels"].tolist() == [16, 6]
    assert table["area"].tolist() == pytest.approx([16 * 0.125, 6 * 0.125])
    assert table["equivalent_diameter"].tolist() == pytest.approx([2 * np.sqrt(2.0 / np.pi), 2 * np.sqrt(0.75 / np.pi)])
    assert table["centroid_y_px"].tolist() == [3.5, 10.5]
    assert table["centroid_x_px"].tolist() == [3.5, 2.0]
    assert table["centroid_y"].tolist() == pytest.approx([1.75, 5.25])
    assert table["centroid_x"].tolist() == pytest.approx([0.875, 0.5])
    bbox = table[["bbox_min_y", "bbox_min_x", "bbox_max_y", "bbox_max_x"]].values.tolist()
    assert bbox == [[2, 2, 6, 6], [10, 1, 12, 4]]
    assert "t" not in table and "z" not in table and "volume" not in table


def test_unknown_pixel_sizes_fall_back_to_pixels():
    for sizes in (None, PhysicalPixelSizes(None, None, 0.3), (1.0, 0.2, None)):
        table = measure(_two_squares(), pixel_sizes=sizes)
        assert table["unit"].tolist() == ["px", "px"]
        assert table["area"].tolist() == [16.0, 6.0]
        assert table["centroid_y"].tolist() == table["centroid_y_px"].tolist()


def test_intensities_per_channel_with_names():
    labels = _two_squares()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, size=(2, *labels.shape)).astype(np.uint16)  # CYX
    table = measure(labels, image, channel_names=["DAPI", "GFP 488"])
    for i, name in enumerate(["DAPI", "GFP_488"]):
        for row, label in enumerate([3, 5]):
            values = image[i][labels == label].astype(np.float64)
            assert table.loc[row, f"integrated_intensity_{name}"] == values.sum()
            assert table.loc[row, f"mean_intensity_{name}"] == pytest.approx(values.mean())
            assert table.loc[row, f"max_intensity_{name}"] == values.max()
    # one channel with the labels' own shape; default names
    single = measure(labels, image[1])
    assert single["integrated_intensity_ch0"].tolist() == table["integrated_intensity_GFP_488"].tolist()
    # a 3-value image: exact sums by hand
    flat = np.zeros_like(labels, dtype=np.float32)
    flat[labels == 3] = 2.5
    flat[11, 3] = 7.0
    by_hand = measure(labels, flat)
    assert by_hand["integrated_intensity_ch0"].tolist() == [40.0, 7.0]
    assert by_hand["max_intensity_ch0"].tolist() == [2.5, 7.0]


def test_3d_cubes_volume_in_cubic_micrometres():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1:4, 2:6, 0:5] = 1  # 3 x 4 x 5 = 60 voxels
    labels[5, 7, 7] = 2
    table = measure(labels, pixel_sizes=(2.0, 0.5, 0.5))
    assert table["unit"].tolist() == ["um", "um"]
    assert table["volume"].tolist() == pytest.approx([60 * 0.5, 0.5])
    assert table["equivalent_diameter"][0] == pytest.approx(np.cbrt(6 * 30 / np.pi))
    assert table.loc[0, ["centroid_z_px", "centroid_y_px", "centroid_x_px"]].tolist() == [2.0, 3.5, 2.0]
    assert table.loc[0, ["centroid_z", "centroid_y", "centroid_x"]].tolist() == pytest.approx([4.0, 1.75, 1.0])
    assert table.loc[0, ["bbox_min_z", "bbox_max_z"]].tolist() == [1, 4]
    assert "area" not in table
    # without a Z size a volume cannot be physical
    assert measure(labels, pixel_sizes=(None, 0.5, 0.5))["unit"].tolist() == ["px", "px"]


def test_per_plane_measures_2d_objects_with_z():
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[1:4, 2:6, 0:5] = 1
    image = np.zeros(labels.shape, np.uint16)
    image[2] = 10
    table = measure(labels, image, pixel_sizes=(None, 0.5, 0.5), per_plane=True)
    assert table["z"].tolist() == [1, 2, 3]
    assert table["label"].tolist() == [1, 1, 1]
    assert table["area"].tolist() == pytest.approx([5.0, 5.0, 5.0])  # 20 px x 0.25 um^2
    assert table["unit"].tolist() == ["um"] * 3  # Z size not needed in 2D
    assert table["integrated_intensity_ch0"].tolist() == [0.0, 200.0, 0.0]
    assert "centroid_z_px" not in table


def test_time_series_with_tczyx_image_numpy_and_dask():
    labels = np.zeros((2, 3, 8, 8), np.uint16)  # TZYX
    labels[0, 0:2, 0:2, 0:2] = 4
    labels[1, 0:2, 0:2, 0:2] = 4
    labels[1, 2, 5:8, 5:8] = 9
    image = np.zeros((2, 2, 3, 8, 8), np.float32)  # TCZYX
    image[:, 0] = 1.0
    image[1, 1] = 3.0
    for img in (image, da.from_array(image, chunks=(1, 1, 3, 8, 8))):
        table = measure(labels, img, pixel_sizes=(1.0, 1.0, 1.0), channel_names=["a", "b"])
        assert table[["t", "label"]].values.tolist() == [[0, 4], [1, 4], [1, 9]]
        assert table["volume"].tolist() == [8.0, 8.0, 9.0]
        assert table["integrated_intensity_a"].tolist() == [8.0, 8.0, 9.0]
        assert table["integrated_intensity_b"].tolist() == [0.0, 24.0, 27.0]
    per_plane = measure(labels, per_plane=True)
    assert per_plane[["t", "z", "label"]].values.tolist() == [[0, 0, 4], [0, 1, 4], [1, 0, 4], [1, 1, 4], [1, 2, 9]]
    time_only = measure(labels[:, 2], axes="TYX")
    assert time_only[["t", "label", "area"]].values.tolist() == [[1, 9, 9.0]]


def test_binary_mask_objects_are_connected_components():
    mask = np.zeros((10, 10), np.uint8)
    mask[1:3, 1:3] = 255
    mask[3, 3] = 255  # diagonal neighbour: same object
    mask[6:9, 6:9] = 255
    table = measure(mask)
    assert table["label"].tolist() == [1, 2]
    assert table["n_pixels"].tolist() == [5, 9]


def test_empty_labels_give_an_empty_table_with_columns():
    table = measure(np.zeros((5, 5), np.uint8), np.ones((5, 5)), channel_names=["x"])
    assert len(table) == 0
    assert {"label", "area", "unit", "mean_intensity_x"} <= set(table.columns)


def test_errors_name_the_problem():
    labels = _two_squares()
    with pytest.raises(ValueError, match=r"`image` shape \(3, 3\) fits neither `labels` shape \(14, 10\)"):
        measure(labels, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="1 `channel_names`"):
        measure(labels, np.zeros((2, 14, 10)), channel_names=["only"])
    with pytest.raises(ValueError, match="do not match"):
        measure(labels, axes="ZYX")
    with pytest.raises(ValueError, match="threshold it first"):
        measure(labels * 0.5)
    with pytest.raises(ValueError, match="positive"):
        measure(labels, pixel_sizes=(None, -1.0, 1.0))


def test_save_table_atomic_round_trip(tmp_path):
    table = measure(_two_squares(), np.ones((14, 10)), pixel_sizes=(None, 0.5, 0.5))
    path = save_table(table, tmp_path / "out" / "table.csv")
    back = pd.read_csv(path)
    assert back.columns.tolist() == table.columns.tolist()
    assert np.allclose(back["area"], table["area"]) and back["unit"].tolist() == ["um", "um"]
    with pytest.raises(FileExistsError, match="overwrite"):
        save_table(table, path)
    save_table(table.iloc[:1], path, overwrite=True)
    assert len(pd.read_csv(path)) == 1
    tsv = save_table(table, tmp_path / "out" / "table.tsv")
    assert pd.read_csv(tsv, sep="\t")["label"].tolist() == [3, 5]
    with pytest.raises(ValueError, match=".csv or .tsv"):
        save_table(table, tmp_path / "table.xlsx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table.csv", "table.tsv"]
