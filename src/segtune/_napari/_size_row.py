"""The Predict tab's object size: a diameter (pixels or micrometres), estimated from the image or
measured on one object the user draws, shown beside the size the model was trained at.

The model sees the image zoomed so that objects have the diameter it was trained at
(``object_diameter`` in its config; see :mod:`segtune.core.diameter`). "auto" lets the core
estimate the diameter when the model asks for it; a number fixes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import Job, guarded
from segtune._napari._layers import current_position, kind_of, layer_pixel_sizes
from segtune._napari._state import ModelState, UserError

MICRONS = "µm"


def drawn_diameter(shapes: Any, image: Any) -> float:
    """The diameter in ``image`` pixels of the last shape in ``shapes``: a line's length, or the
    equivalent-circle diameter of an ellipse, rectangle or polygon."""
    if len(shapes.data) == 0:
        raise UserError(f"'{shapes.name}' is empty: draw an ellipse around one object (or a line across it).")
    vertices, kind = shapes.data[-1], shapes.shape_type[-1]
    points = np.array([image.world_to_data(shapes.data_to_world(v)) for v in vertices])[:, -2:]
    if kind in ("line", "path"):
        return float(np.sum(np.hypot(*np.diff(points, axis=0).T)))
    if kind == "ellipse":  # napari keeps an ellipse as the 4 corners of its bounding box
        height, width = np.ptp(points, axis=0)
        return float(np.sqrt(height * width))
    y, x = points[:, 0], points[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    return float(2 * np.sqrt(area / np.pi))


class ObjectSizeRow(QWidget):
    """``[auto] [px|µm]`` over ``[Estimate] [Measure drawn]`` over ``Model trained at 20 px``.

    Attributes tests drive: ``diameter`` (0 means auto), ``unit``, ``estimate_button``,
    ``measure_button``, ``model_label``; ``job`` is the last estimate.
    """

    def __init__(self, viewer: Any, state: ModelState, image_choice: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self.image_choice = image_choice
        self.job: Job | None = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(0.0, 100000.0)
        self.diameter.setDecimals(2)
        self.diameter.setSpecialValueText("auto")
        self.diameter.setToolTip(
            "Typical object diameter. The image is zoomed so objects come out the size the model was "
            "trained at (the 'diameter' rescaling); auto estimates it when the model asks for that."
        )
        self.unit = QComboBox()
        self.unit.addItems(["px", MICRONS])
        self.unit.setToolTip("Pixels, or micrometres when the image has a pixel size.")
        self.estimate_button = QPushButton("Estimate")
        self.estimate_button.setToolTip("Estimate the diameter of the bright objects on the plane on screen.")
        self.measure_button = QPushButton("Measure drawn")
        self.measure_button.setToolTip(
            "Measure one object you outlined: select a Shapes layer with an ellipse or polygon around it "
            "(or a line across it), or a Labels layer with the object selected, then press this."
        )
        row.addWidget(self.diameter, 1)
        row.addWidget(self.unit)
        layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.estimate_button)
        row.addWidget(self.measure_button)
        layout.addLayout(row)
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        layout.addWidget(self.model_label)

        self._unit_text = "px"
        self.unit.currentTextChanged.connect(self._unit_changed)
        self.estimate_button.clicked.connect(guarded(self.estimate))
        self.measure_button.clicked.connect(guarded(self.measure))
        image_choice.currentIndexChanged.connect(self.refresh)
        state.changed.connect(self.refresh)
        self.refresh()

    # --- units --------------------------------------------------------------------------------

    def _pixel_size(self) -> float | None:
        layer = self.image_choice.layer
        if layer is None:
            return None
        size = layer_pixel_sizes(layer, layer.ndim - (1 if layer.rgb else 0))[-1]
        return float(size) if size else None

    def refresh(self, *_: Any) -> None:
        size = self._pixel_size()
        micron_item = self.unit.model().item(1)
        micron_item.setEnabled(size is not None)
        if size is None and self.unit.currentText() == MICRONS:
            self.unit.setCurrentText("px")
        trained = self.state.config.get("object_diameter") if self.state.model is not None else None
        if not trained:
            self.model_label.setText("The model records no object size: the image is used as it is.")
            return
        text = f"Model trained at {float(trained):.0f} px"
        if size is not None:
            text += f" (here {float(trained) * size:.1f} {MICRONS})"
        self.model_label.setText(text + ".")

    def _unit_changed(self, text: str) -> None:
        size = self._pixel_size()
        value = self.diameter.value()
        if value and size and text != self._unit_text:
            self.diameter.setValue(value * size if text == MICRONS else value / size)
        self._unit_text = text

    def set_pixels(self, pixels: float) -> None:
        """Show ``pixels`` in the chosen unit."""
        size = self._pixel_size()
        self.diameter.setValue(pixels * size if self.unit.currentText() == MICRONS and size else pixels)

    def diameter_px(self) -> float | str:
        """What the core's ``diameter`` gets: ``"auto"``, or the diameter in pixels."""
        value = self.diameter.value()
        if not value:
            return "auto"
        if self.unit.currentText() == MICRONS:
            size = self._pixel_size()
            if size is None:
                raise UserError("The image has no pixel size: give the object size in pixels.")
            return value / size
        return value

    # --- estimate and measure -----------------------------------------------------------------

    def estimate(self) -> Job:
        """Estimate the diameter on the plane on screen (in a worker thread); inverted first for a
        model of objects darker than their background (config ``dark_objects``), as prediction does."""
        from segtune.core.diameter import estimate_diameter

        layer = self.image_choice.require("estimating the object size")
        position = current_position(self.viewer, layer)
        leading = layer.ndim - 2 - (1 if layer.rgb else 0)
        plane = layer.data[tuple(position[:leading])]
        rgb = bool(layer.rgb)
        dark = bool(self.state.config.get("dark_objects"))

        def work(progress: Any = None, cancel: Any = None) -> float:
            return estimate_diameter(np.asarray(plane, dtype=np.float32), channel_axis=-1 if rgb else None, dark=dark)

        def done(pixels: float) -> None:
            if not np.isfinite(pixels):
                raise UserError(f"No objects found on this plane of '{layer.name}': draw one and press Measure drawn.")
            self.set_pixels(pixels)

        self.job = Job(work, description=f"Estimating object size in {layer.name}", on_done=done, parent=self)
        return self.job.start()

    def measure(self) -> float:
        """The diameter of the object drawn in the selected Shapes layer (or selected in a Labels layer)."""
        from segtune.core.diameter import labels_diameter

        image = self.image_choice.require("measuring an object")
        layer = self.viewer.layers.selection.active
        kind = kind_of(layer) if layer is not None else "other"
        if kind == "shapes":
            pixels = drawn_diameter(layer, image)
        elif (
            kind == "labels"
            and int(layer.selected_label)
            and np.any(np.asarray(layer.data) == int(layer.selected_label))
        ):
            data = np.asarray(layer.data)
            if data.ndim > 2:
                data = data[current_position(self.viewer, layer)[:-2]]
            pixels = labels_diameter((data == int(layer.selected_label)).astype(np.uint8))
            if not np.isfinite(pixels):
                raise UserError(f"Object {int(layer.selected_label)} is not on this plane of '{layer.name}'.")
            pixels *= abs(float(layer.scale[-1])) / abs(float(image.scale[-1]))  # in the image's pixels
        else:
            raise UserError(
                "Select a Shapes layer with an ellipse drawn around one object (or a line across it), "
                "or a Labels layer with one object selected, then press Measure drawn."
            )
        if not pixels > 0:
            raise UserError("The drawn shape has no size: draw around one whole object.")
        self.set_pixels(pixels)
        return pixels
