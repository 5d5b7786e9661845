"""Shortcuts bound on the viewer (and listed in the widget), object/plane navigation, and the
Predict tab's own progress bar with time left beside Cancel."""

from __future__ import annotations

import numpy as np
import pytest
from app_model.types import KeyBinding

from segtune._napari._shortcuts import SHORTCUTS
from tests.napari.conftest import wait_for
from tests.napari.test_widget_predict import new_tiny_model

pytestmark = pytest.mark.gui


def key(widget, name: str) -> None:
    """Press ``name`` as napari would: the function bound in the viewer's keymap, called with the viewer."""
    widget.viewer.keymap[KeyBinding.from_str(name)](widget.viewer)


def test_shortcuts_are_bound_and_listed(widget) -> None:
    for name, _ in SHORTCUTS:
        assert KeyBinding.from_str(name) in widget.viewer.keymap
        assert name in widget.help.text()


def test_next_previous_object_and_accept_plane_by_keys(widget, qtbot, errors) -> None:
    viewer = widget.viewer
    stack = np.zeros((3, 30, 30), np.uint16)
    stack[0, 2:6, 2:6] = 4
    stack[2, 20:26, 10:16] = 9
    layer = viewer.add_labels(stack, name="stack", scale=(2.0, 0.5, 0.5))
    panel = widget.correct_panel
    panel.labels_layer.set_layer(layer)
    key(widget, "Shift-N")
    assert layer.selected_label == 4 and viewer.dims.current_step[0] == 0
    key(widget, "Shift-N")
    assert layer.selected_label == 9 and viewer.dims.current_step[0] == 2
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (22.5 * 0.5, 12.5 * 0.5))
    assert "selected object 9 on this plane: 36 px = 9.0 µm²" in panel.count_label.text()
    panel.scope.setCurrentText("whole stack")
    qtbot.waitUntil(lambda: "selected object 9: 36 voxels = 18.0 µm³" in panel.count_label.text(), timeout=2000)
    panel.scope.setCurrentText("this plane")
    key(widget, "Shift-N")  # wraps around
    assert layer.selected_label == 4
    key(widget, "Shift-B")
    assert layer.selected_label == 9

    viewer.dims.set_current_step(0, 0)
    key(widget, "Shift-D")
    assert viewer.dims.current_step[0] == 1 and layer.metadata["segtune_accepted_planes"] == [0]
    key(widget, "Shift-D")
    assert viewer.dims.current_step[0] == 2 and layer.metadata["segtune_accepted_planes"] == [0, 1]
    assert errors() == []


def test_predict_by_key_shows_tiles_and_time_left_beside_cancel(widget, qtbot, errors) -> None:
    viewer = widget.viewer
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random((4, 256, 256)).astype(np.float32), name="noise stack")
    new_tiny_model(widget)
    panel = widget.predict_panel
    panel.tile.setValue(64)
    seen: list[str] = []
    key(widget, "Shift-R")
    job = panel.job
    assert job is not None and job.running
    assert panel.cancel_button.isEnabled() and panel.progress.isAncestorOf(panel.cancel_button)
    job.on_events = (lambda original: lambda events: (original(events), seen.append(panel.progress.text.text())))(
        job.on_events
    )
    assert wait_for(qtbot, job, timeout=180_000) == "done"
    assert any("tiles" in text and "left" in text for text in seen), seen
    assert panel.progress.bar.value() == panel.progress.bar.maximum() > 0
    assert panel.progress.text.text().startswith("took")

    # a shortcut that cannot run now says why, as a notification
    widget.state.set_busy("fine-tuning")
    key(widget, "Shift-R")
    widget.state.set_busy("")
    assert any("busy" in message for message in errors())


def test_a_job_that_ends_while_its_last_progress_is_shown_ends_with_its_final_text(qtbot) -> None:
    """Updating napari's activity bar processes Qt events, so a worker's result can arrive (and the
    job finish) while the job is still showing its last batch of progress; the widget's row must
    then read what the finish wrote ("took ..."), not the last step ("..., about 0 s left"), which
    a late update once left there (seen as a flaky failure of the test above)."""
    from segtune._napari._jobs import Job
    from segtune._napari._progress import ProgressRow
    from segtune.core.progress import ProgressEvent

    row = ProgressRow()
    qtbot.addWidget(row)
    row.start()
    job = Job(lambda **_: None, description="labelling", on_events=lambda batch: row.show_event(batch[-1]))
    job.on_finally = row.finish

    class ActivityBar:  # napari's bar, whose update lets the worker's result in (as processEvents does)
        total, n, desc = 0, 0, ""

        def update(self, steps: int) -> None:
            job._returned(("done", None))

        def set_description(self, text: str) -> None:
            self.desc = text

        def close(self) -> None:
            pass

    job._bar = ActivityBar()
    job._events.put(ProgressEvent("predict", 2, 3, "labelling planes"))
    job._events.put(ProgressEvent("predict", 3, 3, "labelling planes"))
    job._drain()
    assert job.status == "done"
    assert row.text.text().startswith("took"), row.text.text()
