"""Screenshots of the segtune widget for the README (docs/screenshot*.png).

Opens the 2D sample in a real napari viewer, docks the plugin's widget, loads a model (a bundled
one if installed; else ``--model FOLDER``; else one trained for ``--minutes`` on the sample's
left half through ``segtune.core``, as ``segtune demo`` does), clicks Predict and saves the
window. ``--scene correct`` then opens the Correct tab, splits a merged pair by a click and
picks an object; ``--scene progress`` saves the window while a prediction is still running.
Needs a display: without one it re-runs itself under ``xvfb-run``.

    python scripts/screenshot.py [--scene predict|correct|progress] [--model FOLDER] [--out PNG] [--minutes 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# idle OpenMP threads sleep instead of spinning (on a busy machine spinning made training steps 5x slower)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def trained_model(folder: Path, minutes: float) -> Path:
    """A model trained briefly on the sample's left half (no bundled model installed)."""
    import numpy as np

    from segtune._resources import sample_file
    from segtune.core.io import open_image, read_labels
    from segtune.core.models.store import save_model
    from segtune.core.train.trainer import TrainConfig, train

    image = np.asarray(open_image(sample_file("nuclei_2d.tif")).data[0, 0, 0])
    labels = read_labels(sample_file("nuclei_2d_labels.tif"))
    half = image.shape[1] // 2
    settings = TrainConfig(
        spatial_dims=2,
        head="binary",
        epochs=1000,
        max_minutes=minutes,
        patch=128,
        batch_size=4,
        depth=3,
        base_channels=16,
        patience=None,
    )
    result = train([image[:, :half]], [labels[:, :half]], settings, names=["nuclei_2d.tif left half"])
    return save_model(result.model, {**result.config, "name": "nuclei_demo"}, folder)


def _close_notifications(app) -> None:
    """Hide napari's pop-up notifications (deprecation notes and the like) so they do not cover the image."""
    for widget in app.allWidgets():
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()


def _settle(app, rounds: int = 20) -> None:
    _close_notifications(app)
    for _ in range(rounds):
        app.processEvents()
        time.sleep(0.02)


def _save(viewer, app, out: Path) -> int:
    _settle(app)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    viewer.close()
    return 0


def _correct_scene(viewer, widget, app, labels, out: Path) -> int:
    """The Correct tab after one click split a pair of nuclei the model had merged into one object."""
    import numpy as np
    from scipy import ndimage as ndi

    from segtune.core import labels as lab

    panel = widget.correct_panel
    widget.tabs.setCurrentIndex(2)  # Correct
    data = np.asarray(labels.data)
    sizes = lab.object_sizes(data)
    merged = next(
        (
            i
            for i in sorted(sizes, key=sizes.get, reverse=True)
            if lab.object_count(lab.split_object(data, i)) > lab.object_count(data)
        ),
        None,
    )
    if merged is None:
        sys.exit("no object of the prediction splits at its distance peaks: nothing to show")
    inside = np.unravel_index(np.argmax(ndi.distance_transform_edt(data == merged)), data.shape)
    panel.set_tool("split")
    panel.click(labels, inside)  # the status line now says what the click changed
    labels.opacity = 0.7
    viewer.layers.selection.active = labels
    viewer.reset_view()
    _settle(app)
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(labels.data_to_world(inside))
    camera.zoom = camera.zoom * 3
    return _save(viewer, app, out)


def _progress_scene(viewer, widget, app, out: Path) -> int:
    """The Predict tab while a prediction runs: small tiles so it runs long enough to be seen."""
    panel = widget.predict_panel
    panel.tile.setValue(128)
    panel.run_button.click()
    bar = panel.progress.bar
    while (
        panel.job is not None
        and panel.job.running
        and not ("left" in panel.progress.text.text() and bar.value() >= bar.maximum() // 3)
    ):
        app.processEvents()
        time.sleep(0.01)
    if panel.job is None or not panel.job.running:
        sys.exit("the prediction ended before its progress could be shown")
    viewer.reset_view()
    _close_notifications(app)
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"wrote {out}")
    panel.cancel_button.click()
    while panel.job.running:
        app.processEvents()
        time.sleep(0.02)
    viewer.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", help="model folder or bundled name (default: the first bundled model, else train one)"
    )
    parser.add_argument("--scene", choices=("predict", "correct", "progress"), default="predict")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: docs/screenshot.png, docs/screenshot_SCENE.png"
    )
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget when no model is given or bundled")
    args = parser.parse_args()
    if args.out is None:
        args.out = REPO / "docs" / ("screenshot.png" if args.scene == "predict" else f"screenshot_{args.scene}.png")

    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        if shutil.which("xvfb-run") is None:
            sys.exit("no display and no xvfb-run: install xvfb or run on a desktop")
        return subprocess.call(["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])

    import napari
    from qtpy.QtWidgets import QApplication

    from segtune.core.models.registry import list_models

    viewer = napari.Viewer(title="napari-segtune")
    viewer.window.resize(1500, 900)
    viewer.open_sample("napari-segtune", "nuclei_2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtune", "segtune")
    app = QApplication.instance()

    temporary = None
    if args.model:
        widget.model_panel.load_folder(args.model) if Path(args.model).is_dir() else widget.model_panel.load_bundled(
            args.model
        )
    elif list_models():
        widget.model_panel.load_bundled(list_models()[0].name)
    else:
        temporary = tempfile.TemporaryDirectory(prefix="segtune-screenshot-")
        print(f"no bundled model installed: training one for {args.minutes:g} min on the sample's left half")
        widget.model_panel.load_folder(trained_model(Path(temporary.name) / "nuclei_demo", args.minutes))

    image = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Image))
    truth = next(layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels))
    truth.visible = False
    panel = widget.predict_panel
    panel.image_layer.set_layer(image)
    widget.tabs.setCurrentIndex(1)  # Predict
    if args.scene == "progress":
        return _progress_scene(viewer, widget, app, args.out)
    panel.run_button.click()
    while panel.job is not None and panel.job.running:
        app.processEvents()
        time.sleep(0.02)
    if panel.job.status != "done":
        sys.exit(f"prediction ended with status {panel.job.status}: {panel.job.error}")
    labels = panel.last_layers[-1]
    labels.opacity = 0.6
    if args.scene == "correct":
        return _correct_scene(viewer, widget, app, labels, args.out)

    # a quick evaluation against the sample's true labels, so the table shows numbers too
    widget.evaluate_panel.pred_layer.set_layer(labels)
    widget.evaluate_panel.truth_layer.set_layer(truth)
    widget.evaluate_panel.overlay_check.setChecked(False)
    widget.evaluate_panel.evaluate()
    while widget.evaluate_panel.job.running:
        app.processEvents()
        time.sleep(0.02)
    viewer.reset_view()
    _close_notifications(app)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"wrote {args.out}")
    if temporary is not None:
        temporary.cleanup()
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
