"""open_image / write_labels: real CZI files, TIFF layouts, laziness, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from segtune.core.io import ImageReadError, open_image, output_name, read_labels, write_labels

# dims (T, C, Z, Y, X) and pixel sizes of the shared CZI files, as ZEN wrote them
CZI_EXPECTED = {
    "CD_s_1_t_3_c_2_z_5.czi": ((3, 2, 5, 170, 240), (0.32, 0.0906, 0.0906), ["LED555", "LED470"]),
    "s_1_t_1_c_1_z_1.czi": ((1, 1, 1, 325, 475), (None, 1.0833, 1.0833), ["Bright"]),
    "mosaic_test.czi": ((1, 1, 1, 624, 1756), (1.0, 1.0833, 1.0833), ["EGFP"]),
    "RGB-8bit.czi": ((1, 3, 1, 624, 924), (None, 1.0833, 1.0833), ["red", "green", "blue"]),
}


def _close(a, b):
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-3)


@pytest.mark.parametrize("name", sorted(CZI_EXPECTED))
def test_shared_czi_files_open_with_documented_dims(czi_dir: Path, name: str) -> None:
    shape, sizes, channels = CZI_EXPECTED[name]
    image = open_image(czi_dir / name)
    assert isinstance(image.data, da.Array)
    assert image.dims == "TCZYX"
    assert image.shape == shape
    assert all(_close(a, b) for a, b in zip(image.physical_pixel_sizes, sizes, strict=True)), image.physical_pixel_sizes
    assert image.channel_names == channels
    plane = image.plane(t=image.shape[0] - 1, c=image.shape[1] - 1, z=image.shape[2] - 1)
    assert plane.shape == shape[-2:]
    assert plane.any()


def test_czi_planes_differ_by_channel_and_time(czi_dir: Path) -> None:
    image = open_image(czi_dir / "CD_s_1_t_3_c_2_z_5.czi")
    a, b, c = image.plane(0, 0, 2), image.plane(0, 1, 2), image.plane(2, 0, 2)
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_sample_czi_written_with_pylibczirw_matches_its_tiff() -> None:
    from segtune._resources import sample_file

    czi = open_image(sample_file("nuclei_2ch.czi"))
    tif = open_image(sample_file("nuclei_2d.tif"))
    assert czi.channel_names == ["Hoechst", "CellMask"]
    assert czi.physical_pixel_sizes.X == pytest.approx(0.325)
    np.testing.assert_array_equal(czi.plane(c=0), tif.plane())


def test_ome_tiff_round_trip_keeps_axes_pixel_sizes_and_channel_names(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 4000, (3, 2, 5, 33, 47), dtype=np.uint16)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "TCZYX",
            "PhysicalSizeX": 0.1,
            "PhysicalSizeY": 0.1,
            "PhysicalSizeZ": 0.4,
            "Channel": {"Name": ["DAPI", "GFP"]},
        },
    )
    image = open_image(path)
    np.testing.assert_array_equal(image.data.compute(), data)
    assert image.physical_pixel_sizes == (pytest.approx(0.4), pytest.approx(0.1), pytest.approx(0.1))
    assert image.channel_names == ["DAPI", "GFP"]


def test_imagej_hyperstack_is_reordered_to_tczyx(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 255, (2, 4, 3, 20, 30), dtype=np.uint8)  # TZCYX
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path, data, imagej=True, resolution=(5.0, 5.0), metadata={"axes": "TZCYX", "spacing": 0.7, "unit": "um"}
    )
    image = open_image(path)
    np.testing.assert_array_equal(image.data.compute(), data.transpose(0, 2, 1, 3, 4))
    assert image.physical_pixel_sizes == (pytest.approx(0.7), pytest.approx(0.2), pytest.approx(0.2))


def test_plain_multipage_tiff_is_a_z_stack_and_rgb_samples_are_channels(tmp_path: Path) -> None:
    stack = np.arange(4 * 6 * 7, dtype=np.uint16).reshape(4, 6, 7)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        for page in stack:
            tif.write(page, metadata=None)  # no shape metadata: a plain multi-page TIFF
    assert open_image(tmp_path / "pages.tif").shape == (1, 1, 4, 6, 7)
    rgb = np.random.default_rng(2).integers(0, 255, (6, 7, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = open_image(tmp_path / "rgb.tif")
    np.testing.assert_array_equal(image.data[0, :, 0].compute(), rgb.transpose(2, 0, 1))


def test_png_reads_with_samples_as_channels(tmp_path: Path) -> None:
    import imageio.v3 as iio

    rgb = np.random.default_rng(3).integers(0, 255, (9, 11, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "x.png", rgb)
    image = open_image(tmp_path / "x.png")
    assert image.shape == (1, 3, 1, 9, 11)
    np.testing.assert_array_equal(image.data[0, :, 0].compute(), rgb.transpose(2, 0, 1))


def test_big_tiff_is_read_lazily(tmp_path: Path) -> None:
    """A 128 MB TIFF opened and one plane read raises RSS by a few planes, not the file."""
    import psutil  # the test extra's

    path = tmp_path / "big.tif"
    plane = np.random.default_rng(0).integers(0, 60000, (2048, 2048), dtype=np.uint16)  # 8 MB
    with tifffile.TiffWriter(path) as tif:
        for z in range(16):
            tif.write(plane + z, contiguous=True)
    assert path.stat().st_size > 100e6
    del plane
    process = psutil.Process()
    before = process.memory_info().rss
    image = open_image(path)
    middle = image.plane(z=8)
    grown = process.memory_info().rss - before
    assert image.shape == (1, 1, 16, 2048, 2048)
    assert middle[0, 0] >= 8
    assert grown < 4 * 8 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB reading one 8 MiB plane"


@pytest.mark.parametrize("name", ["CD_s_1_t_3_c_2_z_5.czi", "mosaic_test.czi"])
def test_truncated_czi_raises_image_read_error_naming_the_file(czi_dir: Path, tmp_path: Path, name: str) -> None:
    data = (czi_dir / name).read_bytes()
    broken = tmp_path / f"half_{name}"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=f"half_{name}.*truncated or corrupt"):
        open_image(broken)


@pytest.mark.parametrize("ome", [False, True])
def test_truncated_tiff_raises_image_read_error(tmp_path: Path, ome: bool) -> None:
    path = tmp_path / ("full.ome.tif" if ome else "full.tif")
    tifffile.imwrite(path, np.ones((6, 64, 64), np.uint16), ome=ome, metadata={"axes": "ZYX"} if ome else None)
    data = path.read_bytes()
    broken = tmp_path / ("half.ome.tif" if ome else "half.tif")
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="half.*truncated or corrupt"):
        open_image(broken)


def test_missing_unsupported_garbage_and_bad_scene(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="nope.tif: no such file"):
        open_image(tmp_path / "nope.tif")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.txt: unsupported extension '.txt'"):
        open_image(tmp_path / "notes.txt")
    (tmp_path / "garbage.czi").write_bytes(b"\0" * 4096)
    with pytest.raises(ImageReadError, match="garbage.czi: not a CZI file"):
        open_image(tmp_path / "garbage.czi")
    (tmp_path / "garbage.tif").write_bytes(os.urandom(4096))
    with pytest.raises(ImageReadError, match="garbage.tif"):
        open_image(tmp_path / "garbage.tif")
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ImageReadError, match="one.tif: scene 3 does not exist"):
        open_image(tmp_path / "one.tif", scene=3)


def test_write_labels_round_trip_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    labels = np.zeros((5, 40, 50), np.uint16)
    labels[1:3, 5:9, 5:20] = 300
    labels[4, 30:35, 40:45] = 2
    path = write_labels(tmp_path / "out_labels.tif", labels, (0.5, 0.1, 0.1))
    np.testing.assert_array_equal(read_labels(path), labels)
    assert open_image(path).physical_pixel_sizes == (pytest.approx(0.5), pytest.approx(0.1), pytest.approx(0.1))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out_labels.tif already exists"):
        write_labels(path, np.ones((3, 3), np.uint8))
    assert path.read_bytes() == before
    write_labels(path, np.ones((3, 3), np.uint8), overwrite=True)
    np.testing.assert_array_equal(read_labels(path), np.ones((3, 3)))
    assert [p.name for p in tmp_path.iterdir()] == ["out_labels.tif"]  # no temp files left behind
    kept = write_labels(tmp_path / "wide.tif", np.eye(3, dtype=np.uint16), dtype=np.uint16)
    assert read_labels(kept).dtype == np.uint16
    with pytest.raises(ValueError, match="labels up to 300 cannot be stored as uint8"):
        write_labels(tmp_path / "narrow.tif", np.full((2, 2), 300), dtype=np.uint8)
    kept.unlink()
    with pytest.raises(ValueError, match="integer or boolean"):
        write_labels(tmp_path / "f.tif", np.full((3, 3), 0.5))


def test_output_name() -> None:
    assert output_name("/a/cells.ome.tif") == "cells_labels.tif"
    assert output_name("scan.CZI") == "scan_labels.tif"


def test_czi_scene_by_name_and_missing_scene(czi_dir: Path) -> None:
    image = open_image(czi_dir / "mosaic_test.czi", scene="TR1")
    assert image.scene == "TR1" and image.shape[-2:] == (624, 1756)
    with pytest.raises(ImageReadError, match=r"mosaic_test.czi: scene 4 does not exist; the file has 1 scene"):
        open_image(czi_dir / "mosaic_test.czi", scene=4)
