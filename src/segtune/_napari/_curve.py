"""A small live training curve: loss per step, validation loss and F1 per epoch, painted with Qt.

Painted directly with ``QPainter`` rather than through matplotlib's Qt canvas: a matplotlib
redraw of even a small figure took 0.3-0.4 s of the GUI thread on a busy 2-core machine, long
enough to make the viewer stutter every time the curve updated; this widget paints in about a
millisecond.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

TRAIN_COLOUR = QColor(31, 119, 180)  # blue
VAL_COLOUR = QColor(255, 127, 14)  # orange
SCORE_COLOUR = QColor(44, 160, 44)  # green


def _nice_ceiling(value: float) -> float:
    """The next 'round' number at or above ``value`` (1, 2, 2.5, 5 x 10^k)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


class TrainingCurve(QWidget):
    """Training loss (a point per reported step) and validation loss / F1 (a point per epoch).

    The x axis is in epochs (fractional for steps); loss on the left axis, F1 (0 to 1) on the
    right. ``add_step``/``add_epoch`` store points, ``redraw`` schedules a repaint.

    Attributes
    ----------
    steps, val_loss, val_score
        The points drawn, as (epoch, value) pairs.
    epochs
        The x range (the number of epochs planned).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setFixedHeight(170)
        self.setMinimumWidth(220)
        self.setToolTip(
            "Blue: error on the training pieces (should go down). Orange: error on the held-out part. "
            "Green: how well the held-out objects are found (F1, right axis; higher is better)."
        )
        self.steps: list[tuple[float, float]] = []
        self.val_loss: list[tuple[float, float]] = []
        self.val_score: list[tuple[float, float]] = []
        self.epochs = 1.0

    def clear(self, epochs: float = 1.0) -> None:
        self.steps.clear()
        self.val_loss.clear()
        self.val_score.clear()
        self.epochs = max(1.0, float(epochs))
        self.update()

    def add_step(self, epoch: float, loss: float) -> None:
        if math.isfinite(loss):
            self.steps.append((float(epoch), float(loss)))

    def add_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        loss = metrics.get("val_loss")
        if loss is not None and math.isfinite(float(loss)):
            self.val_loss.append((float(epoch), float(loss)))
        score = metrics.get("val_matched_f1", metrics.get("val_f1"))
        if score is not None and math.isfinite(float(score)):
            self.val_score.append((float(epoch), float(score)))

    def redraw(self, force: bool = False) -> None:
        """Schedule a repaint (Qt merges several into one)."""
        self.update()

    # --- painting -----------------------------------------------------------------------------

    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        palette = self.palette()
        text_colour = palette.color(palette.WindowText)
        font = QFont(self.font())
        font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
        painter.setFont(font)
        metrics = painter.fontMetrics()
        left, right, top, bottom = (
            metrics.horizontalAdvance("0.000") + 6,
            metrics.horizontalAdvance("1.0") + 8,
            6,
            metrics.height() + 6,
        )
        plot = QRectF(left, top, max(10, self.width() - left - right), max(10, self.height() - top - bottom))

        losses = [v for _, v in self.steps] + [v for _, v in self.val_loss]
        y_max = _nice_ceiling(max(losses)) if losses else 1.0
        x_max = max([self.epochs] + [x for x, _ in self.steps + self.val_loss + self.val_score])

        def point(x: float, y: float, y_top: float) -> QPointF:
            return QPointF(
                plot.left() + plot.width() * x / x_max, plot.bottom() - plot.height() * min(max(y / y_top, 0.0), 1.0)
            )

        axis_pen = QPen(text_colour)
        axis_pen.setWidthF(0.8)
        painter.setPen(axis_pen)
        painter.drawRect(plot)
        painter.drawText(QRectF(0, plot.top() - 2, left - 3, metrics.height()), Qt.AlignRight, f"{y_max:.3g}")
        painter.drawText(QRectF(0, plot.bottom() - metrics.height(), left - 3, metrics.height()), Qt.AlignRight, "0")
        painter.drawText(QRectF(plot.right() + 3, plot.top() - 2, right, metrics.height()), Qt.AlignLeft, "1")
        painter.drawText(
            QRectF(plot.right() + 3, plot.bottom() - metrics.height(), right, metrics.height()), Qt.AlignLeft, "0"
        )
        painter.drawText(
            QRectF(plot.left(), plot.bottom() + 2, plot.width(), metrics.height()),
            Qt.AlignHCenter,
            f"epoch (of {x_max:g})",
        )
        painter.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), metrics.height()), Qt.AlignLeft, "0")

        for points, colour, y_top, marks in (
            (self.steps, TRAIN_COLOUR, y_max, False),
            (self.val_loss, VAL_COLOUR, y_max, True),
            (self.val_score, SCORE_COLOUR, 1.0, True),
        ):
            if not points:
                continue
            pen = QPen(colour)
            pen.setWidthF(1.4)
            painter.setPen(pen)
            path = QPainterPath(point(*points[0], y_top))
            for x, y in points[1:]:
                path.lineTo(point(x, y, y_top))
            painter.drawPath(path)
            if marks:
                painter.setBrush(colour)
                for x, y in points:
                    painter.drawEllipse(point(x, y, y_top), 2.2, 2.2)
                painter.setBrush(Qt.NoBrush)

        # legend, top right inside the plot
        x = plot.right() - 4
        for label, colour in (("F1", SCORE_COLOUR), ("val loss", VAL_COLOUR), ("loss", TRAIN_COLOUR)):
            width = metrics.horizontalAdvance(label)
            x -= width
            painter.setPen(colour)
            painter.drawText(QPointF(x, plot.top() + metrics.ascent() + 2), label)
            x -= 10
        painter.end()
