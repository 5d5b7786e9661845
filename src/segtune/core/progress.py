"""The one progress and cancel protocol that every long call in ``segtune.core`` accepts.

A long call (training, prediction, pretraining, batch commands) takes two optional keyword
arguments:

``progress``
    a callable taking one :class:`ProgressEvent`. The CLI passes a tqdm-driving callback
    (:func:`tqdm_progress`), the napari widget one that forwards events to its worker thread.
``cancel``
    a :class:`CancelToken`. The long call checks it at every step (a tile batch, a training
    step) and stops by raising :class:`Cancelled` after leaving everything it already wrote
    valid. A progress callback may also raise :class:`Cancelled` itself.

Inside the core, a :class:`Reporter` bundles both so a loop needs one line per step::

    report = Reporter(progress, cancel, stage="predict", total=n_tiles)
    for i, tile in enumerate(tiles):
        ...
        report.step(i + 1)          # emits an event, then raises Cancelled if asked to stop

The protocol is plain Python: no Qt signals, no threads of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CancelToken",
    "Cancelled",
    "ProgressCallback",
    "ProgressEvent",
    "Reporter",
    "tqdm_progress",
]


class Cancelled(Exception):
    """Raised inside a long call when its :class:`CancelToken` was cancelled.

    Whatever the call had already written (a checkpoint, finished output chunks) is valid.
    """


class CancelToken:
    """A thread-safe flag another thread (a Cancel button, a signal handler) can set."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        """Ask the long call holding this token to stop at its next step."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long call.

    Attributes
    ----------
    stage
        What is running: ``"predict"``, ``"train"``, ``"validate"``, ``"pretrain"`` ...
    done, total
        Steps finished and steps expected (``total`` is None when unknown).
    message
        A short human-readable note ("epoch 3/20", "image_01.tif").
    metrics
        Numbers worth plotting or showing (``{"loss": 0.31, "val_f1": 0.84, "epoch": 3}``).
    """

    stage: str
    done: int
    total: int | None = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[ProgressEvent], None]


class Reporter:
    """Emit events to an optional callback and honour an optional cancel token.

    Parameters
    ----------
    progress
        Callback receiving each :class:`ProgressEvent`, or None.
    cancel
        Token checked before and after each event, or None.
    stage, total
        Defaults for the events this reporter emits.
    """

    def __init__(
        self,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        *,
        stage: str = "",
        total: int | None = None,
    ) -> None:
        self.progress = progress
        self.cancel = cancel
        self.stage = stage
        self.total = total

    def check(self) -> None:
        """Raise :class:`Cancelled` if the token was cancelled."""
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()

    def step(
        self,
        done: int,
        *,
        total: int | None = None,
        message: str = "",
        stage: str | None = None,
        **metrics: Any,
    ) -> None:
        """Report ``done`` steps finished, then stop if cancelled."""
        self.check()
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    stage=self.stage if stage is None else stage,
                    done=done,
                    total=self.total if total is None else total,
                    message=message,
                    metrics=dict(metrics),
                )
            )
        self.check()

    def child(self, stage: str, total: int | None = None) -> Reporter:
        """A reporter for a sub-task sharing this one's callback and token."""
        return Reporter(self.progress, self.cancel, stage=stage, total=total)


@contextmanager
def tqdm_progress(desc: str = "", **tqdm_kwargs: Any) -> Iterator[ProgressCallback]:
    """A progress callback that drives one tqdm bar per stage (for the command line).

    Examples
    --------
    >>> with tqdm_progress("predict") as progress:      # doctest: +SKIP
    ...     predict_raw(model, image, spatial_dims=2, progress=progress)
    """
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def callback(event: ProgressEvent) -> None:
        bar = bars.get(event.stage)
        if bar is None:
            bar = tqdm(total=event.total, desc=event.stage or desc, **tqdm_kwargs)
            bars[event.stage] = bar
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        if event.message:  # what the step is doing ("tiles", "epoch 3/20")
            bar.set_description_str(f"{event.stage or desc} ({event.message})", refresh=False)
        if event.metrics:
            bar.set_postfix(
                {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in event.metrics.items()},
                refresh=False,
            )
        bar.n = event.done
        bar.refresh()

    try:
        yield callback
    finally:
        for bar in bars.values():
            bar.close()
