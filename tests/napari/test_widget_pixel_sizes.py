"""Fine-tune and Evaluate with a mask from another tool, opened without pixel sizes: it takes
the image's pixel size and says so; a real mismatch is refused in plain numbers."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from tests.napari.conftest import wait_for
from tests.napari.test_widget_predict import new_tiny_model

pytestmark = pytest.mark.gui

PIXEL = 0.65  # um, written into the image file


@pytest.fixture
def real_pair(nuclei_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real NIH3T3 image saved as an LZW OME-TIFF with its pixel size, and its hand-drawn mask
    as the data set ships it (a PNG in a labels folder: no pixel size)."""
    image = iio.imread(nuclei_dir / "images" / "0.png")[:160, :192]
    mask = iio.imread(nuclei_dir / "labels" / "0.png")[:160, :192]
    image_path = tmp_path / "nuclei.ome.tif"
    tifffile.imwrite(
        image_path,
        image,
        ome=True,
        compression="lzw",
        metadata={"axes": "YX", "PhysicalSizeX": PIXEL, "PhysicalSizeY": PIXEL},
    )
    (tmp_path / "labels").mkdir()
    mask_path = tmp_path / "labels" / "nuclei.png"
    iio.imwrite(mask_path, mask)
    return image_path, mask_path


def infos() -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records if n.severity == NotificationSeverity.INFO]


def test_finetune_adopts_the_image_pixel_size_for_a_mask_without_one(widget, real_pair, errors) -> None:
    viewer = widget.viewer
    (image,) = viewer.open(str(real_pair[0]), plugin="napari-segtune")
    (mask,) = viewer.open(str(real_pair[1]), plugin="napari-segtune")
    assert type(mask).__name__ == "Labels" and tuple(mask.scale) == (1.0, 1.0)
    new_tiny_model(widget)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(mask)
    images, labels, _, _, _ = panel.training_data()
    assert np.asarray(labels[0]).shape == np.asarray(images[0]).shape == (160, 192)
    np.testing.assert_allclose(mask.scale, (PIXEL, PIXEL))
    said = [m for m in infos() if "nuclei.png" in m and "pixel size" in m]
    assert said and "0.65 x 0.65" in said[-1] and "float64" not in said[-1]
    assert errors() == []


def test_finetune_refuses_a_real_mismatch_in_plain_numbers(widget, real_pair, errors) -> None:
    viewer = widget.viewer
    (image,) = viewer.open(str(real_pair[0]), plugin="napari-segtune")
    (mask,) = viewer.open(str(real_pair[1]), plugin="napari-segtune")
    mask.scale = (0.5, 0.5)  # a pixel size of its own that differs from the image's
    new_tiny_model(widget)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(mask)
    panel.run_button.click()
    assert panel.job is None
    message = errors()[-1]
    assert "0.5 x 0.5" in message and "0.65 x 0.65" in message
    assert "np." not in message and "float64" not in message


def test_evaluate_gives_a_mask_without_pixel_size_the_other_layers(widget, qtbot, real_pair, errors) -> None:
    viewer = widget.viewer
    (truth,) = viewer.open(str(real_pair[1]), plugin="napari-segtune")
    pred = viewer.add_labels((np.asarray(truth.data) > 0).astype(np.uint8), name="pred", scale=(PIXEL, PIXEL))
    panel = widget.evaluate_panel
    panel.pred_layer.set_layer(pred)
    panel.truth_layer.set_layer(truth)
    panel.evaluate_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    np.testing.assert_allclose(truth.scale, (PIXEL, PIXEL))
    assert any("nuclei.png" in m and "0.65 x 0.65" in m for m in infos())
    assert errors() == []
