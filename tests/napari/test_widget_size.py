"""The Predict tab's object size: estimate, measure a drawn object, units, and its effect on prediction."""

from __future__ import annotations

import numpy as np
import pytest

from segtune._resources import sample_file
from segtune.core.diameter import labels_diameter
from segtune.core.io import open_image, read_labels
from tests.napari.conftest import wait_for

pytestmark = pytest.mark.gui


def test_estimate_measure_units_and_model_size(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei", scale=(0.5, 0.5))
    widget.model_panel.load_bundled("nuclei-2d")
    size = widget.predict_panel.size_row
    trained = widget.state.config["object_diameter"]
    assert size.model_label.text() == f"Model trained at {trained:.0f} px (here {trained * 0.5:.1f} µm)."
    assert size.diameter_px() == "auto" and size.diameter.text() == "auto"

    # estimate on the whole sample image: near its true labels' median diameter
    whole = viewer.add_image(
        np.asarray(open_image(sample_file("nuclei_2d.tif")).data[0, 0, 0]), name="whole", scale=(0.5, 0.5)
    )
    widget.predict_panel.image_layer.set_layer(whole)
    size.estimate_button.click()
    assert wait_for(qtbot, size.job) == "done"
    truth = labels_diameter(read_labels(sample_file("nuclei_2d_labels.tif")))
    assert abs(size.diameter.value() - truth) / truth < 0.1, (size.diameter.value(), truth)
    widget.predict_panel.image_layer.set_layer(image)

    # measure an ellipse drawn around one object (20 x 30 px), then a line across one (12 px)
    shapes = viewer.add_shapes(scale=(0.5, 0.5), name="drawn")
    shapes.add_ellipses(np.array([[10, 10], [10, 40], [30, 40], [30, 10]]))  # its bounding box
    viewer.layers.selection.active = shapes
    size.measure_button.click()
    assert size.diameter.value() == pytest.approx(np.sqrt(20 * 30), abs=0.05)
    size.unit.setCurrentText("µm")
    assert size.diameter.value() == pytest.approx(np.sqrt(20 * 30) * 0.5, abs=0.05)
    assert size.diameter_px() == pytest.approx(np.sqrt(20 * 30), abs=0.1)
    shapes.add_lines(np.array([[50, 50], [50, 62]]))
    size.measure_button.click()
    assert size.diameter.value() == pytest.approx(6.0, abs=0.05)  # 12 px of 0.5 um
    size.unit.setCurrentText("px")
    assert size.diameter.value() == pytest.approx(12.0, abs=0.1)

    # measure a selected label
    disc = (np.hypot(*np.mgrid[-64:64, -64:64]) <= 8).astype(np.uint8) * 5
    labels = viewer.add_labels(disc, scale=(0.5, 0.5))
    labels.selected_label = 5
    viewer.layers.selection.active = labels
    size.measure_button.click()
    assert size.diameter.value() == pytest.approx(labels_diameter(disc), abs=0.05)

    # nothing to measure: a plain message
    viewer.layers.selection.active = image
    size.measure_button.click()
    assert any("Select a Shapes layer" in message for message in errors())


def test_a_model_of_dark_nuclei_estimates_on_the_inverted_plane(widget, qtbot) -> None:
    # the sample's fluorescent nuclei made dark on a bright background, as in brightfield
    bright = np.asarray(open_image(sample_file("nuclei_2d.tif")).data[0, 0, 0], dtype=np.float32)
    widget.viewer.add_image(bright.max() - bright, name="dark")
    widget.model_panel.load_bundled("nuclei-he-2d")
    size = widget.predict_panel.size_row
    size.estimate_button.click()
    assert wait_for(qtbot, size.job) == "done"
    truth = labels_diameter(read_labels(sample_file("nuclei_2d_labels.tif")))
    assert abs(size.diameter.value() - truth) / truth < 0.1, (size.diameter.value(), truth)


def test_the_diameter_reaches_the_prediction(widget, qtbot, sample_2d) -> None:
    viewer = widget.viewer
    viewer.add_image(sample_2d["image"], name="nuclei")
    widget.model_panel.load_bundled("nuclei-2d")
    panel = widget.predict_panel
    panel.run_button.click()
    assert wait_for(qtbot, panel.job, timeout=120_000) == "done"
    auto = np.array(panel.last_layers[-1].data)
    panel.size_row.diameter.setValue(widget.state.config["object_diameter"] * 3)  # objects said to be 3x larger
    panel.run_button.click()
    assert wait_for(qtbot, panel.job, timeout=120_000) == "done"
    zoomed = panel.last_layers[-1].data
    assert zoomed.shape == auto.shape
    assert not np.array_equal(zoomed > 0, auto > 0)  # the image was zoomed for the diameter given: other masks
