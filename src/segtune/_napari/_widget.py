"""The segtune dock widget: tabs for Model, Predict, Correct, Fine-tune, Evaluate & Export, and Tools.

Each tab is one panel module; they share one :class:`~segtune._napari._state.ModelState` (the
current model, its config, the device). Every long step runs in a worker thread through
:class:`~segtune._napari._jobs.Job`, so napari stays responsive, shows a progress bar and can
cancel. The widget holds no segmentation logic: each button is a call into ``segtune.core``.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QLabel, QScrollArea, QStyle, QTabWidget, QVBoxLayout, QWidget

from segtune._napari._correct_panel import CorrectPanel
from segtune._napari._evaluate_panel import EvaluatePanel
from segtune._napari._finetune_panel import FinetunePanel
from segtune._napari._model_panel import ModelPanel
from segtune._napari._predict_panel import PredictPanel
from segtune._napari._shortcuts import SHORTCUTS, bind_shortcuts, help_text
from segtune._napari._state import ModelState
from segtune._napari._tools_panel import ToolsPanel


def _scrolling(panel: QWidget) -> QScrollArea:
    # long choices shrink (their full text is in the drop-down) so the dock never scrolls sideways
    for combo in panel.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setWidget(panel)
    return area


class SegtuneWidget(QWidget):
    """Predict, correct, fine-tune in place, evaluate and export, inside napari.

    Parameters
    ----------
    napari_viewer
        The viewer (napari passes it when the widget is opened from the Plugins menu).

    Attributes
    ----------
    state
        The shared current model.
    tabs
        The :class:`QTabWidget`; ``model_panel``, ``predict_panel``, ``correct_panel``, ``finetune_panel``,
        ``evaluate_panel`` and ``tools_panel`` are its pages.
    shortcuts
        Key -> function bound on the viewer (see :mod:`segtune._napari._shortcuts`); ``help``
        is the label listing them under the tabs.
    """

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = ModelState()
        self.setObjectName("segtune")

        self.model_panel = ModelPanel(napari_viewer, self.state)
        self.predict_panel = PredictPanel(napari_viewer, self.state)
        self.correct_panel = CorrectPanel(napari_viewer)
        self.finetune_panel = FinetunePanel(napari_viewer, self.state)
        self.finetune_panel.repredict = lambda layer: self.predict_panel.run(layer=layer)
        self.evaluate_panel = EvaluatePanel(napari_viewer, self.state, self.model_panel.save)
        self.tools_panel = ToolsPanel(napari_viewer, self.state)

        self.tabs = QTabWidget()
        self.tabs.addTab(_scrolling(self.model_panel), "Model")
        self.tabs.addTab(_scrolling(self.predict_panel), "Predict")
        self.tabs.addTab(_scrolling(self.correct_panel), "Correct")
        self.tabs.addTab(_scrolling(self.finetune_panel), "Fine-tune")
        self.tabs.addTab(_scrolling(self.evaluate_panel), "Evaluate && Export")
        self.tabs.addTab(_scrolling(self.tools_panel), "Tools")
        for index, tip in enumerate(self._tab_tips()):
            self.tabs.setTabToolTip(index, tip)

        self.shortcuts = bind_shortcuts(napari_viewer, self)
        self.help = QLabel(help_text())
        self.help.setWordWrap(True)
        self.help.setToolTip("\n".join(f"{key}: {what}" for key, what in SHORTCUTS))

        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tabs)
        layout.addWidget(self.help)
        self._fit_width()

    def _fit_width(self) -> None:
        """Wide enough that no tab needs a sideways scroll bar (the dock is made at least this wide)."""
        panels = (
            self.model_panel,
            self.predict_panel,
            self.correct_panel,
            self.finetune_panel,
            self.evaluate_panel,
            self.tools_panel,
        )
        scrollbar = self.style().pixelMetric(QStyle.PM_ScrollBarExtent)
        self.setMinimumWidth(max(panel.minimumSizeHint().width() for panel in panels) + scrollbar + 16)

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        # napari's theme (larger paddings) applies once the widget is docked: measure again
        self._fit_width()
        super().showEvent(event)

    def _tab_tips(self) -> list[str]:
        tips = {
            "Model": "Choose the model: bundled, from a folder, or a new one to train.",
            "Predict": "Segment an image with the current model.",
            "Correct": "Clean up the masks and fix objects one click at a time (Ctrl-Z undoes).",
            "Fine-tune": "Teach the model from your corrected masks.",
            "Evaluate & Export": (
                "Score a segmentation against correct masks; save masks, measurements, ROIs, the model."
            ),
            "Tools": "Make training labels with less drawing.",
        }
        return [tips.get(self.tabs.tabText(i).replace("&&", "&"), "") for i in range(self.tabs.count())]

    @property
    def busy(self) -> bool:
        """True while a long job (prediction, fine-tuning ...) is running."""
        return bool(self.state.busy)
