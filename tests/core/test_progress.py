"""The progress and cancel protocol: events, the reporter's steps, cancelling, and the CLI's tqdm bars."""

from __future__ import annotations

import io
import threading

import pytest

from segtune.core.progress import Cancelled, CancelToken, ProgressEvent, Reporter, tqdm_progress


def test_reporter_emits_one_event_per_step_with_its_defaults():
    events: list[ProgressEvent] = []
    report = Reporter(events.append, stage="predict", total=4)
    report.step(1, message="tile 1")
    report.step(2, total=8, stage="blend", loss=0.5)
    assert events == [
        ProgressEvent("predict", 1, 4, "tile 1", {}),
        ProgressEvent("blend", 2, 8, "", {"loss": 0.5}),
    ]
    assert (
        events[0].fraction == 0.25
        and ProgressEvent("x", 9, 4).fraction == 1.0
        and ProgressEvent("x", 3).fraction is None
    )
    child = report.child("validate", total=2)
    child.step(2)
    assert events[-1] == ProgressEvent("validate", 2, 2)
    Reporter().step(1)  # neither callback nor token: nothing to do, nothing fails


def test_cancel_stops_at_the_next_step_after_reporting_it():
    token = CancelToken()
    events: list[ProgressEvent] = []

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.done == 2:
            token.cancel()  # e.g. the Cancel button, pressed while step 2 is shown

    report = Reporter(progress, token, stage="train", total=5)
    report.step(1)
    with pytest.raises(Cancelled, match="cancelled by the user"):
        report.step(2)
    assert [e.done for e in events] == [1, 2] and token.cancelled
    with pytest.raises(Cancelled):
        report.child("validate").check()  # the child shares the token
    with pytest.raises(Cancelled):
        report.step(3)
    assert len(events) == 2  # nothing reported once cancelled


def test_a_token_set_in_another_thread_is_seen():
    token = CancelToken()
    thread = threading.Thread(target=token.cancel)
    thread.start()
    thread.join()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.raise_if_cancelled()


def test_tqdm_progress_drives_one_bar_per_stage():
    out = io.StringIO()
    with tqdm_progress("job", file=out, mininterval=0) as progress:
        Reporter(progress, stage="predict", total=3).step(3, message="tiles")
        Reporter(progress, stage="train", total=10).step(4, loss=0.25)
    text = out.getvalue()
    assert "predict (tiles)" in text and "3/3" in text
    assert "train" in text and "4/10" in text and "loss=0.25" in text
