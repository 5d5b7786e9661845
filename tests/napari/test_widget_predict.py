"""The Predict tab in a real viewer: layers of the right shape, scale and content; plane-only; cancel; errors."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from segtune._resources import sample_file
from segtune.core.io import open_image
from segtune.core.predict import ObjectOptions, predict
from tests.napari.conftest import wait_for

pytestmark = pytest.mark.gui

SCALE_2D = (0.325, 0.325)


def new_tiny_model(widget, dims: str = "2D") -> None:
    panel = widget.model_panel
    panel.new_dims.setCurrentText(dims)
    panel.new_size.setCurrentText("tiny (quick experiments)")
    panel.new_button.click()
    assert widget.state.model is not None


def test_predict_adds_labels_of_the_image_shape_and_scale(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei", scale=SCALE_2D)
    new_tiny_model(widget)
    panel = widget.predict_panel
    panel.image_layer.set_layer(image)
    panel.probability_check.setChecked(True)
    panel.threshold.setValue(0.4)
    panel.min_size.setValue(3)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"

    probability, labels = panel.last_layers
    assert isinstance(labels, Labels) and labels.name == viewer.layers[-1].name
    assert labels.data.shape == image.data.shape
    np.testing.assert_allclose(labels.scale, SCALE_2D)
    assert "nuclei" in labels.name and widget.state.name in labels.name
    assert viewer.layers.selection.active.name == labels.name  # ready to correct
    # exactly what the core gives for the same model and settings
    expected = predict(
        widget.state.model,
        sample_2d["image"],
        config=widget.state.config,
        axes="YX",
        threshold=0.4,
        instances=True,
        objects=ObjectOptions(min_size=3),
        device="cpu",
    )
    np.testing.assert_array_equal(labels.data, expected.labels[0, 0])
    assert probability.data.shape == image.data.shape
    assert 0.0 <= probability.data.min() and probability.data.max() <= 1.0
    assert errors() == []


def test_predict_visible_plane_of_a_stack_is_placed_on_that_plane(widget, qtbot, errors) -> None:
    viewer = widget.viewer
    stack = np.asarray(open_image(sample_file("nuclei_3d.tif")).data[0, 0, :5, :64, :64])
    scale = (0.65, 0.325, 0.325)
    image = viewer.add_image(stack, name="stack", scale=scale)
    new_tiny_model(widget)
    viewer.dims.set_current_step(0, 3)
    panel = widget.predict_panel
    panel.image_layer.set_layer(image)
    panel.scope.setCurrentText("visible plane (quick look)")
    panel.output.setCurrentText("mask")
    panel.min_size.setValue(0)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (labels,) = panel.last_layers
    assert labels.data.shape == (1, 64, 64)
    np.testing.assert_allclose(labels.scale, scale)
    np.testing.assert_allclose(labels.translate, (3 * 0.65, 0, 0))
    expected = predict(widget.state.model, stack[3], config=widget.state.config, axes="YX", device="cpu")
    np.testing.assert_array_equal(labels.data[0], expected.labels[0, 0])

    # the whole stack, plane by plane with the 2D model
    panel.scope.setCurrentText("whole image / stack")
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (labels,) = panel.last_layers
    assert labels.data.shape == stack.shape
    # (normalised over the whole stack now, so plane 3 may differ slightly from the plane-only run)
    whole = predict(widget.state.model, stack, config=widget.state.config, axes="ZYX", device="cpu")
    np.testing.assert_array_equal(labels.data, whole.labels[0])
    assert errors() == []


def test_predict_can_be_cancelled_and_adds_nothing(widget, qtbot, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(np.random.default_rng(0).random((6, 256, 256), dtype=np.float32), name="big")
    new_tiny_model(widget)
    panel = widget.predict_panel
    panel.image_layer.set_layer(image)
    panel.tile.setValue(64)  # many tiles: time to press Cancel
    panel.run_button.click()
    assert widget.busy and panel.cancel_button.isEnabled()
    panel.cancel_button.click()
    assert wait_for(qtbot, panel.job) == "cancelled"
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert not widget.busy and not panel.cancel_button.isEnabled() and panel.run_button.isEnabled()
    assert errors() == []


def test_predict_errors_are_plain_notifications(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    panel = widget.predict_panel
    widget.state.set_model(None, {}, source="", folder=None, unsaved=False)  # as with no bundled model installed
    panel.run_button.click()
    assert "Choose a model first" in errors()[-1]

    new_tiny_model(widget, dims="3D")
    image = viewer.add_image(sample_2d["image"], name="flat")
    panel.image_layer.set_layer(image)
    panel.run_button.click()
    assert "3D model" in errors()[-1] and "stack" in errors()[-1]
    assert panel.job is None and not widget.busy


def test_large_image_shows_the_visible_part_first_then_the_whole(widget, qtbot, errors) -> None:
    """Zoomed in on a large image, Predict shows the visible part within one job (a locked
    layer), then fills in the whole image in the same layer and unlocks it for correcting."""
    from segtune._napari._predict_panel import FIRST_LOOK_MARGIN, visible_box
    from segtune.core.predict import whole_image_settings
    from segtune.core.synthetic import synthetic_nuclei

    viewer = widget.viewer
    image_data = synthetic_nuclei((1024, 1024), diameter=40, seed=3).image
    image = viewer.add_image(image_data, name="large")
    model_panel = widget.model_panel
    model_panel.bundled.setCurrentIndex(model_panel.bundled.findText("nuclei-2d"))
    model_panel.load_bundled_button.click()
    assert widget.state.name.startswith("nuclei-2d")
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (300.0, 420.0)
    camera.zoom = 4.0
    (y0, y1), (x0, x1) = visible_box(viewer, image, FIRST_LOOK_MARGIN)
    assert 0 < (y1 - y0) * (x1 - x0) < 1024 * 1024 / 2
    panel = widget.predict_panel
    panel.first_look_min_pixels = 512 * 512
    panel.image_layer.set_layer(image)
    panel.run_button.click()
    first_job = panel.first_look_job
    assert first_job is not None and panel.job is first_job

    seen = {}

    def capture(status: str) -> None:  # the moment the first look is shown
        (layer,) = [layer for layer in viewer.layers if layer.name != "large"]
        seen.update(status=status, data=np.array(layer.data), editable=layer.editable, whole_running=panel.job.running)

    first_job.finished.connect(capture)
    assert wait_for(qtbot, first_job) == "done"
    assert seen["status"] == "done" and not seen["editable"] and seen["whole_running"]
    first = seen["data"]
    outside = np.ones(first.shape, bool)
    outside[max(0, y0) : y1, max(0, x0) : x1] = False
    assert first.max() > 0 and not first[outside].any()

    assert wait_for(qtbot, panel.job, timeout=180_000) == "done"
    (labels,) = panel.last_layers
    assert [layer.name for layer in viewer.layers] == ["large", labels.name] and labels.editable
    config, diameter = whole_image_settings(widget.state.model, image_data, config=widget.state.config, axes="YX")
    expected = predict(
        widget.state.model,
        image_data,
        config=config,
        diameter=diameter,
        axes="YX",
        threshold=0.5,
        instances=True,
        objects=ObjectOptions(min_size="auto"),
        device="cpu",
    )
    np.testing.assert_array_equal(labels.data, expected.labels[0, 0])
    inner = (
        slice(max(0, y0) + FIRST_LOOK_MARGIN, y1 - FIRST_LOOK_MARGIN),
        slice(max(0, x0) + FIRST_LOOK_MARGIN, x1 - FIRST_LOOK_MARGIN),
    )
    a, b = first[inner] > 0, labels.data[inner] > 0
    assert (a & b).sum() / max(1, (a | b).sum()) > 0.95  # the first look is the whole's result there
    assert errors() == []


def test_smallest_object_defaults_to_the_rule_the_command_line_uses(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei", scale=SCALE_2D)
    new_tiny_model(widget)
    panel = widget.predict_panel
    assert panel.min_size.text() == "auto"  # as `segtune predict --min-size auto`, its default
    panel.image_layer.set_layer(image)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (labels,) = panel.last_layers
    expected = predict(
        widget.state.model,
        sample_2d["image"],
        config=widget.state.config,
        axes="YX",
        instances=True,
        objects=ObjectOptions(min_size="auto"),
        device="cpu",
    )
    np.testing.assert_array_equal(labels.data, expected.labels[0, 0])
    assert errors() == []


def test_a_plane_too_large_for_memory_goes_block_by_block_into_an_editable_layer(widget, qtbot, errors) -> None:
    """Planes over the panel's limit (4096 x 4096 by default; lowered here to reach it with a
    small image) are predicted block by block into a zarr array on disk that the new Labels layer
    shows and the brush edits; the objects are those of core's block-by-block prediction."""
    import zarr

    from segtune.core.predict.blockwise import predict_into
    from segtune.core.synthetic import synthetic_nuclei

    viewer = widget.viewer
    image_data = synthetic_nuclei((1100, 1000), diameter=18, seed=5).image
    image = viewer.add_image(image_data, name="slide")
    model_panel = widget.model_panel
    model_panel.bundled.setCurrentIndex(model_panel.bundled.findText("nuclei-2d"))
    model_panel.load_bundled_button.click()
    panel = widget.predict_panel
    panel.blockwise_above = 1000 * 1000
    panel.image_layer.set_layer(image)
    panel.run_button.click()
    assert panel.first_look_job is None  # no whole-size provisional layer for a large plane
    assert wait_for(qtbot, panel.job, timeout=180_000) == "done"
    (labels,) = panel.last_layers
    assert isinstance(labels.data, zarr.Array) and labels.data.shape == image_data.shape
    assert labels.editable and labels.scale.tolist() == image.scale.tolist()
    expected = np.zeros(image_data.shape, np.uint32)
    count, _, _ = predict_into(
        widget.state.model,
        image_data,
        expected,
        config=widget.state.config,
        axes="YX",
        instances=True,
        objects=ObjectOptions(min_size="auto"),
        device="cpu",
    )
    np.testing.assert_array_equal(labels.data[:], expected)
    assert count > 100 and f"{count} objects" in panel.status.text() and "block by block" in panel.status.text()
    labels.brush_size = 3
    labels.paint((10, 10), 7)  # the brush writes into the array on disk
    assert int(zarr.open_array(labels.data.store)[10, 10]) == 7
    assert errors() == []


def test_a_colour_layer_is_read_as_grey_by_a_one_channel_model(widget, qtbot, shared_data, errors) -> None:
    """An RGB layer (stained tissue) with the one-channel nuclei-he-2d: the Channel boxes of
    Predict and Fine-tune offer the grey mean of the colours first (what the model trained on) and
    pick it; whole-image and block-by-block prediction give the core's labels of the grey image,
    and fine-tuning learns from that grey image."""
    import imageio.v3 as iio

    from segtune._napari._panels import GREY_TEXT
    from segtune.core.predict.blockwise import predict_into

    rgb = iio.imread(shared_data / "nuclei_dsb2018" / "images" / "0e21d7b3eea8cdbb.png")[..., :3]
    grey = np.mean(rgb, axis=-1, dtype=np.float32)
    viewer = widget.viewer
    image = viewer.add_image(rgb, name="tissue", rgb=True)
    model_panel = widget.model_panel
    model_panel.bundled.setCurrentIndex(model_panel.bundled.findText("nuclei-he-2d"))
    model_panel.load_bundled_button.click()
    assert widget.state.name.startswith("nuclei-he-2d")
    panel = widget.predict_panel
    panel.image_layer.set_layer(image)
    channels = [panel.channel.itemText(i) for i in range(panel.channel.count())]
    assert channels == [GREY_TEXT, "red", "green", "blue"] and panel.channel.currentText() == GREY_TEXT

    model = (widget.state.model, widget.state.config)
    options = {"instances": True, "objects": ObjectOptions(min_size="auto"), "device": "cpu"}
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (labels,) = panel.last_layers
    expected = predict(model, grey, axes="YX", **options).labels[0, 0]
    assert expected.max() > 10
    np.testing.assert_array_equal(labels.data, expected)

    panel.blockwise_above = 100 * 100
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (blockwise,) = panel.last_layers
    want = np.zeros(grey.shape, np.uint32)
    predict_into(model[0], grey, want, config=model[1], axes="YX", **options)
    np.testing.assert_array_equal(blockwise.data[:], want)

    panel.channel.setCurrentText("red")  # a colour of its own is still there to choose
    panel.blockwise_above = None
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    (red,) = panel.last_layers
    np.testing.assert_array_equal(red.data, predict(model, rgb[..., 0], axes="YX", **options).labels[0, 0])
    assert not np.array_equal(red.data, expected)

    finetune = widget.finetune_panel
    finetune.image_layer.set_layer(image)
    finetune.labels_layer.set_layer(labels)
    assert finetune.channel.currentText() == GREY_TEXT
    images, _, _, _, _ = finetune.training_data()
    np.testing.assert_array_equal(images[0], grey)
    assert errors() == []
