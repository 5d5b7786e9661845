"""Failures become one plain-language napari notification; the viewer keeps working."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtune._napari._jobs import plain_message
from segtune._napari._state import UserError
from segtune.core.files import OutputError
from segtune.core.io import ImageReadError
from tests.napari.conftest import wait_for

pytestmark = pytest.mark.gui


@pytest.mark.parametrize(
    "error, words",
    [
        (MemoryError(), "Not enough memory"),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "Not enough memory"),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: out of memory"),
            "smaller tile",
        ),
        (UserError("Choose a model first."), "Choose a model first."),
        (FileExistsError("x.tif already exists"), "X.tif already exists"),
        (ImageReadError("cells.czi", "the file is truncated"), "cells.czi"),
        (
            OutputError("out/cells_labels.tif", "the disk is full"),
            "Cannot write out/cells_labels.tif: the disk is full",
        ),
        (KeyError("boom"), "The viewer is fine"),
    ],
)
def test_plain_messages(error: BaseException, words: str) -> None:
    assert words in plain_message(error)


def test_a_two_channel_model_needs_the_channel_axis(widget, qtbot, errors) -> None:
    viewer = widget.viewer
    image = viewer.add_image(np.zeros((2, 32, 32), np.float32), name="two channels")
    panel = widget.model_panel
    panel.new_channels.setValue(2)
    panel.new_size.setCurrentText("tiny (quick experiments)")
    panel.new_button.click()
    predict = widget.predict_panel
    predict.image_layer.set_layer(image)
    predict.run_button.click()  # a 2-channel model on a one-channel image: refused before starting
    assert "2 channels" in errors()[-1] and predict.job is None
    predict.channel_axis.setChecked(True)  # now the first axis is the 2 channels: it runs
    predict.run_button.click()
    assert wait_for(qtbot, predict.job) == "done"
    assert predict.last_layers[-1].data.shape == (32, 32)
    assert not widget.busy and predict.run_button.isEnabled()


def test_a_job_failing_in_the_worker_notifies_and_frees_the_widget(widget, qtbot, errors) -> None:
    """Empty masks: the trainer refuses inside the worker thread; napari shows why and stays usable."""
    viewer = widget.viewer
    image = viewer.add_image(np.random.default_rng(0).random((64, 64), dtype=np.float32), name="cells")
    empty = viewer.add_labels(np.zeros((64, 64), np.uint8), name="nothing drawn yet")
    widget.model_panel.new_size.setCurrentText("tiny (quick experiments)")
    widget.model_panel.new_button.click()
    model = widget.state.model
    panel = widget.finetune_panel
    panel.image_layer.set_layer(image)
    panel.labels_layer.set_layer(empty)
    panel.epochs.setValue(1)
    panel.run_button.click()
    assert wait_for(qtbot, panel.job) == "error"
    (message,) = errors()
    assert "labels are empty" in message and "Traceback" not in message
    assert widget.state.model is model and not widget.busy
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert "failed" in panel.epoch_label.text()
