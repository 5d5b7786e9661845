"""The reader on files segtune did not make: compressed TIFFs, colour CZIs, label images from
other tools, axis names; and the writer on plain ``.tif`` labels."""

from __future__ import annotations

import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from segtune.core.io import open_image, read_labels, write_labels

pytestmark = pytest.mark.gui


def test_lzw_tiff_opens_through_the_plugin(make_napari_viewer, nuclei_dir: Path, tmp_path: Path) -> None:
    nuclei = iio.imread(nuclei_dir / "images" / "0.png")
    path = tmp_path / "nuclei_lzw.tif"
    tifffile.imwrite(path, nuclei, compression="lzw", resolution=(1 / 0.5, 1 / 0.5), resolutionunit="MICROMETER")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-segtune")
    assert type(layer).__name__ == "Image"
    np.testing.assert_array_equal(np.asarray(layer.data), nuclei)


def test_shared_rgb_czi_opens_as_one_rgb_layer(make_napari_viewer, czi_dir: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(czi_dir / "RGB-8bit.czi"), plugin="napari-segtune")
    assert layer.rgb and layer.data.shape == (624, 924, 3)
    assert layer.blending != "additive"
    np.testing.assert_allclose(layer.scale, (1.0833, 1.0833), rtol=1e-3)
    image = open_image(czi_dir / "RGB-8bit.czi")
    np.testing.assert_array_equal(np.asarray(layer.data[..., 1]), image.plane(c=1))


def test_colour_czi_keeps_channel_names_and_opens_rgb_layers(make_napari_viewer, colour_czi: Path) -> None:
    image = open_image(colour_czi)
    assert image.channel_names[:4] == ["Bright (red)", "Bright (green)", "Bright (blue)", "Pol_0 (red)"]
    assert len(image.channel_names) == 9
    viewer = make_napari_viewer()
    layers = viewer.open(str(colour_czi), plugin="napari-segtune")
    assert [layer.name for layer in layers] == [f"polarisation.czi [{n}]" for n in ("Bright", "Pol_0", "Pol_45")]
    assert all(layer.rgb and layer.data.shape == (200, 300, 3) for layer in layers)
    assert [layer.visible for layer in layers] == [True, False, False]  # colour images would hide each other
    np.testing.assert_allclose(layers[0].scale, (0.5, 0.5))
    np.testing.assert_array_equal(np.asarray(layers[1].data[..., 0]), image.plane(c=3))


def test_label_tiff_from_another_tool_opens_as_labels(make_napari_viewer, qcanet_dir: Path, tmp_path: Path) -> None:
    truth = tifffile.imread(qcanet_dir / "labels" / "8_cell_stage.tif")
    viewer = make_napari_viewer()
    # in a folder called labels; the image of the same name beside it stays an image
    (labels,) = viewer.open(str(qcanet_dir / "labels" / "8_cell_stage.tif"), plugin="napari-segtune")
    (image,) = viewer.open(str(qcanet_dir / "images" / "8_cell_stage.tif"), plugin="napari-segtune")
    assert type(labels).__name__ == "Labels" and type(image).__name__ == "Image"
    assert np.issubdtype(labels.data.dtype, np.integer)
    np.testing.assert_array_equal(labels.data, truth)
    assert labels.axis_labels == ("z", "y", "x")
    # by name, wherever it lies: Cell Tracking Challenge ground truth, masks from other tools
    for name in ("man_seg000.tif", "embryo_mask.tif", "embryo_labels.tiff"):
        shutil.copy(qcanet_dir / "labels" / "8_cell_stage.tif", tmp_path / name)
        (layer,) = viewer.open(str(tmp_path / name), plugin="napari-segtune")
        assert type(layer).__name__ == "Labels", name
    # an intensity image named like a mask is still an image when it is not integer
    tifffile.imwrite(tmp_path / "float_mask.tif", truth.astype(np.float32))
    (layer,) = viewer.open(str(tmp_path / "float_mask.tif"), plugin="napari-segtune")
    assert type(layer).__name__ == "Image"


def test_segtune_labels_open_as_labels_with_their_pixel_sizes(
    make_napari_viewer, qcanet_dir: Path, tmp_path: Path
) -> None:
    truth = tifffile.imread(qcanet_dir / "labels" / "8_cell_stage.tif")
    path = write_labels(tmp_path / "embryo.ome.tif", truth, (1.0, 0.8, 0.8))  # no label-like name: the metadata tells
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-segtune")
    assert type(layer).__name__ == "Labels"
    np.testing.assert_allclose(layer.scale, (1.0, 0.8, 0.8))
    np.testing.assert_array_equal(layer.data, truth)


def test_axis_labels_reach_the_viewer(make_napari_viewer, czi_dir: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(czi_dir / "CD_s_1_t_3_c_2_z_5.czi"), plugin="napari-segtune")
    assert all(layer.axis_labels == ("t", "z", "y", "x") for layer in layers)
    assert tuple(viewer.dims.axis_labels) == ("t", "z", "y", "x")


def test_plain_tif_labels_saved_by_the_plugin_keep_pixel_sizes_and_integers(
    make_napari_viewer, qcanet_dir: Path, tmp_path: Path
) -> None:
    truth = tifffile.imread(qcanet_dir / "labels" / "8_cell_stage.tif").astype(np.int32)  # napari's own label dtype
    viewer = make_napari_viewer()
    layer = viewer.add_labels(truth, scale=(1.0, 0.8, 0.8))
    out = tmp_path / "corrected.tif"
    assert layer.save(str(out), plugin="napari-segtune") == [str(out)]
    assert open_image(out).physical_pixel_sizes == (pytest.approx(1.0), pytest.approx(0.8), pytest.approx(0.8))
    saved = read_labels(out)
    assert saved.dtype.kind == "u"
    np.testing.assert_array_equal(saved, truth)
    (again,) = viewer.open(str(out), plugin="napari-segtune")  # and it opens as labels again
    assert type(again).__name__ == "Labels"
    np.testing.assert_allclose(again.scale, (1.0, 0.8, 0.8))


def test_labels_saved_by_napari_own_writer_open_as_labels(make_napari_viewer, qcanet_dir: Path, tmp_path: Path) -> None:
    truth = tifffile.imread(qcanet_dir / "labels" / "8_cell_stage.tif")
    viewer = make_napari_viewer()
    layer = viewer.add_labels(truth.astype(np.int32))
    (written,) = layer.save(str(tmp_path / "corrected.tif"), plugin="napari")  # int32, no pixel sizes
    (again,) = viewer.open(written, plugin="napari-segtune")
    assert type(again).__name__ == "Labels"
    np.testing.assert_array_equal(again.data, truth)


def test_any_integer_image_opens_as_labels_when_asked(make_napari_viewer, qcanet_dir: Path) -> None:
    viewer = make_napari_viewer()
    (layer,) = viewer.open(
        str(qcanet_dir / "images" / "8_cell_stage.tif"), plugin="napari-segtune", layer_type="labels"
    )
    assert type(layer).__name__ == "Labels"  # napari's layer_type option, through segtune's reader
    assert layer.data.shape == (51, 120, 122)
