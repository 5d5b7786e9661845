"""Fine-tune tab: teach the current model from corrected masks, with a live curve and Cancel."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from segtune._napari._curve import TrainingCurve
from segtune._napari._jobs import Job, format_seconds, guarded, notify_info, run_guarded
from segtune._napari._layers import LayerChoice, matching_index, same_layer, select
from segtune._napari._panels import RGB_NAMES, JobPanel, PlaneRange, fill_channels
from segtune._napari._state import ModelState, UserError

REGION_TEXT = {
    "everywhere": "all",
    "this plane only": "plane",
    "a range of planes": "range",
}
LOSSES = ("bce+dice", "bce", "dice", "focal+dice", "iou")
LOSS_WORDS = {  # plain words in the list; the technical name is in each item's tooltip
    "bce+dice": "pixels and overlap",
    "bce": "pixels",
    "dice": "overlap",
    "focal+dice": "hard pixels and overlap",
    "iou": "overlap (IoU)",
}


def shapes_mask(shapes: Any, labels: Any, yx_shape: tuple[int, int], yx_offset: tuple[int, int]) -> np.ndarray:
    """Pixels of a YX window of ``labels`` (origin ``yx_offset``) inside any rectangle/polygon/ellipse of ``shapes``."""
    from segtune.core.labels import AREA_SHAPES, mask_from_shapes

    outlines = []
    for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
        if kind in AREA_SHAPES:  # the shapes' vertices in the labels' pixels, relative to the window
            world = np.array([shapes.data_to_world(v) for v in vertices])
            outlines.append((kind, np.array([labels.world_to_data(w) for w in world])[:, -2:] - np.asarray(yx_offset)))
    if not outlines:
        raise UserError(f"'{shapes.name}' has no rectangle, polygon or ellipse: draw one around the corrected area.")
    mask = mask_from_shapes(outlines, yx_shape)
    if not mask.any():
        raise UserError(f"The shapes in '{shapes.name}' do not cover any of '{labels.name}'.")
    return mask


def finetuned_name(name: str) -> str:
    """``nuclei-2d`` -> ``nuclei-2d-fine-tuned``: a fine-tuned model is never named like its origin
    (its layers and its export folder would be taken for the bundled model's)."""
    return name if name.endswith("-fine-tuned") else f"{name}-fine-tuned"


class FinetunePanel(JobPanel):
    """Fine-tune the current model on an image and its corrected Labels layer.

    Attributes tests drive: ``image_layer``, ``labels_layer``, ``shapes_layer``, ``region``,
    ``range_axis``, ``plane_from``, ``plane_to``, ``channel``, ``minutes``, ``epochs``, ``learning_rate``,
    ``loss``, ``freeze_encoder``, ``val_fraction``, ``patch``, ``batch_size``,
    ``steps_per_epoch``, ``repredict_check``, ``run_button``, ``cancel_button``, ``curve``,
    ``epoch_label``, ``status``; ``job`` (running or last), ``result`` (the core's
    ``TrainResult`` of the last run). ``repredict(layer)`` is called after training when
    ``repredict_check`` is ticked (the widget connects it to the Predict tab).
    """

    def __init__(self, viewer: Any, state: ModelState, parent: QWidget | None = None) -> None:
        super().__init__(viewer, state, parent)
        self.result: Any = None
        self.repredict: Any = None
        self._repredict_layer: Any = None  # the image to predict again once the job ended
        self._timing: dict[str, float] = {}

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_layer = LayerChoice(viewer, "image")
        self.image_layer.setToolTip("The image the masks were drawn on.")
        self.labels_layer = LayerChoice(viewer, "labels")
        self.labels_layer.setToolTip("Your corrected masks: the model learns to draw these.")
        self.channel = QComboBox()
        self.channel.setToolTip("For colour (RGB) images: the channel the model looks at.")
        self.region = QComboBox()
        self.region.addItems(list(REGION_TEXT))
        self.region.setToolTip(
            "Where your masks are correct. Pixels elsewhere are not used, so uncorrected planes "
            "do not teach the model wrong things."
        )
        self.plane_range = PlaneRange("First and last corrected plane (numbers as on napari's slider).")
        self.range_axis, self.plane_from, self.plane_to = (
            self.plane_range.axis,
            self.plane_range.start,
            self.plane_range.stop,
        )
        self.shapes_layer = LayerChoice(viewer, "shapes", allow_none=True, none_text="(anywhere)")
        self.shapes_layer.setToolTip(
            "Optional: a Shapes layer with rectangles around the areas you corrected; only those are used."
        )
        form.addRow("Image", self.image_layer)
        form.addRow("Corrected masks", self.labels_layer)
        form.addRow("Channel", self.channel)
        form.addRow("Trusted where", self.region)
        self.plane_range.add_rows(form, "Planes")
        form.addRow("Only inside", self.shapes_layer)

        self.minutes = QDoubleSpinBox()
        self.minutes.setDecimals(1)
        self.minutes.setRange(0.1, 600.0)
        self.minutes.setSingleStep(0.5)
        self.minutes.setValue(2.0)
        self.minutes.setSuffix(" min")
        self.minutes.setToolTip(
            "How long to learn. About 2 minutes is enough to adapt a trained model to one corrected image; "
            "Cancel stops early and keeps the best model so far."
        )
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 100000)
        self.epochs.setValue(10000)
        self.epochs.setToolTip(
            "At most this many rounds of learning (epochs); the training time usually ends learning first."
        )
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(0.0, 0.1)
        self.learning_rate.setSingleStep(0.0001)
        self.learning_rate.setSpecialValueText("auto")
        self.learning_rate.setValue(0.0)
        self.learning_rate.setToolTip(
            "How big each learning step is. auto: 0.003 for a trained model (SGD: changed gently, "
            "where its corrections ask), 0.002 for a new one (AdamW)."
        )
        self.loss = QComboBox()
        for loss in LOSSES:
            self.loss.addItem(LOSS_WORDS[loss], loss)
            self.loss.setItemData(self.loss.count() - 1, f"'{loss}' loss", 3)  # 3 = ToolTipRole
        self.loss.setToolTip(
            "How mistakes are counted. Pixels and overlap ('bce+dice': binary cross-entropy + Dice) suits most "
            "images; overlap only ('dice') helps when objects are small and few."
        )
        self.freeze_encoder = QCheckBox("learn only how to draw the masks")
        self.freeze_encoder.setToolTip(
            "Keep what the model already sees in images and let only the part that draws the masks learn: "
            "safer with very few corrected objects ('freeze encoder')."
        )
        self.val_fraction = QDoubleSpinBox()
        self.val_fraction.setRange(0.0, 0.5)
        self.val_fraction.setSingleStep(0.05)
        self.val_fraction.setValue(0.2)
        self.val_fraction.setToolTip(
            "Part of your masks held back to check the model honestly and keep its best version "
            "(0: none; then Cancel keeps the starting model)."
        )
        self.repredict_check = QCheckBox("predict again when done")
        self.repredict_check.setChecked(True)
        self.repredict_check.setToolTip("See straight away what the fine-tuned model does on the image.")
        form.addRow("Training time", self.minutes)
        form.addRow("Loss", self.loss)
        form.addRow(self.freeze_encoder)
        form.addRow("Held out", self.val_fraction)
        layout.addLayout(form)

        more = QCollapsible("More settings")
        more_widget = QWidget()
        more_form = QFormLayout(more_widget)
        self.patch = QSpinBox()
        self.patch.setRange(0, 1024)
        self.patch.setSingleStep(16)
        self.patch.setSpecialValueText("auto")
        self.patch.setValue(0)
        self.patch.setToolTip(
            "Size of the image pieces the model learns from (pixels); auto: about five object diameters."
        )
        self.batch_size = QSpinBox()
        self.batch_size.setRange(0, 64)
        self.batch_size.setSpecialValueText("auto")
        self.batch_size.setValue(0)
        self.batch_size.setToolTip(
            "Pieces per learning step; lower it if memory runs out. auto: 8 small or 4 large pieces."
        )
        self.steps_per_epoch = QSpinBox()
        self.steps_per_epoch.setRange(0, 100000)
        self.steps_per_epoch.setSpecialValueText("auto")
        self.steps_per_epoch.setToolTip("Learning steps per epoch; auto covers the masks about once.")
        more_form.addRow("Epochs", self.epochs)
        more_form.addRow("Learning rate", self.learning_rate)
        more_form.addRow("Patch size", self.patch)
        more_form.addRow("Batch size", self.batch_size)
        more_form.addRow("Steps per epoch", self.steps_per_epoch)
        more.addWidget(more_widget)
        layout.addWidget(more)
        layout.addWidget(self.repredict_check)

        buttons = QHBoxLayout()
        self.run_button = QPushButton("Fine-tune")
        self.run_button.setToolTip(
            "Teach the current model from your masks (runs in the background; napari stays usable). Shortcut: Shift-T."
        )
        self.cancel_button.setToolTip("Stop now and keep the best model found so far.")
        buttons.addWidget(self.run_button, 1)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.epoch_label = QLabel("")
        self.curve = TrainingCurve()
        layout.addWidget(self.epoch_label)
        layout.addWidget(self.curve)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.image_layer.currentIndexChanged.connect(self._image_changed)
        self.labels_layer.currentIndexChanged.connect(self._labels_changed)
        self.region.currentTextChanged.connect(self._region_changed)
        self.run_button.clicked.connect(guarded(self.run))
        state.changed.connect(self._model_changed)
        state.busy_changed.connect(lambda what: self.run_button.setEnabled(not what))
        self._image_changed()
        self._labels_changed()
        self._model_changed()

    # --- keeping the choices in step ----------------------------------------------------------

    def _image_changed(self, *_: Any) -> None:
        layer = self.image_layer.layer
        names = list(RGB_NAMES[: layer.data.shape[-1]]) if layer is not None and layer.rgb else []
        fill_channels(self.channel, names, self.state.in_channels if self.state.model is not None else 1)

    def _labels_changed(self, *_: Any) -> None:
        layer = self.labels_layer.layer
        self.plane_range.set_shape(tuple(layer.data.shape) if layer is not None else ())
        self._region_changed()

    def _region_changed(self, *_: Any) -> None:
        self.plane_range.set_enabled(REGION_TEXT[self.region.currentText()] == "range")

    def _model_changed(self) -> None:
        state = self.state
        if state.model is None:
            return
        # learning rate, patch and batch stay "auto": the trainer picks them for a trained or a new model
        self.minutes.setValue(2.0 if not state.source.startswith("new") else 10.0)
        self._image_changed()

    # --- running ------------------------------------------------------------------------------

    def training_data(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None, Any, Any]:
        """(images, labels, masks, image layer, labels layer) as the trainer gets them (lazy parts stay lazy)."""
        image = self.image_layer.require("fine-tuning")
        labels = self.labels_layer.require("the corrected masks")
        selection = select(
            self.viewer,
            labels,
            scope=REGION_TEXT[self.region.currentText()],
            **self.plane_range.selection(),
        )
        image_index = matching_index(image, labels, selection.index)
        label_data = selection.data
        image_data = image.data[image_index + ((slice(None),) if image.rgb else ())]
        if image.rgb:
            channel = self.channel.currentData()
            if channel == "RGB":  # the grey mean of the colours, as prediction makes it
                image_data = np.mean(np.asarray(image_data)[..., :3], axis=-1, dtype=np.float32)
            elif channel is not None:
                image_data = image_data[..., channel]
            elif self.state.in_channels != image.data.shape[-1]:
                raise UserError(
                    f"The model looks at {self.state.in_channels} channel(s); choose one channel of the colour image."
                )
        elif self.state.in_channels != 1:
            raise UserError(f"The model looks at {self.state.in_channels} channels together; '{image.name}' has one.")

        mask = None
        shapes = self.shapes_layer.layer
        if shapes is not None:
            yx = tuple(s.start for s in selection.index[-2:])
            mask = shapes_mask(shapes, labels, selection.shape[-2:], yx)
            rows, cols = np.nonzero(mask)
            box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
            mask = mask[box]
            label_data = label_data[(..., *box)]
            image_data = (
                image_data[(..., *box, slice(None))]
                if image.rgb and self.channel.currentData() is None
                else image_data[(..., *box)]
            )

        # one training image per time point; planes of a stack stay together
        axes = selection.axes
        if axes.startswith("T"):
            label_list = [label_data[t] for t in range(label_data.shape[0])]
            image_list = [image_data[t] for t in range(image_data.shape[0])]
        else:
            label_list, image_list = [label_data], [image_data]
        masks = None
        if mask is not None:
            masks = [np.broadcast_to(mask, tuple(lab.shape)) for lab in label_list]
        if self.state.spatial_dims == 3:
            for lab in label_list:
                if lab.ndim < 3 or lab.shape[0] < 2:
                    raise UserError(
                        "This is a 3D model: it learns from stacks of at least 2 planes. Choose more planes."
                    )
        return image_list, label_list, masks, image, labels

    def run(self) -> Job:
        """Fine-tune the current model on the chosen layers; returns the started job."""
        from segtune.core.train.trainer import NEW_LEARNING_RATE, NEW_OPTIMIZER, TrainConfig, train

        state = self.state
        state.require_model()
        state.require_idle("fine-tuning")
        images, labels, masks, image_layer, labels_layer = self.training_data()
        head = state.config.get("head", "binary")
        normalization = state.config.get("normalization") or {}
        settings = TrainConfig(
            spatial_dims=state.spatial_dims,
            head=head,
            n_classes=int(state.config["architecture"]["out_channels"]) if head == "semantic" else None,
            patch=self.patch.value() or None,
            batch_size=self.batch_size.value() or None,
            epochs=self.epochs.value(),
            max_minutes=self.minutes.value(),
            steps_per_epoch=self.steps_per_epoch.value() or None,
            loss=self.loss.currentData(),
            learning_rate=self.learning_rate.value() or None,
            val_fraction=self.val_fraction.value(),
            patience=None,
            freeze_encoder=self.freeze_encoder.isChecked(),
            normalization=(float(normalization.get("low", 1.0)), float(normalization.get("high", 99.8))),
            clip=bool(normalization.get("clip", False)),
            device=state.device_choice,
            # pseudo-labels mark the pixels the model was unsure of; those take no part in the loss
            ignore_value=(labels_layer.metadata or {}).get("segtune_ignore_value"),
        )
        if state.source.startswith("new"):
            # a new, untrained model learns from scratch: none of the fine-tuning guards
            settings.freeze_norm, settings.l2sp, settings.keep_if_worse = False, 0.0, False
            settings.optimizer, settings.learning_rate = NEW_OPTIMIZER, settings.learning_rate or NEW_LEARNING_RATE
        settings.validate()
        start_model = copy.deepcopy(state.model)  # the current model stays as it is until training succeeds
        start_config = dict(state.config)
        start_source = state.source
        names = [image_layer.name] if len(images) == 1 else [f"{image_layer.name} t={t}" for t in range(len(images))]
        provenance = {"source": "napari widget", "image_layer": image_layer.name, "labels_layer": labels_layer.name}

        def work(progress: Any = None, cancel: Any = None) -> Any:
            arrays = [np.asarray(a) for a in images]
            label_arrays = [np.asarray(a) for a in labels]
            # with its config, so that training sees the images at the scale the model predicts at
            return train(
                arrays,
                label_arrays,
                settings,
                masks=masks,
                names=names,
                model=(start_model, start_config),
                provenance=provenance,
                progress=progress,
                cancel=cancel,
            )

        def done(result: Any) -> None:
            from segtune.core.train.trainer import held_out_summary

            self.result = result
            if result.stop_reason == "cancelled" and result.best_epoch is None:
                self.status.setText("Cancelled before the first check: the model is unchanged.")
                notify_info("Fine-tuning cancelled before the first epoch ended; the model is unchanged.")
                return
            summary = held_out_summary(result)
            if result.kept_start:
                self.status.setText(f"Fine-tuning did not help: {summary}. The model is unchanged.")
                self._repredict_layer = None
                return
            config = dict(result.config)
            config["name"] = finetuned_name(start_config.get("name", state.name))
            if start_config.get("description"):
                config["description"] = start_config["description"]
            config["lineage"] = [
                *start_config.get("lineage", []),
                {"from": start_source, "metrics": start_config.get("metrics", {})},
            ]
            state.set_model(
                result.model.cpu().eval(),
                config,
                source=f"fine-tuned ({start_source})",
                folder=state.folder,
                unsaved=True,
            )
            words = {
                "cancelled": "Cancelled: kept the best model so far",
                "completed": "Done",
                "early_stopping": "Stopped early (no more improvement)",
                "time_budget": "Time is up",
            }[result.stop_reason]
            self.status.setText(f"{words}: {summary}. Save it in the Model tab to keep it.")
            self._repredict_layer = image_layer if self.repredict_check.isChecked() else None

        self._repredict_layer = None
        self.result = None
        self.curve.clear(epochs=1)
        self.epoch_label.setText("Preparing the masks…")
        self.status.setText("")
        self._timing = {"start": time.monotonic(), "budget": settings.max_minutes * 60.0}
        return self.start_job(work, "Fine-tuning", done, busy="fine-tuning")

    def show_events(self, events: list[Any]) -> None:
        for event in events:
            if event.stage == "train" and event.metrics.get("steps_per_epoch"):
                m = event.metrics
                self.curve.add_step(m["epoch"] - 1 + m["step"] / m["steps_per_epoch"], m.get("loss", float("nan")))
            elif event.stage == "validate":
                self.curve.add_epoch(int(event.metrics.get("epoch", event.done)), event.metrics)
        self.curve.redraw()
        last_train = next((e for e in reversed(events) if e.stage == "train" and e.total), None)
        if last_train is not None and last_train.done:
            elapsed = time.monotonic() - self._timing["start"]
            left = min(
                elapsed / last_train.done * (last_train.total - last_train.done),
                max(0.0, self._timing["budget"] - elapsed),
            )
            epoch = last_train.metrics.get("epoch", "?")
            loss = last_train.metrics.get("loss")
            loss_text = f", loss {loss:.3f}" if isinstance(loss, float) else ""
            self.epoch_label.setText(f"Epoch {epoch}{loss_text} — about {format_seconds(left)} left")

    def cancelling(self) -> None:
        self.epoch_label.setText("Cancelling: finishing the current step…")

    def job_ended(self, status: str) -> None:
        self.curve.redraw(force=True)
        if status == "error":
            self.epoch_label.setText("Fine-tuning failed: see the message (bell icon, bottom right).")
        elif self.result is not None:
            self.epoch_label.setText(f"{len(self.result.history)} epoch(s) run.")
        layer = self._repredict_layer
        self._repredict_layer = None
        if (
            layer is not None
            and self.repredict is not None
            and any(same_layer(layer, other) for other in self.viewer.layers)
        ):
            run_guarded(self.repredict, layer)
