"""Predict tab: segment an image layer with the current model, in a worker thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import Job, guarded, notify_info
from segtune._napari._layers import LayerChoice, Selection, select
from segtune._napari._panels import RGB_NAMES, JobPanel, PlaneRange, fill_channels
from segtune._napari._progress import ProgressRow
from segtune._napari._size_row import ObjectSizeRow
from segtune._napari._state import ModelState, UserError

SCOPE_TEXT = {
    "whole image / stack": "all",
    "visible plane (quick look)": "plane",
    "range of planes": "range",
}
OUTPUT_TEXT = {
    "numbered objects": True,
    "mask": False,
}
# a 2D model on a plane of at least this many pixels, of which the canvas shows at most half,
# predicts the visible part first (a first look in about a second), then the whole
FIRST_LOOK_MIN_PIXELS = 2048 * 2048
# context around the visible part, in pixels, so objects at the canvas edge are whole
FIRST_LOOK_MARGIN = 64


class PredictPanel(JobPanel):
    """Segment the chosen image layer; the result appears as a Labels layer.

    Attributes tests drive: ``image_layer``, ``channel_axis`` (first axis holds channels),
    ``channel``, ``scope``, ``range_axis``, ``plane_from``, ``plane_to``, ``threshold``,
    ``output``, ``min_size``, ``tile``, ``blend``, ``overlap``, ``probability_check``, ``run_button``,
    ``cancel_button``, ``progress`` (bar and time left), ``size_row`` (object diameter), ``status``; ``job`` is the
    running or last job and ``last_layers`` the
    layers the last prediction added. ``finished`` is emitted with the job status.

    A large image (``first_look_min_pixels`` per plane or more, default 4 MPx) of which the
    canvas shows at most half is predicted in two jobs: first the visible part (plus a margin),
    shown at once in a locked Labels layer, then the whole, which replaces it and unlocks it.
    Both use the whole image's normalisation and diameter (``whole_image_settings``), so the
    first look is what the whole gives there. ``first_look_job`` is the first of the two.
    """

    def __init__(self, viewer: Any, state: ModelState, parent: QWidget | None = None) -> None:
        super().__init__(viewer, state, parent)
        self.first_look_job: Job | None = None
        self.first_look_min_pixels = FIRST_LOOK_MIN_PIXELS
        # planes with more pixels go block by block into an on-disk array (None: the core's
        # LARGE_PLANE_PIXELS, 4096 x 4096, as `segtune predict` does)
        self.blockwise_above: int | None = None
        self.last_layers: list[Any] = []

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_layer = LayerChoice(viewer, "image")
        self.image_layer.setToolTip("The image to segment.")
        self.channel_axis = QCheckBox("first axis holds channels")
        self.channel_axis.setToolTip("Tick when the image's first axis is its colour channels (not planes or time).")
        self.channel = QComboBox()
        self.channel.setToolTip("Which channel the model looks at (e.g. the nuclear stain).")
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPE_TEXT))
        self.scope.setToolTip(
            "Segment everything, only the plane you are looking at (fast, to check the model "
            "on a big stack), or a range of planes / time points."
        )
        self.plane_range = PlaneRange("First and last plane (numbers as on napari's slider).")
        self.range_axis, self.plane_from, self.plane_to = (
            self.plane_range.axis,
            self.plane_range.start,
            self.plane_range.stop,
        )
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.threshold.setToolTip(
            "How sure the model must be that a pixel is an object. Lower finds more (and fainter) objects."
        )
        self.output = QComboBox()
        self.output.addItems(list(OUTPUT_TEXT))
        self.output.setToolTip(
            "Numbered objects (instance labels: to count and measure them), "
            "or a mask saying which pixels belong to objects (or to which class)."
        )
        self.min_size = QSpinBox()
        self.min_size.setRange(-1, 1_000_000)
        self.min_size.setSpecialValueText("auto")  # -1: the rule segtune predict --min-size auto applies
        self.min_size.setValue(-1)
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip(
            "Objects smaller than this many pixels (voxels in 3D) are dropped as specks. auto: a disc a quarter "
            "of the object diameter across (20 px for 20 px nuclei, at least 4 px), "
            "or 10 px when the diameter is unknown; 0 keeps all."
        )
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("auto")
        self.tile.setToolTip(
            "The image is processed in tiles of this many pixels; auto picks the largest that fits in memory."
        )
        self.blend = QComboBox()
        self.blend.addItems(["exact", "gaussian"])
        self.blend.setToolTip(
            "exact: tiles fit together with no seams (same result as one big pass). "
            "gaussian: soft blending of overlapping tiles."
        )
        self.overlap = QDoubleSpinBox()
        self.overlap.setRange(0.0, 0.75)
        self.overlap.setSingleStep(0.05)
        self.overlap.setValue(0.25)
        self.overlap.setToolTip(
            "How much neighbouring tiles overlap (gaussian blending only; exact tiling needs none)."
        )
        self.overlap.setEnabled(False)
        tile_row = QHBoxLayout()
        tile_row.addWidget(self.tile)
        tile_row.addWidget(self.blend)
        self.probability_check = QCheckBox("also show probabilities")
        self.probability_check.setToolTip("Adds an image layer with how sure the model is at each pixel (0 to 1).")
        form.addRow("Image", self.image_layer)
        form.addRow("", self.channel_axis)
        form.addRow("Channel", self.channel)
        form.addRow("Where", self.scope)
        self.plane_range.add_rows(form, "From")
        form.addRow("Threshold", self.threshold)
        form.addRow("Output", self.output)
        form.addRow("Smallest object", self.min_size)
        self.size_row = ObjectSizeRow(viewer, state, self.image_layer)
        form.addRow("Object size", self.size_row)
        form.addRow("Tiles", tile_row)
        form.addRow("Overlap", self.overlap)
        form.addRow(self.probability_check)
        layout.addLayout(form)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Predict")
        self.run_button.setToolTip(
            "Segment the image with the current model (runs in the background; napari stays usable). Shortcut: Shift-R."
        )
        self.cancel_button.setToolTip("Stop the prediction.")
        buttons.addWidget(self.run_button, 1)
        layout.addLayout(buttons)
        self.progress = ProgressRow(self.cancel_button)  # tiles done and time left, Cancel beside
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.image_layer.currentIndexChanged.connect(self._layer_changed)
        self.channel_axis.toggled.connect(self._layer_changed)
        self.scope.currentTextChanged.connect(self._scope_changed)
        self.blend.currentTextChanged.connect(lambda text: self.overlap.setEnabled(text == "gaussian"))
        self.run_button.clicked.connect(guarded(self.run))
        state.changed.connect(self._layer_changed)
        state.busy_changed.connect(self._busy_changed)
        self._layer_changed()

    # --- keeping the choices in step with the layer -------------------------------------------

    def _plain_shape(self) -> tuple[int, ...]:
        layer = self.image_layer.layer
        if layer is None:
            return ()
        shape = tuple(layer.data.shape)
        if layer.rgb:
            return shape[:-1]
        return shape[1:] if self.channel_axis.isChecked() else shape

    def _layer_changed(self, *_: Any) -> None:
        layer = self.image_layer.layer
        rgb = bool(layer is not None and layer.rgb)
        self.channel_axis.setEnabled(layer is not None and not rgb and layer.ndim >= 3)
        if not self.channel_axis.isEnabled():
            self.channel_axis.blockSignals(True)
            self.channel_axis.setChecked(False)
            self.channel_axis.blockSignals(False)
        names: list[str] = []
        if rgb:
            names = list(RGB_NAMES[: layer.data.shape[-1]])
        elif self.channel_axis.isChecked():
            names = [f"channel {i}" for i in range(layer.data.shape[0])]
        fill_channels(self.channel, names, self.state.in_channels if self.state.model is not None else 1)
        self.plane_range.set_shape(self._plain_shape())
        self._scope_changed()

    def _scope_changed(self, *_: Any) -> None:
        self.plane_range.set_enabled(SCOPE_TEXT[self.scope.currentText()] == "range")

    def _busy_changed(self, what: str) -> None:
        self.run_button.setEnabled(not what)
        self.cancel_button.setEnabled(self.running)

    # --- running ------------------------------------------------------------------------------

    def selection(self, layer: Any = None, scope: str | None = None) -> Selection:
        """The part of the image the next prediction covers."""
        layer = layer if layer is not None else self.image_layer.require("prediction")
        return select(
            self.viewer,
            layer,
            scope=scope or SCOPE_TEXT[self.scope.currentText()],
            channel_first=self.channel_axis.isChecked() and not layer.rgb,
            **self.plane_range.selection(),
        )

    def run(self, layer: Any = None, scope: str | None = None) -> Job:
        """Predict on the chosen image layer (or ``layer``); returns the started job."""
        state = self.state
        state.require_model()
        state.require_idle("predicting")
        layer = layer if layer is not None else self.image_layer.require("prediction")
        scope = scope or SCOPE_TEXT[self.scope.currentText()]
        selection = self.selection(layer, scope)
        spatial_dims = state.spatial_dims
        if spatial_dims == 3 and "Z" not in selection.axes:
            raise UserError(
                "This is a 3D model: it needs a stack of planes. Choose the whole stack or a range of planes."
            )
        if spatial_dims == 3 and selection.shape[selection.spatial_axes.index("Z")] < 2:
            raise UserError("A 3D model needs at least 2 planes; choose a wider range or the whole stack.")
        channel = self.channel.currentData() if self.channel.isEnabled() else None
        if "C" not in selection.axes and state.in_channels != 1:
            raise UserError(
                f"The model looks at {state.in_channels} channels together but '{layer.name}' has one. "
                "Tick 'first axis holds channels' if it has several, or choose a one-channel model."
            )
        from segtune.core.predict import ObjectOptions, TilingOptions

        instances = OUTPUT_TEXT[self.output.currentText()]
        tile = self.tile.value() or None
        options = dict(
            config=state.config,
            axes=selection.axes,
            channel=channel,
            channel_names=list(RGB_NAMES[: layer.data.shape[-1]]) if layer.rgb else None,
            threshold=self.threshold.value(),
            instances=instances,
            objects=ObjectOptions(min_size=self.min_size.value() if self.min_size.value() >= 0 else "auto"),
            tiling=TilingOptions(
                tile_shape=tile,
                blend=self.blend.currentText(),
                overlap=self.overlap.value() if self.blend.currentText() == "gaussian" else None,
            ),
            device=state.device_choice,
            diameter=self.size_row.diameter_px(),
        )
        model_name = state.name + (
            " fine-tuned" if state.source.startswith("fine-tuned") and "fine-tuned" not in state.name else ""
        )
        where = {"all": "", "plane": " plane", "range": " planes"}[scope]
        name = f"{layer.name} [{model_name}{where}]"
        self.status.setText("Starting…")
        self.progress.start()
        self.first_look_job = None
        if spatial_dims == 2 and selection.shape[-1] * selection.shape[-2] > self._blockwise_above():
            return self._start_blockwise(selection, options, name)
        part = self._first_look_part(layer, selection, scope) if spatial_dims == 2 else None
        if part is not None:
            return self._start_first_look(layer, selection, part, options, name)
        return self._start_whole(layer, selection, options, name, provisional=None)

    def _blockwise_above(self) -> int:
        if self.blockwise_above is not None:
            return self.blockwise_above
        from segtune.core.predict.blockwise import LARGE_PLANE_PIXELS

        return LARGE_PLANE_PIXELS

    def _start_blockwise(self, selection: Selection, options: dict[str, Any], name: str) -> Job:
        """A plane too large for memory: predicted block by block into a zarr array on disk, which
        the new Labels layer shows and the brush edits (no probability layer, no first look)."""
        import tempfile

        import zarr

        from segtune.core.predict.blockwise import DEFAULT_BLOCK, predict_into

        model, data = self.state.model, selection.data
        instances = options["instances"]
        folder = Path(tempfile.mkdtemp(prefix="segtune-labels-"))
        chunks = (*(1 for _ in selection.shape[:-2]), DEFAULT_BLOCK, DEFAULT_BLOCK)
        labels = zarr.open_array(
            str(folder / "labels.zarr"),
            mode="w",
            shape=selection.shape,
            chunks=chunks,
            dtype=np.uint32 if instances else np.uint8,
        )

        def work(progress: Any = None, cancel: Any = None) -> int:
            return predict_into(model, data, labels, progress=progress, cancel=cancel, **options)[0]

        def done(count: int) -> None:
            labels_layer = self.viewer.add_labels(labels, name=name, **selection.placement)
            self.viewer.layers.selection.active = labels_layer
            self.last_layers = [labels_layer]
            what = f"{count} objects" if instances else f"{count} objects in the mask"
            self.status.setText(
                f"Done: {what} in '{labels_layer.name}', predicted block by block (a large image: the labels "
                f"are kept on disk in {folder})."
            )

        return self.start_job(
            work,
            f"Predicting {name} block by block",
            done,
            busy="predicting",
            cancelled=lambda _: self._nothing_added(),
        )

    def _start_whole(
        self, layer: Any, selection: Selection, options: dict[str, Any], name: str, provisional: Any
    ) -> Job:
        """Predict all of ``selection``; the labels fill ``provisional`` (a first look's layer) or a new layer."""
        from segtune.core.predict import predict

        model, data = self.state.model, selection.data
        instances = options["instances"]
        want_probability = self.probability_check.isChecked()

        def work(progress: Any = None, cancel: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
            result = predict(model, data, progress=progress, cancel=cancel, **options)
            labels = np.asarray(result.labels).reshape(selection.shape)
            probability = None
            if want_probability:
                p = np.asarray(result.probabilities)
                p = p[:, 0] if p.shape[1] == 1 else 1.0 - p[:, 0]  # foreground: not background
                probability = p.reshape(selection.shape).astype(np.float32)
            return labels, probability

        def done(outcome: tuple[np.ndarray, np.ndarray | None]) -> None:
            labels, probability = outcome
            added = []
            if probability is not None:
                added.append(
                    self.viewer.add_image(
                        probability,
                        name=f"{name} probability",
                        **selection.placement,
                        colormap="magma",
                        contrast_limits=(0.0, 1.0),
                        blending="additive",
                        visible=True,
                    )
                )
            if provisional is not None and provisional in self.viewer.layers:
                provisional.data = labels
                provisional.editable = True
                labels_layer = provisional
            else:
                labels_layer = self.viewer.add_labels(labels, name=name, **selection.placement)
            added.append(labels_layer)
            self.viewer.layers.selection.active = labels_layer  # ready to correct with the brush
            self.last_layers = added
            count = int(labels.max()) if instances else int(np.count_nonzero(labels))
            what = f"{count} objects" if instances else f"{count} foreground pixels"
            self.status.setText(
                f"Done: {what} in '{labels_layer.name}'. Correct them in the Correct tab or with napari's brush."
            )

        def cancelled(_: Any) -> None:
            if provisional is not None and provisional in self.viewer.layers:
                provisional.editable = True
                self.status.setText(f"Cancelled: only the part that was visible is segmented, in '{provisional.name}'.")
                notify_info("Prediction cancelled; the visible part's result stays.")
                return
            self._nothing_added()

        return self.start_job(work, f"Predicting {layer.name}", done, busy="predicting", cancelled=cancelled)

    def _start_first_look(
        self,
        layer: Any,
        selection: Selection,
        part: tuple[Selection, tuple[slice, ...]],
        options: dict[str, Any],
        name: str,
    ) -> Job:
        """Predict the visible part of the current plane, show it, then start the whole."""
        from segtune.core.predict import predict, whole_image_settings

        model, data = self.state.model, selection.data
        plane, box = part
        crop = list(slice(None) for _ in plane.axes)
        for letter, cut in zip("YX", box[-2:], strict=True):
            crop[plane.axes.index(letter)] = cut
        crop_data = plane.data[tuple(crop)]
        # where the part lies in the whole selection's labels
        where = tuple(
            slice(p.start - s.start, p.stop - s.start)
            for p, s in zip(plane.index[:-2], selection.index[:-2], strict=True)
        )
        where = (*where, *box[-2:])

        def work(progress: Any = None, cancel: Any = None) -> tuple[dict[str, Any], np.ndarray]:
            config, diameter = whole_image_settings(
                model,
                data,
                config=options["config"],
                axes=options["axes"],
                channel=options["channel"],
                channel_names=options["channel_names"],
            )
            settings = {**options, "config": config, "diameter": diameter, "axes": plane.axes}
            result = predict(model, crop_data, progress=progress, cancel=cancel, **settings)
            shape = tuple(c.stop - c.start for c in where)
            return {"config": config, "diameter": diameter}, np.asarray(result.labels).reshape(shape)

        def done(outcome: tuple[dict[str, Any], np.ndarray]) -> None:
            settings, labels = outcome
            first = np.zeros(selection.shape, dtype=labels.dtype)
            first[where] = labels
            provisional = self.viewer.add_labels(first, name=name, **selection.placement)
            provisional.editable = False  # the whole image's result replaces it: nothing drawn may be lost
            self.viewer.layers.selection.active = provisional
            self.status.setText("First look at the visible part; predicting the whole image…")
            self._start_whole(layer, selection, {**options, **settings}, name, provisional)

        # the panel's `finished` follows the whole job once the first look started it
        self.first_look_job = self.start_job(
            work,
            f"Predicting the visible part of {layer.name}",
            done,
            busy="predicting",
            cancelled=lambda _: self._nothing_added(),
        )
        return self.first_look_job

    def _nothing_added(self) -> None:
        self.status.setText("Cancelled: nothing was added.")
        notify_info("Prediction cancelled; nothing was added.")

    def _first_look_part(
        self, layer: Any, selection: Selection, scope: str
    ) -> tuple[Selection, tuple[slice, ...]] | None:
        """The current plane and the Y, X box of it the canvas shows (plus a margin), when the
        plane is large and the box at most half of it; else None (predict the whole at once)."""
        if scope not in ("all", "plane"):
            return None
        height, width = selection.shape[-2:]
        if height * width < self.first_look_min_pixels:
            return None
        box = visible_box(self.viewer, layer, FIRST_LOOK_MARGIN)
        if box is None:
            return None
        (y0, y1), (x0, x1) = ((max(0, a), min(n, b)) for (a, b), n in zip(box, (height, width), strict=True))
        if y1 - y0 < 16 or x1 - x0 < 16 or (y1 - y0) * (x1 - x0) > height * width / 2:
            return None
        plane = self.selection(layer, "plane") if scope == "all" and len(selection.shape) > 2 else selection
        return plane, (slice(y0, y1), slice(x0, x1))

    def show_events(self, events: list[Any]) -> None:
        last = events[-1]
        if last.total:
            self.status.setText("Predicting…")  # the numbers and time left are on the progress row
        self.progress.show_event(last)

    def job_ended(self, status: str) -> None:
        self.progress.finish("" if status in ("", "done") else status)
        super().job_ended(status)


def visible_box(viewer: Any, layer: Any, margin: int = 0) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The (start, stop) data rows and columns of ``layer`` that the canvas shows, widened by
    ``margin`` pixels (not clipped to the layer); None when the view is 3D, the displayed axes
    are not the layer's last two, or napari does not tell the canvas size."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None or viewer.dims.ndisplay != 2 or tuple(viewer.dims.displayed) != tuple(range(viewer.dims.ndim))[-2:]:
        return None
    camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera  # napari >= 0.9: scene.camera
    zoom = float(camera.zoom)
    if zoom <= 0:
        return None
    center = np.asarray(camera.center, dtype=float)[-2:]
    half = np.asarray(size, dtype=float)[-2:] / zoom / 2  # canvas pixels -> world units
    corners = []
    for sign in (-1.0, 1.0):
        point = np.asarray(viewer.dims.point, dtype=float)
        point[-2:] = center + sign * half
        corners.append(np.asarray(layer.world_to_data(point), dtype=float)[-2:])
    low, high = np.minimum(*corners), np.maximum(*corners)
    (y0, x0), (y1, x1) = np.floor(low).astype(int) - margin, np.ceil(high).astype(int) + 1 + margin
    return (int(y0), int(y1)), (int(x0), int(x1))
