"""Evaluate & Export tab: score a prediction against ground truth; save masks, measurements, ROIs, model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import Job, guarded, notify_info
from segtune._napari._layers import (
    LayerChoice,
    adopt_pixel_size,
    check_same_shape,
    labels_array,
    layer_pixel_sizes,
    safe_name,
)
from segtune._napari._model_panel import ask_overwrite
from segtune._napari._state import ModelState, UserError

# (row title, section, key): what the table shows, in the words of the metrics module; the
# matched scores and the object counts first, where they show without scrolling
METRIC_ROWS: tuple[tuple[str, str, str], ...] = (
    ("Matched: F1 at IoU 0.5", "matched", "f1_at_0.5"),
    ("Matched: AP at IoU 0.5", "matched", "ap_at_0.5"),
    ("Matched: mean IoU", "matched", "mean_iou_matched"),
    ("Objects in truth", "matched", "n_truth"),
    ("Objects predicted", "matched", "n_pred"),
    ("Pixels: precision", "pixel", "precision"),
    ("Pixels: recall", "pixel", "recall"),
    ("Pixels: F1 (Dice)", "pixel", "f1"),
    ("Pixels: IoU", "pixel", "iou"),
    ("Components: precision", "object", "precision"),
    ("Components: recall", "object", "recall"),
    ("Components: F1", "object", "f1"),
)


def format_metric(value: Any) -> str:
    """How a metric appears in the table: ratios with 3 decimals, counts as integers."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    return f"{float(value):.3f}"


def evaluate_labels(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Core metrics of a 2D/3D pair, or of each time point of a 4D pair (means and sums)."""
    from segtune.core.metrics import evaluate, evaluate_many

    if pred.ndim <= 3:
        return evaluate(pred, truth)
    pred = pred.reshape((-1, *pred.shape[-3:]))
    truth = truth.reshape((-1, *truth.shape[-3:]))
    return evaluate_many(list(pred), list(truth))


class EvaluatePanel(QWidget):
    """Score a Labels layer against ground truth, and export results.

    Attributes tests drive: ``pred_layer``, ``truth_layer``, ``overlay_check``, ``overlay_level``,
    ``evaluate_button``, ``summary`` (one line: matched F1 and counts), ``table``, ``results``
    (the core's metrics dict after a run);
    ``export_layer``, ``export_image``, ``export_folder``, ``export_labels_button``,
    ``export_csv_button``, ``export_rois_button``, ``export_model_button``, ``export_bioimageio_button``,
    ``last_exported``
    (paths written by the last export). ``confirm_overwrite(path)`` returns True to replace an
    existing file (a question box by default); ``job`` is the running or last job.
    """

    def __init__(
        self, viewer: Any, state: ModelState, save_model: Callable[..., Path | None], parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self._save_model = save_model
        self.confirm_overwrite: Callable[[Path], bool] = lambda path: ask_overwrite(path, self)
        self.results: dict[str, Any] | None = None
        self.last_exported: list[Path] = []
        self.job: Job | None = None

        layout = QVBoxLayout(self)
        box = QGroupBox("Evaluate a segmentation")
        form = QFormLayout(box)
        self.pred_layer = LayerChoice(viewer, "labels")
        self.pred_layer.setToolTip("The segmentation to score (e.g. the model's prediction).")
        self.truth_layer = LayerChoice(viewer, "labels")
        self.truth_layer.setToolTip("The correct masks to compare with (drawn or corrected by hand).")
        self.overlay_check = QCheckBox("add a colour overlay layer")
        self.overlay_check.setChecked(True)
        self.overlay_check.setToolTip("Green: found correctly; red: found but not in the truth; blue: missed.")
        self.overlay_level = QComboBox()
        self.overlay_level.addItems(["pixel", "object"])
        self.overlay_level.setToolTip("Colour each pixel by itself, or whole objects (found / false / missed).")
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Compare the two Labels layers and show the scores below (1.0 is perfect).")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["measure", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setMinimumHeight(140)
        self.table.setToolTip(
            "Matched: one-to-one pairs of objects overlapping by at least half (IoU 0.5; splits and merges count "
            "as errors); objects are counted as labelled, touching or not. Pixels: overlap of the masks. "
            "Components: connected components; a true one counts as found if any predicted pixel touches it."
        )
        form.addRow("Segmentation", self.pred_layer)
        form.addRow("Ground truth", self.truth_layer)
        form.addRow(self.overlay_check)
        form.addRow("Colour by", self.overlay_level)
        form.addRow(self.evaluate_button)
        form.addRow(self.summary)
        form.addRow(self.table)
        layout.addWidget(box)

        box = QGroupBox("Export")
        form = QFormLayout(box)
        self.export_layer = LayerChoice(viewer, "labels")
        self.export_layer.setToolTip("The masks to save.")
        self.export_image = LayerChoice(viewer, "image", allow_none=True, none_text="(no intensities)")
        self.export_image.setToolTip("Image whose brightness is measured inside each object (optional).")
        folder_row = QHBoxLayout()
        self.export_folder = QLineEdit(str(Path.home() / "segtune-results"))
        self.export_folder.setToolTip("Where the files go. Nothing there is replaced without asking you first.")
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("Choose the folder.")
        folder_row.addWidget(self.export_folder, 1)
        folder_row.addWidget(self.browse_button)
        self.export_labels_button = QPushButton("Masks (OME-TIFF)")
        self.export_labels_button.setToolTip(
            "Save the masks as OME-TIFF with the pixel sizes, for Fiji, QuPath, Python."
        )
        self.export_csv_button = QPushButton("Measurements (CSV)")
        self.export_csv_button.setToolTip("One row per object: position, area or volume, diameter, brightness.")
        self.export_rois_button = QPushButton("ImageJ ROIs (2D)")
        self.export_rois_button.setToolTip(
            "Outlines of each object as a ROI set for Fiji's ROI Manager (2D masks only)."
        )
        self.export_model_button = QPushButton("Model folder")
        self.export_model_button.setToolTip("Save the current model into the folder, to reuse or share it.")
        self.export_bioimageio_button = QPushButton("bioimage.io (.zip)")
        self.export_bioimageio_button.setToolTip(
            "Save the current model as a bioimage.io package (validated) "
            "for deepImageJ, ilastik, QuPath and the model zoo."
        )
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_labels_button)
        buttons.addWidget(self.export_csv_button)
        buttons2 = QHBoxLayout()
        buttons2.addWidget(self.export_rois_button)
        buttons2.addWidget(self.export_model_button)
        buttons2.addWidget(self.export_bioimageio_button)
        form.addRow("Masks", self.export_layer)
        form.addRow("Intensities", self.export_image)
        form.addRow("Folder", folder_row)
        form.addRow(buttons)
        form.addRow(buttons2)
        layout.addWidget(box)
        layout.addStretch(1)

        self.evaluate_button.clicked.connect(guarded(self.evaluate))
        self.browse_button.clicked.connect(guarded(self._browse))
        self.export_labels_button.clicked.connect(guarded(self.export_labels))
        self.export_csv_button.clicked.connect(guarded(self.export_csv))
        self.export_rois_button.clicked.connect(guarded(self.export_rois))
        self.export_model_button.clicked.connect(guarded(self.export_model))
        self.export_bioimageio_button.clicked.connect(guarded(self.export_bioimageio))

    # --- evaluate -----------------------------------------------------------------------------

    def evaluate(self) -> Job:
        """Score the segmentation layer against the ground-truth layer (in a worker thread)."""
        pred_layer = self.pred_layer.require("the segmentation to evaluate")
        truth_layer = self.truth_layer.require("the ground truth")
        if pred_layer is truth_layer:
            raise UserError("Choose two different Labels layers: the segmentation and the ground truth.")
        check_same_shape(pred_layer, truth_layer, "segmentation", "ground truth")
        # a mask opened without pixel sizes lies on the other's pixels: it takes their size
        adopt_pixel_size(truth_layer, pred_layer) or adopt_pixel_size(pred_layer, truth_layer)
        pred, truth = labels_array(pred_layer), labels_array(truth_layer)
        level = self.overlay_level.currentText()
        want_overlay = self.overlay_check.isChecked()

        def work(progress: Any = None, cancel: Any = None) -> tuple[dict[str, Any], np.ndarray | None]:
            from segtune.core.metrics import overlay

            results = evaluate_labels(pred, truth)
            rgb = overlay(pred, truth, level=level) if want_overlay else None
            return results, rgb

        def done(outcome: tuple[dict[str, Any], np.ndarray | None]) -> None:
            results, rgb = outcome
            self.results = results
            self._fill_table(results)
            if rgb is not None:
                # opaque colours where there is something, see-through elsewhere, drawn on top:
                # green, red and blue stay themselves instead of mixing with the labels' colours
                rgba = np.concatenate(
                    [rgb, np.where(rgb.any(axis=-1, keepdims=True), 255, 0).astype(np.uint8)], axis=-1
                )
                name = f"{pred_layer.name} vs {truth_layer.name} ({level})"
                if name in self.viewer.layers:
                    self.viewer.layers[name].data = rgba
                else:
                    self.viewer.add_image(
                        rgba,
                        rgb=True,
                        name=name,
                        scale=pred_layer.scale,
                        translate=pred_layer.translate,
                        units=pred_layer.units,
                        blending="translucent",
                        opacity=0.9,
                    )
                layers = self.viewer.layers
                layers.move(layers.index(layers[name]), len(layers))

        return self._start(work, "Evaluating", done, self.evaluate_button)

    def _fill_table(self, results: dict[str, Any]) -> None:
        matched = results["matched"]
        at_half = matched.get("thresholds", {}).get("0.5", {})
        self.summary.setText(
            f"<b>Matched F1 at IoU 0.5: {format_metric(matched['f1_at_0.5'])}</b> &mdash; "
            f"{at_half.get('tp', 0)} of {matched['n_truth']} true objects matched, "
            f"{at_half.get('fp', 0)} false, {at_half.get('fn', 0)} missed ({matched['n_pred']} predicted)"
        )
        self.table.setRowCount(len(METRIC_ROWS))
        for row, (title, section, key) in enumerate(METRIC_ROWS):
            self.table.setItem(row, 0, QTableWidgetItem(title))
            self.table.setItem(row, 1, QTableWidgetItem(format_metric(results[section][key])))

    def table_values(self) -> dict[str, str]:
        """The table as shown: row title -> text."""
        return {self.table.item(r, 0).text(): self.table.item(r, 1).text() for r in range(self.table.rowCount())}

    # --- export -------------------------------------------------------------------------------

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for the results", self.export_folder.text())
        if folder:
            self.export_folder.setText(folder)

    def _target(self, name: str) -> Path | None:
        """The path to write, or None when it exists and the user said not to replace it."""
        text = self.export_folder.text().strip()
        if not text:
            raise UserError("Choose a folder for the results first.")
        path = Path(text).expanduser() / name
        if path.exists() and not self.confirm_overwrite(path):
            notify_info(f"Kept the existing {path.name}; nothing written.")
            return None
        return path

    def export_labels(self) -> Job | None:
        """Save the chosen masks as OME-TIFF with their pixel sizes."""
        layer = self.export_layer.require("saving masks")
        path = self._target(f"{safe_name(layer.name)}.ome.tif")
        if path is None:
            return None
        labels, sizes = labels_array(layer), layer_pixel_sizes(layer)

        def work(progress: Any = None, cancel: Any = None) -> list[Path]:
            from segtune.core.io import write_labels

            return [write_labels(path, labels, sizes, overwrite=True)]

        return self._start(work, "Saving masks", self._exported, self.export_labels_button)

    def export_csv(self) -> Job | None:
        """Save per-object measurements (with intensities of the chosen image) as CSV."""
        layer = self.export_layer.require("measuring objects")
        image_layer = self.export_image.layer
        image = None
        names = None
        if image_layer is not None:
            if image_layer.rgb:
                raise UserError(
                    f"'{image_layer.name}' is an RGB image; choose a single-channel image to measure brightness."
                )
            check_same_shape(layer, image_layer, "masks", "intensity image")
            image = image_layer.data
            names = [image_layer.name]
        path = self._target(f"{safe_name(layer.name)}_measurements.csv")
        if path is None:
            return None
        labels, sizes = labels_array(layer), layer_pixel_sizes(layer)

        def work(progress: Any = None, cancel: Any = None) -> list[Path]:
            from segtune.core.measure import measure, save_table

            table = measure(labels, image=image, pixel_sizes=sizes, channel_names=names)
            return [save_table(table, path, overwrite=True)]

        return self._start(work, "Measuring objects", self._exported, self.export_csv_button)

    def export_rois(self) -> Job | None:
        """Save the outlines of a 2D mask as an ImageJ ROI set (.zip)."""
        layer = self.export_layer.require("saving ImageJ ROIs")
        if layer.ndim != 2:
            raise UserError(
                f"ImageJ ROIs are made from 2D masks; '{layer.name}' has {layer.ndim} dimensions. "
                "Save the masks as OME-TIFF instead."
            )
        path = self._target(f"{safe_name(layer.name)}_rois.zip")
        if path is None:
            return None
        labels = labels_array(layer)

        def work(progress: Any = None, cancel: Any = None) -> list[Path]:
            from segtune.core.rois import write_imagej_rois

            return [write_imagej_rois(path, labels, overwrite=True)]

        return self._start(work, "Saving ROIs", self._exported, self.export_rois_button)

    def export_model(self) -> Path | None:
        """Save the current model as a folder inside the results folder."""
        self.state.require_model()
        text = self.export_folder.text().strip()
        if not text:
            raise UserError("Choose a folder for the results first.")
        written = self._save_model(Path(text).expanduser() / safe_name(self.state.name), confirm=self.confirm_overwrite)
        self.last_exported = [written] if written is not None else []
        return written

    def export_bioimageio(self) -> Job | None:
        """Save the current model as a bioimage.io package (``<model>.bioimageio.zip``) in the results folder."""
        self.state.require_model()
        path = self._target(f"{safe_name(self.state.name)}.bioimageio.zip")
        if path is None:
            return None
        model, config = self.state.model, dict(self.state.config)
        folder = self.state.folder if not self.state.unsaved else None

        def work(progress: Any = None, cancel: Any = None) -> list[Path]:
            import tempfile

            from segtune.core.models.bioimageio import export_bioimageio
            from segtune.core.models.store import save_model

            if folder is not None:
                return [export_bioimageio(folder, path, overwrite=True)]
            with tempfile.TemporaryDirectory(prefix="segtune-export-") as tmp:
                saved = save_model(model, config, Path(tmp) / safe_name(self.state.name))
                return [export_bioimageio(saved, path, overwrite=True)]

        return self._start(work, "Writing the bioimage.io package", self._exported, self.export_bioimageio_button)

    def _exported(self, paths: list[Path]) -> None:
        self.last_exported = list(paths)
        notify_info("Saved " + ", ".join(str(p) for p in paths))

    # --- jobs ---------------------------------------------------------------------------------

    def _start(
        self, work: Callable[..., Any], description: str, done: Callable[[Any], None], button: QPushButton
    ) -> Job:
        if self.job is not None and self.job.running:
            raise UserError(f"{self.job.description} is still running; wait for it to finish.")
        button.setEnabled(False)
        self.job = Job(
            work, description=description, on_done=done, on_finally=lambda: button.setEnabled(True), parent=self
        )
        return self.job.start()
