"""What the tabs that run long jobs share: the job-panel base, the plane-range control, channel lists.

:class:`JobPanel` owns a tab's Cancel button, status line and current :class:`Job`: it marks the
model busy while a job holds it, enables Cancel while one runs, emits ``finished`` once the tab's
last job ended, and says when it failed. A tab adds the widgets where it wants them and fills in
what it shows (``show_events``, ``cancelling``, ``job_ended``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

from segtune._napari._jobs import Job
from segtune._napari._layers import leading_names
from segtune._napari._state import ModelState, UserError

AXIS_WORDS = {"Z": "planes (Z)", "T": "time points (T)"}
RGB_NAMES = ("red", "green", "blue", "alpha")
GREY_TEXT = "grey (mean of red, green, blue)"
FAILED_TEXT = "Failed: see the message (bell icon, bottom right)."


class JobPanel(QWidget):
    """A tab that runs :class:`Job` s: one at a time, with a Cancel button and a status line.

    Attributes
    ----------
    viewer, state
        The napari viewer and the widget's :class:`ModelState`.
    job
        The running or last job (None before the first).
    cancel_button, status
        Cancel (enabled while a job runs) and the status line (a word-wrapping ``QLabel``); the
        tab places them in its layout.
    finished
        Signal with the job status (``"done"``, ``"cancelled"``, ``"error"``) when the tab's
        job ended; a job that started a follow-up (predict's first look) does not emit it.
    """

    finished = Signal(str)

    def __init__(self, viewer: Any, state: ModelState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.state = state
        self.job: Job | None = None
        self._busy = ""
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.status = QLabel("")
        self.status.setWordWrap(True)

    @property
    def running(self) -> bool:
        """Whether this tab's job is running."""
        return self.job is not None and self.job.running

    def require_no_job(self) -> None:
        if self.running:
            raise UserError(f"{self.job.description} is still running; wait for it or press Cancel.")

    def start_job(
        self,
        work: Callable[..., Any],
        description: str,
        done: Callable[[Any], None],
        *,
        busy: str = "",
        cancelled: Callable[[Any], None] | None = None,
        uses_torch: bool = True,
    ) -> Job:
        """Start ``work(progress=, cancel=)`` as this tab's job; returns it.

        ``busy`` (e.g. ``"predicting"``) marks the model busy until the job ended; ``done`` and
        ``cancelled`` are the job's ``on_done`` and ``on_cancelled``.
        """
        job = Job(
            work,
            description=description,
            on_events=self.show_events,
            on_done=done,
            on_cancelled=cancelled,
            on_finally=self._job_ended,
            uses_torch=uses_torch,
            parent=self,
        )
        job.finished.connect(lambda status: self.finished.emit(status) if self.job is job else None)
        self.job = job  # running from here on: what busy_changed's listeners see
        if busy:
            self.state.set_busy(busy)
        self._busy = busy
        self.cancel_button.setEnabled(True)
        return job.start()

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.running:
            self.job.cancel()
            self.cancelling()

    def _job_ended(self) -> None:
        if self.running:
            return  # the job that ended started the next one (predict's first look): still busy
        self.cancel_button.setEnabled(False)
        if self._busy:
            self._busy = ""
            self.state.set_busy("")
        self.job_ended(self.job.status if self.job is not None else "")

    # --- what a tab fills in ------------------------------------------------------------------

    def show_events(self, events: list[Any]) -> None:
        """Progress events of the running job (a batch, on the GUI thread)."""

    def cancelling(self) -> None:
        """Cancel was pressed: say so until the job stops."""
        self.status.setText("Cancelling…")

    def job_ended(self, status: str) -> None:
        """The job ended with ``status`` (the model is idle again): say how."""
        if status == "error":
            self.status.setText(FAILED_TEXT)


class PlaneRange:
    """A range of planes: the leading axis it runs along (Z or T) and its first and last plane.

    Attributes tests drive: ``axis`` (a ``QComboBox``, one item per leading axis with its size),
    ``start``, ``stop`` (``QSpinBox`` es, inclusive, numbered as on napari's slider).
    """

    def __init__(self, tooltip: str) -> None:
        self.axis = QComboBox()
        self.axis.setToolTip("Along which axis the range runs.")
        self.start = QSpinBox()
        self.stop = QSpinBox()
        for spin in (self.start, self.stop):
            spin.setRange(0, 0)
            spin.setToolTip(tooltip)
        self.row = QWidget()
        row = QHBoxLayout(self.row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.start)
        row.addWidget(QLabel("to"))
        row.addWidget(self.stop)
        self.axis.currentIndexChanged.connect(self._axis_changed)

    def add_rows(self, form: QFormLayout, planes_label: str) -> None:
        form.addRow("Range along", self.axis)
        form.addRow(planes_label, self.row)

    def set_shape(self, shape: tuple[int, ...]) -> None:
        """Offer the leading axes of a (…, Y, X) layer of this shape (none beyond two: T, Z)."""
        n_leading = max(0, len(shape) - 2)
        self.axis.blockSignals(True)
        self.axis.clear()
        if n_leading <= 2:
            for name, size in zip(leading_names(n_leading), shape, strict=False):
                self.axis.addItem(f"{AXIS_WORDS[name]}, {size}", size)
        self.axis.blockSignals(False)
        self._axis_changed()

    def _axis_changed(self, *_: Any) -> None:
        size = self.axis.currentData() or 1
        for spin in (self.start, self.stop):
            spin.setRange(0, size - 1)
        self.stop.setValue(size - 1)

    def set_enabled(self, ranged: bool) -> None:
        """Usable when the tab's choice is a range and the layer has planes to range over."""
        ranged = ranged and self.axis.count() > 0
        for widget in (self.axis, self.start, self.stop):
            widget.setEnabled(ranged)

    def selection(self) -> dict[str, int]:
        """The ``range_axis``, ``start`` and ``stop`` arguments of :func:`segtune._napari._layers.select`."""
        return {"range_axis": max(0, self.axis.currentIndex()), "start": self.start.value(), "stop": self.stop.value()}


def fill_channels(combo: QComboBox, names: list[str], in_channels: int) -> None:
    """List the image's channels by ``names`` (with "all channels" first when the model takes
    them all, and for a colour image the grey mean of its colours first when the model takes one
    channel), or "(one channel)", disabled, for a one-channel image."""
    from segtune.core.predict.inputs import plain_colour

    combo.clear()
    if names:
        if in_channels == len(names):
            combo.addItem("all channels", None)
        elif in_channels == 1 and plain_colour(names, in_channels):
            # as the bundled models read colour images in training; what the core does unasked
            combo.addItem(GREY_TEXT, "RGB")
        for i, name in enumerate(names):
            combo.addItem(name, i)
    else:
        combo.addItem("(one channel)", None)
    combo.setEnabled(bool(names))
