"""Tests of `segtune measure`: pixel sizes and channel names from the image file, stacks, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from segtune.cli import main
from segtune.core.io import open_image, write_labels


def _image_and_labels(tmp_path):
    image = np.zeros((2, 20, 30), np.uint16)  # CYX
    image[0] = 100
    image[1, 5:9, 5:9] = 7
    tifffile.imwrite(
        tmp_path / "cells.ome.tif",
        image,
        ome=True,
        metadata={
            "axes": "CYX",
            "PhysicalSizeX": 0.5,
            "PhysicalSizeY": 0.5,
            "Channel": {"Name": ["DAPI", "GFP"]},
        },
    )
    labels = np.zeros((20, 30), np.uint16)
    labels[5:9, 5:9] = 4  # 16 px = 4 um^2
    labels[12:14, 20:26] = 6  # 12 px = 3 um^2
    write_labels(tmp_path / "cells_labels.tif", labels, pixel_sizes=(None, 0.25, 0.25))
    return tmp_path / "cells.ome.tif", tmp_path / "cells_labels.tif"


def test_measure_writes_table_in_micrometres_with_channel_columns(tmp_path, capsys):
    image, labels = _image_and_labels(tmp_path)
    out = tmp_path / "table.csv"
    assert main(["measure", "--labels", str(labels), "--image", str(image), "--out", str(out)]) == 0
    assert "measured 2 object(s) in micrometres" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert table["label"].tolist() == [4, 6]
    assert table["area"].tolist() == pytest.approx([4.0, 3.0])  # the image's 0.5 um, not the labels' 0.25
    assert table["unit"].tolist() == ["um", "um"]
    assert table["integrated_intensity_DAPI"].tolist() == [1600.0, 1200.0]
    assert table["integrated_intensity_GFP"].tolist() == [112.0, 0.0]
    assert table["max_intensity_GFP"].tolist() == [7.0, 0.0]

    assert main(["measure", "--labels", str(labels), "--image", str(image), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["measure", "--labels", str(labels), "--out", str(out), "--overwrite"]) == 0
    table = pd.read_csv(out)  # without --image: the label file's own pixel sizes, no intensities
    assert table["area"].tolist() == pytest.approx([1.0, 0.75])
    assert not any(c.startswith("mean_intensity") for c in table.columns)


def test_measure_shape_mismatch_is_a_one_line_error(tmp_path, capsys):
    image, _ = _image_and_labels(tmp_path)
    other = write_labels(tmp_path / "other.tif", np.ones((10, 10), np.uint8))
    code = main(["measure", "--labels", str(other), "--image", str(image), "--out", str(tmp_path / "t.csv")])
    err = capsys.readouterr().err
    assert code == 2
    assert "shape (10, 10)" in err and "Y=20, X=30" in err
    assert not (tmp_path / "t.csv").exists()


def test_measure_z_stack_3d_and_per_plane(tmp_path):
    image = np.ones((4, 10, 10), np.float32)  # ZYX
    tifffile.imwrite(
        tmp_path / "stack.ome.tif",
        image,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5},
    )
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[1:3, 2:6, 2:6] = 1
    write_labels(tmp_path / "stack_labels.tif", labels)
    out = tmp_path / "vol.csv"
    assert (
        main(
            [
                "measure",
                "--labels",
                str(tmp_path / "stack_labels.tif"),
                "--image",
                str(tmp_path / "stack.ome.tif"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert table["volume"].tolist() == pytest.approx([32 * 0.5])
    (column,) = [c for c in table.columns if c.startswith("integrated_intensity_")]
    assert column == "integrated_intensity_Channel_0_0"  # OME's default name "Channel:0:0", made safe
    assert table[column].tolist() == [32.0]
    out = tmp_path / "planes.csv"
    assert (
        main(
            [
                "measure",
                "--labels",
                str(tmp_path / "stack_labels.tif"),
                "--image",
                str(tmp_path / "stack.ome.tif"),
                "--out",
                str(out),
                "--per-plane",
            ]
        )
        == 0
    )
    table = pd.read_csv(out)
    assert table["z"].tolist() == [1, 2] and table["area"].tolist() == pytest.approx([4.0, 4.0])


def test_measure_real_czi_time_series(czi_dir, tmp_path):
    path = czi_dir / "CD_s_1_t_3_c_2_z_5.czi"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    image = open_image(path)
    t, c, z, y, x = image.shape
    labels = np.zeros((t, z, y, x), np.uint16)
    labels[:, 1:4, 40:60, 50:80] = 1
    labels[2, 0, 100:110, 100:130] = 2
    write_labels(tmp_path / "cd_labels.tif", labels)
    out = tmp_path / "cd.csv"
    assert main(["measure", "--labels", str(tmp_path / "cd_labels.tif"), "--image", str(path), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table[["t", "label"]].values.tolist() == [[0, 1], [1, 1], [2, 1], [2, 2]]
    sz, sy, sx = image.physical_pixel_sizes
    assert table["unit"].tolist() == ["um"] * 4
    assert table["volume"][0] == pytest.approx(3 * 20 * 30 * sz * sy * sx)
    data = np.asarray(image.data)
    for name, channel in zip(image.channel_names, range(c), strict=True):
        expected = data[2, channel][labels[2] == 2].astype(np.float64)
        assert table[f"integrated_intensity_{name}"][3] == pytest.approx(expected.sum())
        assert table[f"mean_intensity_{name}"][3] == pytest.approx(expected.mean())
