"""A progress bar with steps done and time left, shown inside a panel (beside its Cancel button).

napari's own progress bar sits in the collapsed activity panel at the bottom right, where
nobody looks while waiting for a prediction; this one sits under the button that started the job.
"""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QVBoxLayout, QWidget

from segtune._napari._jobs import format_seconds


class ProgressRow(QWidget):
    """``[=====      ] [Cancel]`` over ``12/40 tiles, about 8 s left``.

    Parameters
    ----------
    cancel_button
        The panel's Cancel button, placed at the right of the bar.

    Attributes
    ----------
    bar, text
        The ``QProgressBar`` and the ``QLabel`` under it (tests read them).
    """

    def __init__(self, cancel_button: QWidget | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        row.addWidget(self.bar, 1)
        if cancel_button is not None:
            row.addWidget(cancel_button)
        layout.addLayout(row)
        self.text = QLabel("")
        self.text.setWordWrap(True)
        layout.addWidget(self.text)
        self._start = 0.0
        self._first: tuple[float, int] | None = None
        self._total: int | None = None

    def start(self, text: str = "Starting…") -> None:
        """A job began: the bar is busy (moving) until the first step is reported."""
        self._start = time.monotonic()
        self._first = None
        self._total = None
        self.bar.setRange(0, 0)  # Qt's "busy" animation while the total is unknown
        self.text.setText(text)

    def show_event(self, event: Any, unit: str = "steps") -> None:
        """Show a :class:`~segtune.core.progress.ProgressEvent`: steps done, and time left once measurable."""
        if not event.total:
            if event.message:
                self.text.setText(event.message)
            return
        now = time.monotonic()
        if event.total != self._total:  # a new stage (or the next plane's tiles): measure afresh
            self._total = int(event.total)
            self._first = (now, int(event.done))
            self.bar.setRange(0, self._total)
        self.bar.setValue(min(int(event.done), self._total))
        words = event.message or f"{event.done}/{event.total} {unit}"
        first_time, first_done = self._first or (now, 0)
        if event.done > first_done and now > first_time:
            rate = (now - first_time) / (event.done - first_done)
            words += f", about {format_seconds(rate * (event.total - event.done))} left"
        self.text.setText(words)

    def finish(self, text: str = "") -> None:
        """The job ended: the bar is full (or empty when ``text`` says it did not finish)."""
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self._total else 0)
        elapsed = time.monotonic() - self._start if self._start else 0.0
        self.text.setText(text or (f"took {format_seconds(elapsed)}" if elapsed else ""))
