"""The one training loop: epochs of optimiser steps, with the schedule, mixed precision, the time budget and cancel.

:func:`run_epochs` is the loop that :func:`segtune.core.train.trainer.train` (supervised
training and fine-tuning) and :func:`segtune.core.train.pretrain.pretrain` (pretext,
contrastive and Noise2Noise pretraining) share. Each caller composes it from what differs:

``step_loss(epoch, step)``
    draws a batch and returns the loss to record and the loss to minimise (the same tensor
    unless a penalty such as L2-SP is added).
``after_step(epoch, step, global_step, mean_loss)``
    reports progress and says whether the time budget is spent (the epoch then ends early).
``end_epoch(summary)``
    validates, records, saves; returns the reason to stop (``"early_stopping"``,
    ``"time_budget"``) or None to go on.

The loop itself owns what every run does alike: the learning rate before each step
(:class:`WarmupCosine` or a torch scheduler through :class:`TorchSchedule`), zeroing the
gradients, refusing a loss that is no longer finite, the backward pass (scaled under
mixed precision) and the optimiser step, and a cancel (:class:`~segtune.core.progress.Cancelled`
raised by a progress report) turned into ``"cancelled"``. The helpers beside it (seeding,
autocast, the time-budget arithmetic, JSON-safe values, the CSV log) are the ones both
callers use.
"""

from __future__ import annotations

import csv
import io
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from segtune.core.progress import Cancelled

__all__ = [
    "EpochSummary",
    "TorchSchedule",
    "WarmupCosine",
    "autocast",
    "json_safe",
    "projected_steps",
    "run_epochs",
    "seed_everything",
    "write_csv_log",
]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- third-party code may still use the legacy RNG
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: bool):
    """Mixed precision (float16) on CUDA when ``amp``; a disabled autocast elsewhere."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as None and NumPy scalars as Python numbers (nested)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return json_safe(value.item())
    return value


def write_csv_log(
    path: Path, columns: Sequence[str], history: Iterable[dict[str, Any]], formats: dict[str, str] | None = None
) -> None:
    """Write one row per epoch of ``history`` to the CSV file ``path`` (atomically).

    Floats are written with ``.6g`` unless ``formats`` names another format for their column;
    missing values and None are empty cells.
    """
    from segtune.core.files import atomic_write_text

    formats = formats or {}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(
            {
                k: ""
                if row.get(k) is None
                else format(row[k], formats.get(k, ".6g"))
                if isinstance(row[k], float)
                else row[k]
                for k in columns
            }
        )
    atomic_write_text(path, buffer.getvalue())


def warmup_cosine_factor(step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """Learning-rate multiplier: a linear warm-up over ``min(20, total_steps / 20)`` steps, then
    cosine annealing to 2 % over the steps or, with a time ``budget`` (seconds), over the time,
    whichever ends first."""
    warmup = min(20, max(1, total_steps // 20))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if budget:
        progress = max(progress, elapsed / budget)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def projected_steps(done: int, total: int, elapsed: float, budget: float | None) -> int:
    """The steps training will have run when it stops: all of them, or with a time budget as many
    as fit in it at the pace so far (so a progress bar's end and time left mean the budget)."""
    if not budget or elapsed <= 0 or done < 1:
        return total
    return int(min(total, max(done, round(done * budget / elapsed))))


class Schedule(Protocol):
    """Sets the learning rate around each optimiser step."""

    def before_step(self, global_step: int) -> None: ...

    def after_step(self) -> None: ...


class WarmupCosine:
    """:func:`warmup_cosine_factor` times ``learning_rate``, set before each step.

    ``elapsed`` returns the seconds trained so far (a resumed run's included) and ``budget``
    is the time budget in the same terms (None: anneal over the steps only).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        learning_rate: float,
        total_steps: int,
        elapsed: Callable[[], float],
        budget: float | None,
    ) -> None:
        self.optimizer, self.learning_rate, self.total_steps = optimizer, learning_rate, total_steps
        self.elapsed, self.budget = elapsed, budget

    def before_step(self, global_step: int) -> None:
        factor = warmup_cosine_factor(global_step, self.total_steps, self.elapsed(), self.budget)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate * factor

    def after_step(self) -> None:
        pass


class TorchSchedule:
    """A torch learning-rate scheduler stepped after every optimiser step."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def before_step(self, global_step: int) -> None:
        pass

    def after_step(self) -> None:
        self.scheduler.step()


@dataclass
class EpochSummary:
    """What one epoch of :func:`run_epochs` did."""

    epoch: int
    loss_sum: float  # the sum of the recorded step losses
    steps: int
    started: float  # time.monotonic() at the epoch's start
    out_of_time: bool  # the epoch ended early because ``after_step`` said so
    global_step: int

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(1, self.steps)


def run_epochs(
    epochs: Iterable[int],
    steps_per_epoch: int,
    optimizer: torch.optim.Optimizer,
    *,
    step_loss: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
    after_step: Callable[[int, int, int, float], bool],
    end_epoch: Callable[[EpochSummary], str | None],
    begin_epoch: Callable[[], None] | None = None,
    schedule: Schedule | None = None,
    scaler: torch.amp.GradScaler | None = None,
    global_step: int = 0,
    loss_name: str = "training",
) -> tuple[str, int]:
    """Run ``epochs`` of ``steps_per_epoch`` optimiser steps (see the module docstring).

    Returns
    -------
    stop_reason, global_step
        ``"completed"``, the reason ``end_epoch`` gave, or ``"cancelled"`` (a progress report
        raised :class:`~segtune.core.progress.Cancelled`; what the last finished epoch saved
        stays as it is), and the steps run in all.

    Raises
    ------
    FloatingPointError
        The loss became NaN or infinite (the message says to lower the learning rate).
    """
    try:
        for epoch in epochs:
            epoch_start = time.monotonic()
            if begin_epoch is not None:
                begin_epoch()
            loss_sum, steps_done, out_of_time = 0.0, 0, False
            for step in range(steps_per_epoch):
                if schedule is not None:
                    schedule.before_step(global_step)
                optimizer.zero_grad(set_to_none=True)
                loss, total = step_loss(epoch, step)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the {loss_name} loss became {loss.item()} at epoch {epoch}, step {step + 1}; "
                        "lower the learning rate"
                    )
                if scaler is not None:
                    scaler.scale(total).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    optimizer.step()
                if schedule is not None:
                    schedule.after_step()
                global_step += 1
                steps_done += 1
                loss_sum += float(loss.detach())
                if after_step(epoch, step, global_step, loss_sum / steps_done):
                    out_of_time = True
                    break
            reason = end_epoch(EpochSummary(epoch, loss_sum, steps_done, epoch_start, out_of_time, global_step))
            if reason is not None:
                return reason, global_step
    except Cancelled:
        return "cancelled", global_step
    return "completed", global_step
