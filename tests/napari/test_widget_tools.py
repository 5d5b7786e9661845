"""The Tools tab in a real viewer: auto-labels, pseudo-labels (then fine-tuning that ignores unsure pixels),
pretraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtune.core.autolabel import autolabel_image
from segtune.core.metrics import evaluate
from segtune.core.train.pseudolabel import model_probabilities, pseudo_labels
from tests.napari.conftest import wait_for
from tests.napari.test_widget_finetune import changed, quick_settings, weights
from tests.napari.test_widget_predict import new_tiny_model

pytestmark = pytest.mark.gui


def test_autolabels_are_the_core_mask_numbered(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="hoechst", scale=(0.325, 0.325))
    panel = widget.tools_panel
    panel.image_layer.set_layer(image)
    panel.autolabel_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    layer = panel.last_layer
    assert layer.name == "hoechst [auto-labels]" and layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, (0.325, 0.325))
    np.testing.assert_array_equal(layer.data > 0, autolabel_image(sample_2d["image"]))
    assert layer.data.max() > 1  # objects are numbered
    # on these bright synthetic nuclei the recipe finds most of them
    assert evaluate(layer.data, sample_2d["labels"])["object"]["recall"] > 0.7
    assert errors() == []


def test_pseudolabels_then_finetune_ignores_unsure_pixels(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="nuclei")
    new_tiny_model(widget)
    panel = widget.tools_panel
    panel.image_layer.set_layer(image)
    panel.confidence.setValue(0.6)
    panel.pseudolabel_button.click()
    assert wait_for(qtbot, panel.job) == "done"
    layer = panel.last_layer
    state = widget.state
    expected = pseudo_labels(
        model_probabilities(state.model, state.config, sample_2d["image"], device="cpu"),
        state.config["head"],
        threshold=0.6,
    )
    np.testing.assert_array_equal(layer.data, expected)
    assert layer.metadata["segtune_ignore_value"] == 255

    # an untrained model is unsure almost everywhere: give the layer some confident foreground
    layer.data = np.where(sample_2d["labels"] > 0, 1, layer.data).astype(np.uint8)
    finetune = widget.finetune_panel
    finetune.image_layer.set_layer(image)
    finetune.labels_layer.set_layer(layer)
    quick_settings(finetune, epochs=1)
    finetune.repredict_check.setChecked(False)
    finetune.run_button.click()
    assert wait_for(qtbot, finetune.job) == "done"
    assert finetune.result.config["training"]["settings"]["ignore_value"] == 255
    assert errors() == []


def test_restoration_pretraining_replaces_the_model_and_keeps_its_shape(widget, qtbot, sample_2d, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(sample_2d["image"], name="unlabelled")
    new_tiny_model(widget)
    start = widget.state.model
    before = weights(start)
    panel = widget.tools_panel
    panel.image_layer.set_layer(image)
    panel.pretrain_epochs.setValue(1)
    panel.pretrain_patch.setValue(64)
    panel.pretrain_button.click()
    assert widget.busy
    assert wait_for(qtbot, panel.job, timeout=180_000) == "done"
    model = widget.state.model
    assert model is not start and not changed(before, start)
    assert model.architecture["base_channels"] == start.architecture["base_channels"]
    assert model.architecture["out_channels"] == 3  # a segmentation model again, ready to fine-tune
    assert widget.state.source.startswith("pretrained on unlabelled") and widget.state.unsaved
    # the encoder learned from the image: its weights differ from the untrained model's
    encoder_before = [p for k, p in before.items() if k.startswith("encoder")]
    encoder_after = [p for k, p in model.state_dict().items() if k.startswith("encoder")]
    assert any(not torch.equal(a, b) for a, b in zip(encoder_before, encoder_after, strict=True))
    assert not widget.busy
    assert errors() == []
