"""The Fine-tune tab in a real viewer: it changes the model, is cancellable, and handles 2D, 2D-on-3D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtune._resources import sample_file
from segtune.core.io import open_image, read_labels
from tests.napari.conftest import wait_for
from tests.napari.test_widget_predict import new_tiny_model

pytestmark = pytest.mark.gui

SCALE_2D = (0.325, 0.325)


def quick_settings(panel, epochs: int = 2, patch: int = 64) -> None:
    panel.epochs.setValue(epochs)
    panel.patch.setValue(patch)
    panel.batch_size.setValue(2)
    panel.steps_per_epoch.setValue(3)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model) -> bool:
    after = model.state_dict()
    return any(not torch.equal(before[k], after[k].cpu()) for k in before)


@pytest.fixture
def stack_3d() -> tuple[np.ndarray, np.ndarray]:
    image = np.asarray(open_image(sample_file("nuclei_3d.tif")).data[0, 0, :6, :96, :96])
    labels = read_labels(sample_file("nuclei_3d_labels.tif"))[:6, :96, :96]
    return image, labels


def test_finetune_2d_changes_the_model_shows_the_curve_and_repredicts(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei", scale=SCALE_2D)
    corrected = viewer.add_labels(sample_2d["labels"], name="corrected", scale=SCALE_2D)
    new_tiny_model(widget)
    start = widget.state.model
    before = weights(start)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    quick_settings(panel)
    panel.repredict_check.setChecked(True)
    with qtbot.waitSignal(widget.predict_panel.finished, timeout=120_000):  # the re-prediction ends it all
        panel.run_button.click()
    assert panel.job.status == "done"
    result = panel.result
    assert result.stop_reason == "completed" and len(result.history) == 2
    model = widget.state.model
    assert model is not start and changed(before, model)
    assert not changed(before, start)  # the starting model itself was left alone
    assert widget.state.unsaved and widget.state.source.startswith("fine-tuned")
    assert "changed since" in widget.model_panel.info.text() or "in memory only" in widget.model_panel.info.text()
    # the live curve received every step and every epoch
    assert len(panel.curve.steps) == 6 and len(panel.curve.val_loss) == 2
    assert "2 epoch" in panel.epoch_label.text()
    # re-predicted with the fine-tuned model
    (labels,) = widget.predict_panel.last_layers
    assert "fine-tuned" in labels.name and labels.data.shape == image.data.shape
    assert errors() == []


def test_finetune_cancel_keeps_the_best_model_so_far(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei")
    corrected = viewer.add_labels(sample_2d["labels"], name="corrected")
    new_tiny_model(widget)
    before = weights(widget.state.model)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    quick_settings(panel, epochs=200)
    panel.repredict_check.setChecked(False)
    panel.run_button.click()
    assert panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: len(panel.curve.val_loss) >= 1, timeout=120_000)  # one epoch validated
    panel.cancel_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    result = panel.result
    assert result.stop_reason == "cancelled" and 1 <= len(result.history) < 200
    assert result.best_epoch is not None
    assert changed(before, widget.state.model)
    assert "Cancelled: kept the best model" in panel.status.text()
    assert panel.run_button.isEnabled() and not widget.busy
    assert errors() == []


def test_finetune_2d_model_on_a_stack_uses_only_trusted_planes_and_rectangle(widget, qtbot, stack_3d, errors) -> None:
    image_data, labels_data = stack_3d
    viewer = widget.viewer
    scale = (0.65, 0.325, 0.325)
    image = viewer.add_image(image_data, name="stack", scale=scale)
    corrected = viewer.add_labels(labels_data, name="corrected", scale=scale)
    rectangle = np.array([[2, 10, 20], [2, 10, 80], [2, 70, 80], [2, 70, 20]], dtype=float)
    shapes = viewer.add_shapes([rectangle], shape_type="rectangle", name="corrected area", scale=scale)
    new_tiny_model(widget)
    before = weights(widget.state.model)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    panel.shapes_layer.set_layer(shapes)
    panel.region.setCurrentText("a range of planes")
    panel.plane_from.setValue(1)
    panel.plane_to.setValue(3)

    images, labels, masks, _, _ = panel.training_data()
    (image_part,), (labels_part,), (mask,) = images, labels, masks
    # planes 1..3, rows 10..70 and columns 20..80 (pixel centres inside the rectangle)
    np.testing.assert_array_equal(np.asarray(labels_part), labels_data[1:4, 10:71, 20:81])
    np.testing.assert_array_equal(np.asarray(image_part), image_data[1:4, 10:71, 20:81])
    assert mask.shape == labels_part.shape and mask.all()

    quick_settings(panel, epochs=1, patch=48)
    panel.repredict_check.setChecked(False)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job, timeout=120_000) == "done"
    assert panel.result.stop_reason == "completed" and changed(before, widget.state.model)
    assert errors() == []


def test_finetune_3d_model_on_a_stack(widget, qtbot, stack_3d, errors) -> None:
    image_data, labels_data = stack_3d
    viewer = widget.viewer
    image = viewer.add_image(image_data[:, :48, :48], name="stack")
    corrected = viewer.add_labels(labels_data[:, :48, :48], name="corrected")
    new_tiny_model(widget, dims="3D")
    before = weights(widget.state.model)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    quick_settings(panel, epochs=1, patch=32)
    panel.repredict_check.setChecked(False)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job, timeout=120_000) == "done"
    assert panel.result.stop_reason == "completed" and changed(before, widget.state.model)
    assert widget.state.spatial_dims == 3

    # a 3D model cannot learn from one plane: said in plain words
    panel.region.setCurrentText("this plane only")
    panel.run_button.click()
    assert "3D model" in errors()[-1]


def test_finetune_on_mismatched_layers_is_a_plain_notification(widget, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(np.zeros((64, 64), np.float32), name="small")
    corrected = viewer.add_labels(np.zeros((80, 64), np.uint8), name="too tall")
    new_tiny_model(widget)
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    panel.run_button.click()
    assert panel.job is None
    assert "beyond" in errors()[-1] and "too tall" in errors()[-1]


def test_finetune_reports_the_held_out_score_before_and_after(widget, qtbot, sample_2d, errors) -> None:
    """Predict, fine-tune on the corrected layer, predict again: the status shows the core's
    held-out scores of the starting and the trained model, and training raised it."""
    from segtune.core.train.trainer import held_out_summary

    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"][:192, :192], name="nuclei", scale=SCALE_2D)
    corrected = viewer.add_labels(sample_2d["labels"][:192, :192], name="corrected", scale=SCALE_2D)
    new_tiny_model(widget)
    with qtbot.waitSignal(widget.predict_panel.finished, timeout=120_000):
        widget.predict_panel.image_layer.set_layer(image)
        widget.predict_panel.run_button.click()
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(corrected)
    quick_settings(panel, epochs=10, patch=64)
    panel.steps_per_epoch.setValue(8)
    panel.batch_size.setValue(4)
    with qtbot.waitSignal(widget.predict_panel.finished, timeout=240_000):
        panel.run_button.click()
    result = panel.result
    before, after = result.baseline_metrics["val_matched_f1"], result.best_metrics["val_matched_f1"]
    assert result.baseline_metrics["val_objects"] == result.best_metrics["val_objects"] > 0
    assert after > before
    text = panel.status.text()
    assert held_out_summary(result) in text and f"{before:.3f} -> {after:.3f}" in text
    assert "not trained on" in text
    assert errors() == []
