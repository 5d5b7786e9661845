"""Tools tab: training labels with less drawing (auto-labels, pseudo-labels) and restoration pretraining."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import Job, guarded, notify_info
from segtune._napari._panels import JobPanel
from segtune._napari._state import ModelState, UserError


class ToolsPanel(JobPanel):
    """One button each, with sensible defaults, for getting training labels cheaply.

    Attributes tests drive: ``image_layer``; ``min_diameter``, ``max_diameter``,
    ``autolabel_button``; ``confidence``, ``pseudolabel_button``; ``pretrain_epochs``,
    ``pretrain_minutes``, ``pretrain_patch``, ``pretrain_button``; ``cancel_button``, ``status``;
    ``job`` (running or last) and ``last_layer`` (the layer the last labelling added).
    """

    def __init__(self, viewer: Any, state: ModelState, parent: QWidget | None = None) -> None:
        from segtune._napari._layers import LayerChoice

        super().__init__(viewer, state, parent)
        self.last_layer: Any = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_layer = LayerChoice(viewer, "image")
        self.image_layer.setToolTip("The image to label or to pretrain on (for auto-labels: a fluorescence channel).")
        form.addRow("Image", self.image_layer)
        layout.addLayout(form)

        box = QGroupBox("Auto-labels (fluorescence)")
        box_form = QFormLayout(box)
        self.min_diameter = QDoubleSpinBox()
        self.max_diameter = QDoubleSpinBox()
        for spin, value in ((self.min_diameter, 5.0), (self.max_diameter, 30.0)):
            spin.setRange(0.0, 10000.0)
            spin.setDecimals(1)
            spin.setValue(value)
        self.min_diameter.setToolTip("Smaller spots (in pixels across) are dropped as debris.")
        self.max_diameter.setToolTip("Bigger blobs (in pixels across) are dropped as clumps or background.")
        sizes = QHBoxLayout()
        sizes.addWidget(self.min_diameter)
        sizes.addWidget(QLabel("to"))
        sizes.addWidget(self.max_diameter)
        self.autolabel_button = QPushButton("Make auto-labels")
        self.autolabel_button.setToolTip(
            "Finds bright objects without a model (contrast enhancement + local threshold): a quick first "
            "set of masks to correct and fine-tune on."
        )
        box_form.addRow("Object size (px)", sizes)
        box_form.addRow(self.autolabel_button)
        layout.addWidget(box)

        box = QGroupBox("Pseudo-labels (current model)")
        box_form = QFormLayout(box)
        self.confidence = QDoubleSpinBox()
        self.confidence.setRange(0.51, 1.0)
        self.confidence.setSingleStep(0.05)
        self.confidence.setValue(0.9)
        self.confidence.setToolTip(
            "Only pixels the model is at least this sure of are labelled; the rest are left out of fine-tuning."
        )
        self.pseudolabel_button = QPushButton("Make pseudo-labels")
        self.pseudolabel_button.setToolTip(
            "The model labels the image where it is confident; unsure pixels get their own value (255) and "
            "are ignored when you fine-tune on this layer."
        )
        box_form.addRow("Confidence", self.confidence)
        box_form.addRow(self.pseudolabel_button)
        layout.addWidget(box)

        box = QGroupBox("Pretraining (no masks needed)")
        box_form = QFormLayout(box)
        self.pretrain_epochs = QSpinBox()
        self.pretrain_epochs.setRange(1, 1000)
        self.pretrain_epochs.setValue(20)
        self.pretrain_epochs.setToolTip("Rounds of learning to repair damaged copies of the image.")
        self.pretrain_minutes = QDoubleSpinBox()
        self.pretrain_minutes.setRange(0.1, 600.0)
        self.pretrain_minutes.setValue(5.0)
        self.pretrain_minutes.setSuffix(" min")
        self.pretrain_minutes.setToolTip("Stop after this long at most.")
        self.pretrain_patch = QSpinBox()
        self.pretrain_patch.setRange(16, 512)
        self.pretrain_patch.setSingleStep(16)
        self.pretrain_patch.setValue(128)
        self.pretrain_patch.setToolTip("Size of the image pieces (pixels, a multiple of 16).")
        self.pretrain_button = QPushButton("Pretrain on this image")
        self.pretrain_button.setToolTip(
            "The model first learns what this image looks like by repairing damaged copies of it (no masks "
            "needed); fine-tuning afterwards needs fewer corrected objects. Replaces the current model."
        )
        box_form.addRow("Epochs", self.pretrain_epochs)
        box_form.addRow("At most", self.pretrain_minutes)
        box_form.addRow("Patch", self.pretrain_patch)
        box_form.addRow(self.pretrain_button)
        layout.addWidget(box)

        self.cancel_button.setToolTip("Stop the running tool.")
        layout.addWidget(self.cancel_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.autolabel_button.clicked.connect(guarded(self.autolabel))
        self.pseudolabel_button.clicked.connect(guarded(self.pseudolabel))
        self.pretrain_button.clicked.connect(guarded(self.pretrain))
        state.busy_changed.connect(self._busy_changed)

    # --- the tools ----------------------------------------------------------------------------

    def _image(self, what: str) -> Any:
        layer = self.image_layer.require(what)
        if layer.rgb:
            raise UserError(f"'{layer.name}' is a colour (RGB) image; choose a single-channel image layer.")
        return layer

    def autolabel(self) -> Job:
        """Binary objects from a fluorescence image, numbered, as a new Labels layer."""
        from segtune.core.autolabel import AutolabelSettings, autolabel_image
        from segtune.core.labels import object_count, planes_of, stack_planes
        from segtune.core.postprocess import label_components
        from segtune.core.progress import Reporter

        layer = self._image("auto-labels")
        settings = AutolabelSettings(min_diameter=self.min_diameter.value(), max_diameter=self.max_diameter.value())
        data = layer.data

        def work(progress: Any = None, cancel: Any = None) -> np.ndarray:
            planes, leading = planes_of(data)
            report = Reporter(progress, cancel, stage="auto-labels", total=len(planes))
            out = []
            for i, plane in enumerate(planes):
                out.append(label_components(autolabel_image(np.asarray(plane), settings)))
                report.step(i + 1, message=f"plane {i + 1}/{len(planes)}")
            return stack_planes(out, leading, renumber=True)

        def done(labels: np.ndarray) -> None:
            self.last_layer = self.viewer.add_labels(
                labels,
                name=f"{layer.name} [auto-labels]",
                scale=layer.scale,
                translate=layer.translate,
                units=layer.units,
            )
            self.status.setText(
                f"Auto-labels: {object_count(labels)} objects in '{self.last_layer.name}'. "
                "Correct them, then fine-tune on them."
            )

        return self._start(work, f"Auto-labelling {layer.name}", done, uses_torch=False)

    def pseudolabel(self) -> Job:
        """Labels where the current model is confident, 255 where it is not, as a new Labels layer."""
        from segtune.core.labels import planes_of, stack_planes
        from segtune.core.progress import Reporter
        from segtune.core.train.pseudolabel import IGNORE, model_probabilities, pseudo_labels

        state = self.state
        state.require_model()
        state.require_idle("making pseudo-labels")
        if state.spatial_dims != 2:
            raise UserError("Pseudo-labels come from 2D models (a 3D model: predict, then correct).")
        if state.in_channels != 1:
            raise UserError(
                f"The model looks at {state.in_channels} channels; pseudo-labels here work on one-channel images."
            )
        layer = self._image("pseudo-labels")
        model, config, head = state.model, dict(state.config), state.config.get("head", "binary")
        threshold, device, data = self.confidence.value(), state.device_choice, layer.data

        def work(progress: Any = None, cancel: Any = None) -> np.ndarray:
            planes, leading = planes_of(data)
            report = Reporter(progress, cancel, stage="pseudo-labels", total=len(planes))
            out = []
            for i, plane in enumerate(planes):
                probabilities = model_probabilities(model, config, np.asarray(plane), device=device)
                out.append(pseudo_labels(probabilities, head, threshold=threshold, ignore_value=IGNORE))
                report.step(i + 1, message=f"plane {i + 1}/{len(planes)}")
            return stack_planes(out, leading)

        def done(labels: np.ndarray) -> None:
            self.last_layer = self.viewer.add_labels(
                labels,
                name=f"{layer.name} [pseudo-labels]",
                scale=layer.scale,
                translate=layer.translate,
                units=layer.units,
                metadata={"segtune_ignore_value": IGNORE},
            )
            unsure = float(np.mean(labels == IGNORE))
            self.status.setText(
                f"Pseudo-labels in '{self.last_layer.name}': {1 - unsure:.0%} of the pixels labelled, "
                f"{unsure:.0%} left unsure (value {IGNORE}, ignored when fine-tuning on this layer)."
            )

        return self._start(work, f"Pseudo-labelling {layer.name}", done, uses_torch=True)

    def pretrain(self) -> Job:
        """Restoration pretraining on the chosen (unlabelled) image; the result becomes the current model."""
        from segtune.core.models.store import save_model
        from segtune.core.train.pretrain import PretrainConfig, pretrain

        state = self.state
        state.require_idle("pretraining")
        layer = self._image("pretraining")
        architecture = state.config.get("architecture", {}) if state.model is not None else {}
        if architecture and int(architecture.get("spatial_dims", 2)) != 2:
            raise UserError("Restoration pretraining trains 2D models; choose or start a 2D model first.")
        depth = int(architecture.get("depth", 3))
        patch = self.pretrain_patch.value()
        if patch % 2**depth:
            raise UserError(f"The patch size must be a multiple of {2**depth} for this model; {patch} is not.")
        settings = PretrainConfig(
            method="restore",
            epochs=self.pretrain_epochs.value(),
            max_minutes=self.pretrain_minutes.value(),
            patch=patch,
            depth=depth,
            base_channels=int(architecture.get("base_channels", 16)),
            device=state.device_choice,
        )
        settings.validate()
        # pretraining starts from a model folder; an unsaved model is written to a temporary one first
        from_folder = None
        temporary = None
        if state.model is not None:
            if state.folder is not None and not state.unsaved:
                from_folder = state.folder
            else:
                temporary = tempfile.TemporaryDirectory(prefix="segtune-pretrain-")
                from_folder = save_model(state.model, state.config, Path(temporary.name) / "start")
        data, name, source = layer.data, layer.name, state.source or "a new model"

        def work(progress: Any = None, cancel: Any = None) -> Any:
            try:
                return pretrain(
                    [np.asarray(data)],
                    settings,
                    names=[name],
                    from_model=from_folder,
                    provenance={"source": "napari widget", "image_layer": name},
                    progress=progress,
                    cancel=cancel,
                )
            finally:
                if temporary is not None:
                    temporary.cleanup()

        def done(result: Any) -> None:
            if not result.history:
                self.status.setText("Pretraining stopped before the first epoch ended: the model is unchanged.")
                return
            config = dict(result.config)
            config["name"] = f"{state.name if state.model is not None else 'model'}_pretrained"
            state.set_model(
                result.model.cpu().eval(),
                config,
                source=f"pretrained on {name} (from {source})",
                folder=None,
                unsaved=True,
            )
            loss = result.history[-1].get("loss", result.history[-1].get("train_loss"))
            loss_text = f", restoration loss {loss:.3f}" if isinstance(loss, float) else ""
            self.status.setText(
                f"Pretrained {len(result.history)} epoch(s){loss_text}. Now correct some masks and fine-tune."
            )

        return self._start(work, f"Pretraining on {name}", done, uses_torch=True, model_job="pretraining")

    # --- jobs ---------------------------------------------------------------------------------

    def _start(self, work: Any, description: str, done: Any, *, uses_torch: bool, model_job: str = "") -> Job:
        self.require_no_job()
        self._set_buttons(False)
        self.status.setText(f"{description}…")
        return self.start_job(
            work,
            description,
            done,
            busy=model_job or ("labelling" if uses_torch else ""),
            cancelled=lambda _: self.status.setText("Cancelled."),
            uses_torch=uses_torch,
        )

    def show_events(self, events: list[Any]) -> None:
        last = events[-1]
        loss = last.metrics.get("loss")
        extra = f", loss {loss:.3f}" if isinstance(loss, float) else ""
        self.status.setText(
            f"{self.job.description if self.job else ''}: {last.message or f'{last.done}/{last.total}'}{extra}"
        )

    def _set_buttons(self, idle: bool) -> None:
        for button in (self.autolabel_button, self.pseudolabel_button, self.pretrain_button):
            button.setEnabled(idle)
        self.cancel_button.setEnabled(not idle)

    def _busy_changed(self, what: str) -> None:
        if not self.running:
            self._set_buttons(True)

    def cancelling(self) -> None:
        notify_info(f"{self.job.description}: stopping…")

    def job_ended(self, status: str) -> None:
        self._set_buttons(True)
        super().job_ended(status)
