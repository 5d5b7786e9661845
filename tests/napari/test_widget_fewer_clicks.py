"""Fewer clicks: the bundled model shown is the one in use, a fine-tuned model has its own name,
long layer names stay readable, technical words sit in tooltips."""

from __future__ import annotations

import numpy as np
import pytest

from segtune._napari._finetune_panel import finetuned_name
from segtune._napari._layers import elide

pytestmark = pytest.mark.gui


def test_the_bundled_model_shown_is_in_use(widget, errors) -> None:
    panel = widget.model_panel
    assert widget.state.name == panel.bundled.currentText() and not widget.state.unsaved
    panel.bundled.setCurrentIndex(1)
    assert widget.state.name == panel.bundled.itemText(1)
    assert widget.predict_panel.size_row.model_label.text().startswith(("Model trained at", "The model records no"))
    # a changed (unsaved) model is not dropped by browsing the list
    widget.state.set_model(
        widget.state.model, {**widget.state.config, "name": "mine"}, source="fine-tuned (x)", folder=None, unsaved=True
    )
    panel.bundled.setCurrentIndex(0)
    assert widget.state.name == "mine"
    panel.load_bundled_button.click()  # unless asked
    assert widget.state.name == panel.bundled.itemText(0)
    assert errors() == []


def test_fine_tuned_names_long_layer_names_and_plain_words(widget) -> None:
    assert finetuned_name("nuclei-2d") == "nuclei-2d-fine-tuned" == finetuned_name("nuclei-2d-fine-tuned")
    long_name = "NIH3T3 nuclei from the confocal 2024-11-03 position 17.tif [nuclei-2d]"
    layer = widget.viewer.add_labels(np.zeros((8, 8), np.uint8), name=long_name)
    choice = widget.finetune_panel.labels_layer
    assert choice.layer.name == layer.name
    shown = choice.itemText(choice.currentIndex())
    assert (
        shown == elide(long_name) and len(shown) == 40 and shown.startswith("NIH3T3") and shown.endswith("[nuclei-2d]")
    )
    assert choice.itemData(choice.currentIndex(), 3) == long_name  # the full name as the item's tooltip

    finetune = widget.finetune_panel
    assert finetune.loss.currentText() == "pixels and overlap" and finetune.loss.currentData() == "bce+dice"
    assert "bce+dice" in finetune.loss.toolTip()
    assert "encoder" not in finetune.freeze_encoder.text() and "freeze encoder" in finetune.freeze_encoder.toolTip()
