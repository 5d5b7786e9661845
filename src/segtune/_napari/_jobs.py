"""Running one long ``segtune.core`` call off the GUI thread: progress, Cancel, plain-language errors.

A :class:`Job` runs ``func(progress=..., cancel=...)`` in a napari thread worker. The core call
reports :class:`~segtune.core.progress.ProgressEvent` objects through ``progress``; they are put
on a queue in the worker thread and drained on the GUI thread every 100 ms, so however often the
core reports (once per tile, once per training step) the event loop gets a handful of updates a
second and stays free to redraw. The napari progress bar (bottom right, "activity") follows the
events; Cancel sets the :class:`~segtune.core.progress.CancelToken` the core call checks at every
step. Whatever goes wrong ends as one napari notification in plain words, never as a frozen or
crashed viewer.
"""

from __future__ import annotations

import logging
import os
import queue
import time
import traceback
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QObject, QTimer, Signal

from segtune._napari._state import UserError
from segtune.core.progress import Cancelled, CancelToken, ProgressEvent

logger = logging.getLogger(__name__)

DRAIN_MS = 100


def plain_message(error: BaseException) -> str:
    """What went wrong, in words a biologist can act on."""
    text = str(error).strip()
    name = type(error).__name__
    if isinstance(error, MemoryError) or name == "OutOfMemoryError" or "out of memory" in text.lower():
        return (
            "Not enough memory for this step. Try a smaller tile size, predicting the visible plane "
            "only, a smaller region, or the CPU (Model tab) if the GPU is full."
        )
    if isinstance(error, UserError):
        return text
    if isinstance(error, FileExistsError):
        return f"{text[:1].upper()}{text[1:]}" if text else "The file already exists."
    if isinstance(error, (ValueError, FileNotFoundError, PermissionError)) or name in (
        "ImageReadError",
        "ModelFormatError",
        "OutputError",
    ):
        return f"{text[:1].upper()}{text[1:]}" if text else name
    return f"Something went wrong ({name}: {text}). The viewer is fine; details are in the console log."


def notify_error(error: BaseException) -> None:
    """Show ``error`` as a napari error notification (and log its traceback for the curious)."""
    from napari.utils.notifications import show_error

    if not isinstance(error, UserError):
        logger.error("segtune widget: %s", "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    show_error(plain_message(error))


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def run_guarded(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func(*args)``; an exception becomes a notification (and None is returned)."""
    try:
        return func(*args)
    except Exception as e:  # noqa: BLE001 - a button must never crash the viewer
        notify_error(e)
        return None


def guarded(func: Callable[[], Any]) -> Callable[..., None]:
    """A Qt slot calling ``func()`` (Qt's own arguments dropped), errors shown as notifications."""

    def slot(*_: Any) -> None:
        run_guarded(func)

    return slot


def worker_cpu_threads() -> int:
    """CPU threads a widget job's torch work may use: all cores but one, which napari keeps.

    PyTorch's OpenMP threads spin while they wait for each other; with every core busy the GUI
    thread then waits for a core and the viewer stutters, and on a machine whose cores are
    shared the spinning threads slow each other down several-fold. One core left free avoids both.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def _call(
    func: Callable[..., Any], events: queue.SimpleQueue, token: CancelToken, cpu_threads: int | None
) -> tuple[str, Any]:
    """Runs in the worker thread; never raises, so napari never shows a raw traceback."""
    previous = None
    try:
        if cpu_threads is not None:
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(cpu_threads)
        return "done", func(progress=events.put, cancel=token)
    except Cancelled as e:
        return "cancelled", e
    except Exception as e:  # noqa: BLE001 - every failure becomes a notification, not a dead thread
        return "error", e
    finally:
        if previous is not None:
            import torch

            torch.set_num_threads(previous)


class Job(QObject):
    """One long core call in a worker thread.

    Parameters
    ----------
    func
        Called as ``func(progress=callback, cancel=token)`` in the worker thread. It must not
        touch Qt or napari layers; it returns the result handed to ``on_done``.
    description
        Shown on the napari progress bar.
    on_events
        Called on the GUI thread with the list of :class:`ProgressEvent` that arrived since the
        last call (at most every 100 ms).
    on_done
        Called on the GUI thread with the result when ``func`` returned. An exception it raises
        becomes a notification like one from ``func``.
    on_cancelled
        Called on the GUI thread with the :class:`Cancelled` exception when the user cancelled.
    on_finally
        Called on the GUI thread last, whatever happened (re-enable buttons here).
    uses_torch
        The call runs a model: its torch CPU threads are limited to :func:`worker_cpu_threads`.

    Attributes
    ----------
    finished
        Signal with ``"done"``, ``"cancelled"`` or ``"error"``, emitted after ``on_finally``.
    status
        The same, once finished; ``"running"`` before.
    returned_at
        ``time.monotonic()`` when the worker's result reached the GUI thread (before ``on_done``
        adds layers), or None while running.
    error
        The exception, when ``status == "error"``.
    """

    finished = Signal(str)

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        description: str,
        on_events: Callable[[list[ProgressEvent]], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_cancelled: Callable[[Cancelled], None] | None = None,
        on_finally: Callable[[], None] | None = None,
        uses_torch: bool = False,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.func = func
        self.description = description
        self.on_events = on_events
        self.on_done = on_done
        self.on_cancelled = on_cancelled
        self.on_finally = on_finally
        self.cpu_threads = worker_cpu_threads() if uses_torch else None
        self.token = CancelToken()
        self.status = "running"
        self.error: BaseException | None = None
        self.started_at = 0.0
        self.returned_at: float | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(DRAIN_MS)
        self._timer.timeout.connect(self._drain)
        self._bar: Any = None
        self.worker: Any = None

    def start(self) -> Job:
        from napari.qt.threading import create_worker
        from napari.utils import progress

        self.started_at = time.monotonic()
        self._bar = progress(total=0, desc=self.description)
        self.worker = create_worker(_call, self.func, self._events, self.token, self.cpu_threads, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self._timer.start()
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the core call to stop at its next step (it keeps what it already finished)."""
        self.token.cancel()
        if self._bar is not None:
            self._bar.set_description(f"{self.description}: cancelling")

    @property
    def running(self) -> bool:
        return self.status == "running"

    def _drain(self) -> None:
        batch: list[ProgressEvent] = []
        while True:
            try:
                batch.append(self._events.get_nowait())
            except queue.Empty:
                break
        if not batch:
            return
        last = batch[-1]
        # updating napari's bar can process Qt events, so the job may finish (run _returned, which
        # closes the bar and shows the final state) inside this method: the widget's own display
        # takes the events first, so that a late batch never overwrites that final state, and the
        # bar is worked on through a local reference
        bar = self._bar
        try:
            if self.on_events is not None:
                self.on_events(batch)
            if bar is not None:
                if last.total and bar.total != last.total:
                    bar.total = last.total
                    bar.n = 0
                if last.total:
                    bar.update(max(0, min(last.done, last.total) - bar.n))
                text = f"{self.description}: {last.message}" if last.message else self.description
                if text != bar.desc:
                    bar.set_description(text)
        except Exception as e:  # noqa: BLE001 - a display error must not kill the job or Qt
            logger.warning("progress display failed: %s", e)

    def _returned(self, outcome: tuple[str, Any]) -> None:
        self.returned_at = time.monotonic()
        self._timer.stop()
        self._drain()
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        status, value = outcome
        try:
            if status == "done":
                if self.on_done is not None:
                    self.on_done(value)
            elif status == "cancelled":
                if self.on_cancelled is not None:
                    self.on_cancelled(value)
                else:
                    notify_info(f"{self.description}: cancelled")
            else:
                self.error = value
                notify_error(value)
        except Exception as e:  # noqa: BLE001 - a failure while showing results is reported, not raised into Qt
            status, self.error = "error", e
            notify_error(e)
        self.status = status
        try:
            if self.on_finally is not None:
                self.on_finally()
        finally:
            self.finished.emit(status)


def format_seconds(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``: time left in words."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
