"""The Correct tab in a real viewer: cleanup buttons, click tools through the layer's mouse callbacks,
napari's undo, plane vs stack, and object counts as the masks change."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from napari.utils._proxies import ReadOnlyWrapper  # what napari's own mouse-binding tests use
from napari.utils.interactions import mouse_press_callbacks

pytestmark = pytest.mark.gui


def press(viewer, layer, data_position) -> None:
    """A left click at ``data_position`` of ``layer``, through the layer's real mouse callbacks."""
    world = layer.data_to_world(data_position)
    event = SimpleNamespace(
        type="mouse_press",
        is_dragging=False,
        modifiers=[],
        position=tuple(world),
        button=1,
        view_direction=None,
        dims_displayed=list(viewer.dims.displayed),
        dims_point=None,
        handled=False,
    )
    mouse_press_callbacks(layer, ReadOnlyWrapper(event, exceptions=("handled",)))


def pair_image() -> np.ndarray:
    labels = np.zeros((40, 60), np.uint16)
    yy, xx = np.mgrid[:40, :60]
    labels[(np.hypot(yy - 20, xx - 20) <= 7) | (np.hypot(yy - 20, xx - 31) <= 7)] = 1  # a merged pair
    labels[5:8, 50:53] = 2  # a false object
    labels[28:38, 44:54] = 3
    labels[32:34, 48:50] = 0  # with a hole
    return labels


def test_correct_buttons_and_clicks_are_undoable_and_counted(widget, errors) -> None:
    viewer = widget.viewer
    layer = viewer.add_labels(pair_image(), name="masks", scale=(0.5, 0.5))
    panel = widget.correct_panel
    assert panel.labels_layer.layer is layer or panel.labels_layer.layer.name == "masks"
    assert panel.count == 3 and "<b>3</b> objects" in panel.count_label.text()
    assert panel.min_size.suffix() == " µm²" and panel.min_size.value() == 7.5  # 30 px of 0.25 µm²

    panel.set_tool("split")
    assert layer.mode == "pan_zoom"
    press(viewer, layer, (20, 20))
    assert panel.count == 4 and layer.data[20, 16] != layer.data[20, 35]
    assert "<b>4</b> objects" in panel.count_label.text()

    panel.set_tool("delete")
    press(viewer, layer, (6, 51))
    assert panel.count == 3 and not np.any(layer.data == 2)

    panel.set_tool("pick")
    press(viewer, layer, (30, 45))
    assert layer.selected_label == 3
    assert "selected object 3: 96 px = 24.0 µm²" in panel.count_label.text()

    panel.fill_button.click()
    assert layer.data[32, 48] == 3 and panel.count == 3

    # one Ctrl-Z per action, newest first
    layer.undo()
    assert layer.data[32, 48] == 0
    layer.undo()
    assert np.count_nonzero(layer.data == 2) == 9
    layer.undo()
    np.testing.assert_array_equal(layer.data, pair_image())
    layer.redo()
    assert len(np.unique(layer.data)) == 5

    panel.set_tool("merge")
    a, b = int(layer.data[20, 16]), int(layer.data[20, 35])
    press(viewer, layer, (20, 16))
    press(viewer, layer, (20, 35))
    assert layer.data[20, 35] == a != b and panel.count == 3

    # clicks on the background do nothing; the paint tool gets its clicks back
    before = layer.data.copy()
    panel.set_tool("delete")
    press(viewer, layer, (0, 0))
    np.testing.assert_array_equal(layer.data, before)
    assert "background" in panel.status.text()
    panel.set_tool("")
    press(viewer, layer, (20, 16))
    np.testing.assert_array_equal(layer.data, before)
    assert errors() == []


def test_correct_on_one_plane_or_the_whole_stack(widget, errors) -> None:
    viewer = widget.viewer
    stack = np.zeros((3, 20, 20), np.uint8)
    stack[:, 0:4, 0:4] = 1  # touches the image edge on every plane
    stack[:, 8:12, 8:12] = 2
    layer = viewer.add_labels(stack.copy(), name="stack")  # the layer edits its array in place
    panel = widget.correct_panel
    panel.labels_layer.set_layer(layer)
    viewer.dims.set_current_step(0, 1)
    panel.scope.setCurrentText("this plane")
    panel.border_button.click()
    assert not np.any(layer.data[1] == 1) and np.all(layer.data[[0, 2], 0:4, 0:4] == 1)
    panel.min_size.setValue(20)  # 16 px per plane: removed on this plane only
    panel.remove_small_button.click()
    assert layer.data[1].max() == 0 and layer.data[0].max() == 2
    layer.undo()
    layer.undo()
    np.testing.assert_array_equal(layer.data, stack)

    # every plane as a 2D image: the edge object goes from all planes in one undo step
    panel.scope.setCurrentText("each plane (2D)")
    assert panel.min_size.suffix() == " px"
    panel.border_button.click()
    assert not np.any(layer.data == 1) and np.all(layer.data[:, 8:12, 8:12] == 2)
    layer.undo()
    np.testing.assert_array_equal(layer.data, stack)

    panel.scope.setCurrentText("whole stack")
    assert panel.min_size.suffix() == " voxels"
    panel.min_size.setValue(40)  # each object is 48 voxels in 3D: both stay
    panel.remove_small_button.click()
    np.testing.assert_array_equal(layer.data, stack)
    panel.radius.setValue(1)
    panel.dilate_button.click()
    assert np.count_nonzero(layer.data == 2) > np.count_nonzero(stack == 2)
    layer.undo()
    panel.erode_button.click()
    assert np.count_nonzero(layer.data == 2) < np.count_nonzero(stack == 2)
    layer.undo()
    panel.relabel_button.click()
    np.testing.assert_array_equal(layer.data, stack)  # already 1..n
    assert "nothing to change" in panel.status.text()
    assert errors() == []


def test_split_all_on_each_plane_numbers_new_pieces_across_the_stack(widget, errors) -> None:
    stack = np.stack([pair_image(), pair_image()])  # the square's hole does not split it
    layer = widget.viewer.add_labels(stack.copy(), name="pairs")
    panel = widget.correct_panel
    panel.labels_layer.set_layer(layer)
    panel.scope.setCurrentText("each plane (2D)")
    panel.split_all_button.click()
    # each plane's pair split in two; the new pieces of plane 0 and plane 1 have different ids
    assert [len(np.unique(plane)) - 1 for plane in layer.data] == [4, 4]
    assert layer.data[0, 20, 35] != layer.data[1, 20, 35] and min(layer.data[0, 20, 35], layer.data[1, 20, 35]) > 3
    layer.undo()
    np.testing.assert_array_equal(layer.data, stack)
    assert errors() == []
