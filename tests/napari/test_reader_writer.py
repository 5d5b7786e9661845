"""The plugin's reader, writer and sample data in a real napari viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segtune._napari._reader import get_reader
from segtune.core.io import ImageReadError, open_image, read_labels

pytestmark = pytest.mark.gui

CZI_LAYERS = {
    # file: (number of layers, layer shape, scale)
    "CD_s_1_t_3_c_2_z_5.czi": (2, (3, 5, 170, 240), (1.0, 0.32, 0.0906, 0.0906)),
    "s_1_t_1_c_1_z_1.czi": (1, (325, 475), (1.0833, 1.0833)),
    "mosaic_test.czi": (1, (624, 1756), (1.0833, 1.0833)),
    # RGB-8bit.czi opens as one RGB layer: see test_reader_real_files.py
}


@pytest.mark.parametrize("name", sorted(CZI_LAYERS))
def test_shared_czi_opens_through_the_plugin(make_napari_viewer, czi_dir: Path, name: str) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(str(czi_dir / name), plugin="napari-segtune")
    count, shape, scale = CZI_LAYERS[name]
    assert len(layers) == count
    image = open_image(czi_dir / name)
    for layer, channel in zip(layers, image.channel_names, strict=True):
        assert layer.data.shape == shape
        np.testing.assert_allclose(layer.scale, scale, rtol=1e-3)
        assert channel in layer.name
    assert layers[-1].data[(0,) * (len(shape) - 2)].shape == shape[-2:]


def test_reader_declines_other_files_and_raises_named_error_on_corrupt(
    czi_dir: Path, tmp_path: Path, make_napari_viewer
) -> None:
    assert get_reader(str(tmp_path / "notes.txt")) is None
    data = (czi_dir / "CD_s_1_t_3_c_2_z_5.czi").read_bytes()
    broken = tmp_path / "broken.czi"
    broken.write_bytes(data[: len(data) // 2])
    reader = get_reader(str(broken))
    with pytest.raises(ImageReadError, match="broken.czi"):
        reader(str(broken))
    viewer = make_napari_viewer()
    with pytest.raises(Exception, match="broken.czi"):  # napari wraps it and shows the message
        viewer.open(str(broken), plugin="napari-segtune")
    assert len(viewer.layers) == 0


def test_sample_data_and_labels_writer_round_trip(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample("napari-segtune", "nuclei_3d")
    image, labels = viewer.layers
    assert image.data.shape == labels.data.shape == (24, 192, 192)
    np.testing.assert_allclose(labels.scale, (0.65, 0.325, 0.325))
    out = tmp_path / "corrected.ome.tif"
    written = labels.save(str(out), plugin="napari-segtune")
    assert Path(written[0]) == out
    np.testing.assert_array_equal(read_labels(out), labels.data)
    assert open_image(out).physical_pixel_sizes == (pytest.approx(0.65), pytest.approx(0.325), pytest.approx(0.325))


def test_czi_sample_screenshot_shows_the_image(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-segtune", "nuclei_czi")
    assert [layer.name.split("[")[-1] for layer in viewer.layers] == ["Hoechst]", "CellMask]"]
    viewer.reset_view()
    shot = viewer.screenshot(str(tmp_path / "czi.png"), canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # the canvas rendered the nuclei, not a blank


def test_ome_zarr_with_segtune_labels_opens_as_image_and_labels(make_napari_viewer, tmp_path: Path) -> None:
    import zarr
    from ome_zarr.writer import write_image

    from segtune.core.omezarr import write_ome_zarr_labels

    image = np.random.default_rng(0).integers(0, 1000, (64, 80), dtype=np.uint16)
    path = tmp_path / "cells.ome.zarr"
    write_image(
        image,
        zarr.open_group(str(path), mode="w"),
        axes="yx",
        scale={"y": 0.5, "x": 0.25},
        axes_units={"y": "micrometer", "x": "micrometer"},
        scale_factors=(2,),
    )
    labels = (image > 500).astype(np.uint8)
    write_ome_zarr_labels(path, labels, axes="yx", pixel_sizes=(None, 0.5, 0.25), name="segtune")
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-segtune")
    assert [layer._type_string for layer in layers] == ["image", "labels"]
    assert layers[1].name == "segtune"
    np.testing.assert_allclose(layers[1].scale, layers[0].scale)
    np.testing.assert_allclose(layers[1].scale, (0.5, 0.25))
    np.testing.assert_array_equal(np.asarray(layers[1].data), labels)
    alone = write_ome_zarr_labels(tmp_path / "mask_labels.ome.zarr", labels, axes="yx", pixel_sizes=(None, 0.5, 0.25))
    (only,) = viewer.open(str(alone), plugin="napari-segtune")
    assert only._type_string == "labels"
    np.testing.assert_allclose(only.scale, (0.5, 0.25))
