"""The whole correction loop in a real viewer on real nuclei, by the widget's buttons and clicks:
predict, split a merged pair, delete a false object, fill holes, undo, fine-tune; counts at each step."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.core import labels as lab
from segtune.core.io import open_image
from segtune.core.postprocess import label_components
from tests.napari.conftest import wait_for
from tests.napari.test_widget_correct import press

pytestmark = pytest.mark.gui


def nearest_pair(labels: np.ndarray) -> tuple[int, int, np.ndarray, tuple[int, int], tuple[int, int]]:
    """Two neighbouring objects, the background pixels that would bridge them (as a weaker model
    joins touching nuclei), and a pixel deep inside each (their distance-transform peaks)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import expand_labels

    grown = expand_labels(labels, 3)
    contact = (grown[:, :-1] != grown[:, 1:]) & (grown[:, :-1] > 0) & (grown[:, 1:] > 0)
    rows, cols = np.nonzero(contact)
    a, b = int(grown[rows[0], cols[0]]), int(grown[rows[0], cols[0] + 1])
    line = np.zeros(labels.shape, bool)
    line[rows[0], cols[0]] = True
    bridge = ndi.binary_dilation(line, iterations=4) & np.isin(grown, [a, b]) & (labels == 0)
    inside = []
    for index in (a, b):
        distance = ndi.distance_transform_edt(labels == index)
        inside.append(tuple(int(v) for v in np.unravel_index(np.argmax(distance), labels.shape)))
    return a, b, bridge, inside[0], inside[1]


def test_predict_correct_undo_finetune_on_real_nuclei(widget, qtbot, nuclei_dir, errors) -> None:
    viewer = widget.viewer
    image_data = np.asarray(open_image(nuclei_dir / "images" / "26.png").data[0, 0, 0])[:512, :512]
    image = viewer.add_image(image_data, name="NIH3T3 nuclei 26.png")
    widget.model_panel.load_bundled("nuclei-2d")

    # predict
    predict = widget.predict_panel
    predict.image_layer.set_layer(image)
    predict.run_button.click()
    assert wait_for(qtbot, predict.job, timeout=180_000) == "done"
    (layer,) = predict.last_layers
    panel = widget.correct_panel
    assert panel.labels_layer.layer.name == layer.name  # the new layer is the one to correct
    predicted = np.array(layer.data, copy=True)
    count = lab.object_count(predicted)
    assert count >= 10 and panel.count == count
    assert f"<b>{count}</b> objects" in panel.count_label.text()

    # a merged pair (two neighbours joined into one object, as a weaker model gives them) split in one click
    a, b, bridge, inside_a, inside_b = nearest_pair(predicted)
    panel.set_tool("merge")
    press(viewer, layer, inside_a)
    press(viewer, layer, inside_b)
    assert panel.count == count - 1 and layer.data[inside_b] == a
    with layer.block_history():  # the bridge, painted as with the brush
        layer.data_setitem(np.nonzero(bridge), a)
    assert label_components(layer.data == a, connectivity=2).max() == 1  # now one connected object
    panel.set_tool("split")
    press(viewer, layer, inside_a)
    assert panel.count == count
    pieces = layer.data[inside_a], layer.data[inside_b]
    assert pieces[0] != pieces[1]
    for original, piece in ((a, pieces[0]), (b, pieces[1])):  # the cut follows the true border
        mine, theirs = predicted == original, (layer.data == piece) & ~bridge
        assert (mine & theirs).sum() / (mine | theirs).sum() > 0.8

    # delete a false object (the smallest speck) with a click
    sizes = lab.object_sizes(layer.data)
    speck = min(sizes, key=sizes.get)
    where = tuple(int(v[0]) for v in np.nonzero(layer.data == speck))
    panel.set_tool("delete")
    press(viewer, layer, where)
    assert panel.count == count - 1 and not np.any(layer.data == speck)

    # fill holes: punch one into the largest nucleus as a stray eraser stroke would, then fill
    sizes = lab.object_sizes(layer.data)
    big = max(sizes, key=sizes.get)
    hole = tuple(
        int(v)
        for v in np.argwhere(lab.erode(layer.data, 3) == big)[len(np.argwhere(lab.erode(layer.data, 3) == big)) // 2]
    )
    with layer.block_history():
        layer.data_setitem(tuple(np.array([c - 1, c, c + 1]) for c in hole), 0)
    assert layer.data[hole] == 0
    before_fill = np.array(layer.data, copy=True)
    panel.fill_button.click()
    assert layer.data[hole] == big and panel.count == count - 1

    # undo (napari's own history): the fill, the punched hole, the delete; then redo all three
    layer.undo()
    np.testing.assert_array_equal(layer.data, before_fill)
    layer.undo()
    layer.undo()
    assert panel.count == count and np.any(layer.data == speck)
    qtbot.waitUntil(lambda: f"<b>{count}</b>" in panel.count_label.text(), timeout=2000)  # the label follows undo
    for _ in range(3):
        layer.redo()
    assert panel.count == count - 1 and layer.data[hole] == big
    corrected = np.array(layer.data, copy=True)

    # fine-tune one short epoch on the corrected masks; the new model's prediction comes back
    finetune = widget.finetune_panel
    finetune.image_layer.set_layer(image)
    finetune.labels_layer.set_layer(layer)
    finetune.epochs.setValue(1)
    finetune.patch.setValue(128)
    finetune.batch_size.setValue(2)
    finetune.steps_per_epoch.setValue(2)
    finetune.val_fraction.setValue(0.0)
    finetune.repredict_check.setChecked(True)
    with qtbot.waitSignal(predict.finished, timeout=600_000):
        finetune.run_button.click()
    assert finetune.job.status == "done" and finetune.result.stop_reason == "completed"
    assert widget.state.source.startswith("fine-tuned") and widget.state.name == "nuclei-2d-fine-tuned"
    (repredicted,) = predict.last_layers
    assert "fine-tuned" in repredicted.name
    np.testing.assert_array_equal(layer.data, corrected)  # the corrected masks are untouched
    assert panel.labels_layer.layer.name == repredicted.name
    assert panel.count == lab.object_count(repredicted.data) > 0
    assert errors() == []
