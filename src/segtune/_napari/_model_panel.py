"""Model tab: pick a bundled model, load a model folder or start a new one; device; save."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import guarded, notify_info, run_guarded
from segtune._napari._state import ModelState, UserError

# what the "size" choice of a new model means (base width, depth); tiny trains in seconds on a CPU
MODEL_SIZES = {
    "small (fast, fine on a laptop CPU)": (16, 3),
    "standard (best results, wants a GPU)": (32, 4),
    "tiny (quick experiments)": (8, 2),
}
# the network of a new model: (architecture, ResNet encoder)
NETWORKS = {
    "U-Net": ("unet", None),
    "U-Net, ResNet-18 encoder": ("unet", "resnet18"),
    "U-Net, ResNet-34 encoder": ("unet", "resnet34"),
    "U-Net, ResNet-50 encoder": ("unet", "resnet50"),
    "UNet++": ("unetpp", None),
}
HEADS = {
    "objects, touching ones split (interior + border)": "three_class",
    "objects vs background": "binary",
    "several classes (one label per class)": "semantic",
}


def ask_overwrite(path: Path, parent: QWidget | None = None) -> bool:
    """Ask before replacing a file or folder; True means go ahead."""
    answer = QMessageBox.question(
        parent,
        "Replace?",
        f"{path} already exists.\nReplace it?",
        QMessageBox.Yes | QMessageBox.No,
        QMessageBox.No,
    )
    return answer == QMessageBox.Yes


class ModelPanel(QWidget):
    """Choose the model every other tab uses.

    The bundled model shown in ``bundled`` is loaded as soon as it is shown (at start and on each
    choice), unless the current model has unsaved changes.

    Attributes tests (and scripts) drive: ``bundled``, ``load_bundled_button``,
    ``load_folder_button``, ``new_dims``, ``new_output``, ``new_classes``, ``new_channels``,
    ``new_size``, ``new_button``, ``device``, ``save_button``, ``info``. ``ask_folder(title)``
    and ``ask_save_folder(title)`` return a path or None (file dialogs by default);
    ``confirm_overwrite(path)`` returns True to replace (a question box by default).
    """

    def __init__(self, viewer: Any, state: ModelState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self.ask_folder = lambda title: QFileDialog.getExistingDirectory(self, title) or None
        self.ask_save_folder = lambda title: QFileDialog.getSaveFileName(self, title)[0] or None
        self.confirm_overwrite = lambda path: ask_overwrite(path, self)

        layout = QVBoxLayout(self)

        bundled_box = QGroupBox("Bundled models")
        form = QFormLayout(bundled_box)
        self.bundled = QComboBox()
        self.bundled.setToolTip("Models that come with segtune, trained on typical microscopy images.")
        self.bundled_description = QLabel()
        self.bundled_description.setWordWrap(True)
        self.load_bundled_button = QPushButton("Start again from this model")
        self.load_bundled_button.setToolTip(
            "The model chosen above is in use as soon as you choose it; this puts it back as it came "
            "(e.g. after fine-tuning, or to replace a changed model you have not saved)."
        )
        form.addRow("Model", self.bundled)
        form.addRow(self.bundled_description)
        form.addRow(self.load_bundled_button)
        layout.addWidget(bundled_box)

        self.load_folder_button = QPushButton("Load a model folder…")
        self.load_folder_button.setToolTip(
            "Use a model saved before (a folder holding config.json and weights.safetensors)."
        )
        layout.addWidget(self.load_folder_button)

        new_box = QGroupBox("New model (untrained)")
        form = QFormLayout(new_box)
        self.new_dims = QComboBox()
        self.new_dims.addItems(["2D", "3D"])
        self.new_dims.setToolTip(
            "2D looks at one plane at a time (also works on stacks, plane by plane); "
            "3D looks at whole stacks and uses the neighbouring planes."
        )
        self.new_output = QComboBox()
        self.new_output.addItems(list(HEADS))
        self.new_output.setToolTip(
            "What the model learns to draw. 'Touching ones split' learns cell borders too, "
            "so touching nuclei come out as separate objects."
        )
        self.new_classes = QSpinBox()
        self.new_classes.setRange(2, 32)
        self.new_classes.setValue(3)
        self.new_classes.setToolTip("Number of label values including background (only for 'several classes').")
        self.new_classes.setEnabled(False)
        self.new_channels = QSpinBox()
        self.new_channels.setRange(1, 8)
        self.new_channels.setToolTip("How many image channels the model looks at together (usually 1).")
        self.new_size = QComboBox()
        self.new_size.addItems(list(MODEL_SIZES))
        self.new_size.setToolTip("Bigger models can learn harder images but train and predict more slowly.")
        self.new_network = QComboBox()
        self.new_network.addItems(list(NETWORKS))
        self.new_network.setToolTip(
            "U-Net is the usual choice. A ResNet encoder is a deeper, wider feature extractor (worth it with "
            "many images, or after restoration pretraining in the Tools tab); UNet++ nests its skip connections."
        )
        self.new_button = QPushButton("Start a new model")
        self.new_button.setToolTip(
            "Create an untrained model with these settings; teach it on your masks in the Fine-tune tab."
        )
        form.addRow("Dimensions", self.new_dims)
        form.addRow("Output", self.new_output)
        form.addRow("Classes", self.new_classes)
        form.addRow("Channels", self.new_channels)
        form.addRow("Size", self.new_size)
        form.addRow("Network", self.new_network)
        form.addRow(self.new_button)
        layout.addWidget(new_box)

        current_box = QGroupBox("Current model")
        form = QFormLayout(current_box)
        self.info = QLabel("No model yet: pick one above.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextSelectableByMouse)
        row = QHBoxLayout()
        self.device = QComboBox()
        self.device.addItems(["auto", "cuda", "mps", "cpu"])
        self.device.setToolTip(
            "Where the model runs: auto picks an NVIDIA GPU (cuda), then an Apple GPU (mps), then the CPU."
        )
        self.device_label = QLabel()
        row.addWidget(self.device)
        row.addWidget(self.device_label, 1)
        self.save_button = QPushButton("Save model to a folder…")
        self.save_button.setToolTip("Keep the current (e.g. fine-tuned) model to use it again or share it.")
        form.addRow(self.info)
        form.addRow("Device", row)
        form.addRow(self.save_button)
        layout.addWidget(current_box)
        layout.addStretch(1)

        self.bundled.currentIndexChanged.connect(self._show_bundled_description)
        self.bundled.currentIndexChanged.connect(lambda *_: run_guarded(self._bundled_chosen))
        self.load_bundled_button.clicked.connect(guarded(self.load_bundled))
        self.load_folder_button.clicked.connect(guarded(self._load_folder_clicked))
        self.new_output.currentTextChanged.connect(lambda text: self.new_classes.setEnabled(HEADS[text] == "semantic"))
        self.new_button.clicked.connect(guarded(self.new_model))
        self.device.currentTextChanged.connect(lambda text: run_guarded(self._device_changed, text))
        self.save_button.clicked.connect(guarded(self._save_clicked))
        state.changed.connect(self._show_state)
        state.busy_changed.connect(self._show_busy)

        self._fill_bundled()
        self._device_changed(self.device.currentText())
        self._show_state()
        run_guarded(self._bundled_chosen)  # the model shown is the model in use: no extra click

    # --- actions ------------------------------------------------------------------------------

    def _fill_bundled(self) -> None:
        from segtune.core.models.registry import list_models

        self.bundled.clear()
        for model in list_models():
            self.bundled.addItem(model.name, model)
            self.bundled.setItemData(self.bundled.count() - 1, model.description, 3)  # 3 = ToolTipRole
        self._show_bundled_description()

    def _show_bundled_description(self, *_: Any) -> None:
        model = self.bundled.currentData()  # None only while the list is refilled
        self.bundled_description.setText(model.description if model is not None else "")

    def _bundled_chosen(self) -> None:
        """The bundled model shown becomes the current one, unless that would drop unsaved changes."""
        if self.bundled.currentData() is None or self.state.busy:
            return
        if self.state.model is not None and self.state.unsaved:
            notify_info(
                f"The current model ({self.state.name}) has changes that are not saved, so it stays in use. "
                "Save it, or press 'Start again from this model' to use the chosen one."
            )
            return
        self.load_bundled()

    def load_bundled(self, name: str | None = None) -> None:
        """Make the bundled model ``name`` (default: the one chosen in the list) current."""
        from segtune.core.models.store import load_model

        self.state.require_idle("changing the model")
        if name is None:
            name = self.bundled.currentData().name
        model, config = load_model(name, device="cpu")
        config.setdefault("name", name)
        from segtune.core.models.registry import resolve_model

        self.state.set_model(model, config, source=f"bundled model '{name}'", folder=resolve_model(name), unsaved=False)

    def _load_folder_clicked(self) -> None:
        path = self.ask_folder("Choose a segtune model folder")
        if path:
            self.load_folder(path)

    def load_folder(self, folder: str | Path) -> None:
        """Make the model saved in ``folder`` current."""
        from segtune.core.models.store import load_model

        self.state.require_idle("changing the model")
        folder = Path(folder)
        model, config = load_model(folder, device="cpu")
        self.state.set_model(model, config, source=f"folder {folder}", folder=folder, unsaved=False)

    def new_model(self) -> None:
        """Start an untrained model from the New model settings."""
        from segtune.core.models import heads
        from segtune.core.models.store import default_config
        from segtune.core.models.unet import build_model, new_architecture

        self.state.require_idle("changing the model")
        head = HEADS[self.new_output.currentText()]
        out_channels = heads.out_channels(head, self.new_classes.value())
        base, depth = MODEL_SIZES[self.new_size.currentText()]
        dims = 3 if self.new_dims.currentText() == "3D" else 2
        network, encoder = NETWORKS[self.new_network.currentText()]
        architecture = new_architecture(
            network,
            encoder=encoder,
            spatial_dims=dims,
            in_channels=self.new_channels.value(),
            out_channels=out_channels,
            base_channels=base,
            depth=depth,
        )
        model = build_model(architecture)
        model.eval()
        name = f"new_{dims}d_{head}"
        config = default_config(architecture, head=head, name=name)
        self.state.set_model(model, config, source="new (untrained)", folder=None, unsaved=True)

    def _device_changed(self, choice: str) -> None:
        from segtune.core.device import describe_device, select_device

        try:
            device = select_device(choice)
        except ValueError as e:
            self.device.blockSignals(True)
            self.device.setCurrentText(self.state.device_choice)
            self.device.blockSignals(False)
            raise UserError(f"{e}; staying on {self.state.device_choice}.") from e
        self.state.device_choice = choice
        self.device_label.setText(describe_device(device))

    def _save_clicked(self) -> None:
        path = self.ask_save_folder("Save the model as a folder")
        if path:
            self.save(path)

    def save(self, folder: str | Path, confirm: Any = None) -> Path | None:
        """Save the current model as ``folder``, asking (``confirm(path)``) before replacing one."""
        from segtune.core.models.store import save_model

        self.state.require_model()
        self.state.require_idle("saving")
        folder = Path(folder)
        overwrite = False
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            if not (confirm or self.confirm_overwrite)(folder):
                notify_info(f"Kept the existing {folder}; the model was not saved.")
                return None
            overwrite = True
        config = dict(self.state.config)
        config["name"] = folder.name
        written = save_model(self.state.model, config, folder, overwrite=overwrite)
        self.state.set_model(self.state.model, config, source=f"folder {written}", folder=written, unsaved=False)
        notify_info(f"Model saved to {written}")
        return written

    # --- display ------------------------------------------------------------------------------

    def _show_state(self) -> None:
        state = self.state
        self.save_button.setEnabled(state.model is not None and not state.busy)
        if state.model is None:
            self.info.setText("No model yet: pick a bundled model, load a folder or start a new model.")
            return
        from segtune.core.models.registry import model_description

        config = state.config
        architecture = config.get("architecture", {})
        description = config.get("description") or (model_description(state.folder) if state.folder else "")
        where = str(state.folder) if state.folder else "in memory only (not saved yet)"
        if state.folder and state.unsaved:
            where += " (changed since: save it to keep the changes)"
        classes = ", ".join(config.get("classes", []))
        lines = [
            f"<b>{state.name}</b> — {state.source}",
            description,
            f"{architecture.get('spatial_dims', '?')}D U-Net, {architecture.get('in_channels', '?')} channel(s) in; "
            f"output: {classes}",
            f"Where: {where}",
        ]
        trained = config.get("training", {}) or {}
        if trained.get("epochs"):
            lines.append(f"Trained {trained.get('epochs')} epochs")
        self.info.setText("<br>".join(line for line in lines if line))

    def _show_busy(self, what: str) -> None:
        idle = not what
        for widget in (
            self.load_bundled_button,
            self.load_folder_button,
            self.new_button,
            self.save_button,
            self.device,
        ):
            widget.setEnabled(idle)
        if idle:
            self.save_button.setEnabled(self.state.model is not None)
