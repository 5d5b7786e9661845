"""Fixtures for the widget tests: a viewer with the segtune dock widget, small sample crops."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from segtune._resources import sample_file
from segtune.core.io import open_image, read_labels

CROP = (slice(96, 224), slice(160, 288))  # 128 x 128 pixels with a dozen nuclei


@pytest.fixture(scope="session")
def sample_2d() -> dict[str, Any]:
    """A 128 x 128 crop of the 2D sample image, its true labels, and its pixel sizes."""
    image = open_image(sample_file("nuclei_2d.tif"))
    data = np.asarray(image.data[0, 0, 0].compute())[CROP]
    labels = read_labels(sample_file("nuclei_2d_labels.tif"))[CROP]
    return {"image": data, "labels": labels, "pixel_sizes": tuple(image.physical_pixel_sizes)}


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    """The segtune widget docked from the Plugins menu (as napari makes it: through the manifest, with
    the proxy viewer napari gives plugins), in a viewer with no layers yet."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtune", "segtune")
    yield widget
    # a test that failed halfway may leave a job running: stop it before the viewer closes
    for panel in (
        getattr(widget, name, None) for name in ("predict_panel", "finetune_panel", "tools_panel", "evaluate_panel")
    ):
        job = getattr(panel, "job", None)
        if job is not None and job.running:
            job.cancel()
            qtbot.waitUntil(lambda job=job: not job.running, timeout=60_000)


@pytest.fixture
def errors():
    """The napari error notifications shown during the test (their messages)."""
    from napari.utils.notifications import NotificationSeverity, notification_manager

    start = len(notification_manager.records)

    def messages() -> list[str]:
        return [
            str(n.message) for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR
        ]

    return messages


def wait_for(qtbot, job, timeout: int = 60_000) -> str:
    """Wait until a widget job finished; returns its status."""
    assert job is not None, "the button started no job (see the error notifications)"
    if job.running:
        with qtbot.waitSignal(job.finished, timeout=timeout):
            pass
    return job.status
