"""Training and fine-tuning a U-Net: :func:`train`, composed of phases around the one training loop.

The one entry point is :func:`train`, which takes arrays in memory (the napari widget passes
layer data) and returns a :class:`TrainResult`; :func:`train_files` reads image and label
files first (the ``segtune train`` command). With ``out`` the model folder is written as it
trains and is loadable at every moment, even after ``kill -9``:

``out/config.json``, ``out/weights.safetensors``
    the best model so far (by the validation monitor), rewritten atomically when it improves;
    the untrained (or starting) model until the first validation.
``out/training_log.csv``
    one row per epoch: losses, validation metrics, learning rate, time.
``out/checkpoint/last.safetensors``
    everything needed to continue exactly where the last finished epoch left off (current
    weights, optimizer moments, random states, history; no pickle: tensors plus a JSON
    header), rewritten atomically after every epoch. ``resume=True`` picks it up.

Training stops when the epochs are done, when the monitored metric has not improved for
``patience`` epochs (early stopping), when ``max_minutes`` runs out, or when the cancel token
is set; in every case the best weights are restored into the returned model and saved.

:func:`train` runs its phases in order: open the run (settings, folder, checkpoint), resolve
the starting model, prepare the data, set up the run (:class:`_Training`), the loop
(:func:`segtune.core.train.loop.run_epochs`), finish. The settings are in
:mod:`.settings`, validation and the held-out rule in :mod:`.validation`, checkpoints in
:mod:`.checkpoint`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from segtune.core.progress import CancelToken, ProgressCallback
from segtune.core.train.checkpoint import CHECKPOINT_DIR, CHECKPOINT_NAME
from segtune.core.train.phases import check_inputs, open_run, prepare_data, resolve_start
from segtune.core.train.run import LOG_NAME, TrainingRun
from segtune.core.train.settings import (
    FINETUNE_L2SP,
    FINETUNE_LEARNING_RATE,
    FINETUNE_OPTIMIZER,
    NEW_LEARNING_RATE,
    NEW_MAX_DIAMETER,
    NEW_OPTIMIZER,
    TrainConfig,
    TrainResult,
    auto_settings,
)
from segtune.core.train.validation import held_out_summary

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_NAME",
    "FINETUNE_L2SP",
    "FINETUNE_LEARNING_RATE",
    "FINETUNE_OPTIMIZER",
    "LOG_NAME",
    "NEW_LEARNING_RATE",
    "NEW_MAX_DIAMETER",
    "NEW_OPTIMIZER",
    "STOP_REASONS",
    "TrainConfig",
    "TrainResult",
    "auto_settings",
    "held_out_summary",
    "read_log",
    "train",
    "train_files",
]

STOP_REASONS = ("completed", "early_stopping", "time_budget", "cancelled")


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
    validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    model: nn.Module | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train a new U-Net, or fine-tune one, on images and labels held in memory.

    Parameters
    ----------
    images
        One array per image: ``(Y, X)`` or ``(Z, Y, X)``, optionally with a channel axis first
        or last (matched against the labels' shape).
    labels
        One integer array per image, of the image's spatial shape: a binary mask, instance
        ids, or class indices for a semantic head.
    config
        The training settings (:class:`TrainConfig`; defaults when None).
    masks
        Optional per-image arrays: pixels where the mask is 0 are ignored by the loss.
    names
        Names of the images (for messages, the split record and the model's provenance).
    validation
        Optional ``(images, labels)`` held out by the caller: they alone validate (rescaled and
        normalised like the training images) and ``val_fraction`` is not applied.
    model
        None for a new model; a module, a ``(module, config)`` pair, a bundled model name or a
        model folder to fine-tune. A starting model's head, normalisation and object diameter
        are kept: training images are zoomed to the object size it predicts at. A module given is
        trained in place (``result.model`` is that module, moved to the training device); pass
        ``copy.deepcopy(module)`` to keep the original, as the widget does.
    out
        The model folder to write while training (see the module docstring); None keeps the
        model in memory only.
    overwrite
        Allow ``out`` to exist already (its model is replaced).
    resume
        Continue from ``out/checkpoint/`` (same data and settings). ``epochs`` and
        ``max_minutes`` are the whole run's, as if it had never stopped: raise them to train on
        (``max_minutes`` None keeps the run's own budget).
    provenance
        Extra facts to record under ``config["training"]`` (the command line, file names).
    progress, cancel
        Progress callback and cancel token (:mod:`segtune.core.progress`). Progress events:
        stage ``"train"`` per step (metrics ``epoch``, ``step``, ``loss``, ``lr``) and stage
        ``"validate"`` per epoch (the epoch's history entry). Cancelling stops at the next step
        and returns with ``stop_reason == "cancelled"``, the best model saved.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Mismatched image/label shapes or counts, labels without any foreground, bad settings,
        or a starting model that does not fit the data.
    FileExistsError
        ``out`` exists and neither ``overwrite`` nor ``resume`` is given.
    FileNotFoundError
        ``resume`` without a checkpoint in ``out``.

    Examples
    --------
    >>> result = train([image], [labels], TrainConfig(epochs=5, patch=128), out="my_model")  # doctest: +SKIP
    >>> result.stop_reason, result.best_metrics["val_matched_f1"]                               # doctest: +SKIP
    ('completed', 0.91)
    """
    started = time.monotonic()
    config = copy.deepcopy(config) if config is not None else TrainConfig()
    config.validate()
    images, labels, masks, names = check_inputs(images, labels, masks, names)
    config, out_folder, checkpoint = open_run(config, out, overwrite=overwrite, resume=resume)
    start = resolve_start(model, config, checkpoint, out_folder)
    data = prepare_data(images, labels, masks, names, validation, config, start)
    run = TrainingRun(
        config,
        start,
        data,
        out_folder,
        checkpoint,
        started=started,
        provenance=provenance,
        progress=progress,
        cancel=cancel,
    )
    try:
        stop_reason = run.loop()
    except BaseException:
        if run.created_folder and not run.history:  # a folder no epoch completed would only block a rerun
            shutil.rmtree(out_folder, ignore_errors=True)
        raise
    return run.finish(stop_reason)


def train_files(
    image_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """:func:`train` on image and label files (any format :func:`segtune.core.io.open_image` reads).

    Images and labels are paired in the order given. The paths and the command line are
    recorded in the model's config.
    """
    from segtune.core.models.store import ModelFormatError, read_config
    from segtune.core.train.data import load_pairs

    in_channels = None  # of the model trained further, when there is one
    with contextlib.suppress(FileNotFoundError, ModelFormatError):  # train() says what is wrong with it
        if model is not None or resume:
            in_channels = int(read_config(out if resume else model)["architecture"]["in_channels"])
    images, labels, names = load_pairs(image_paths, label_paths, in_channels)
    provenance = {"label_files": [str(p) for p in label_paths]}
    if command is not None:
        provenance["command"] = command
    return train(
        images,
        labels,
        config,
        names=names,
        model=model,
        out=out,
        overwrite=overwrite,
        resume=resume,
        provenance=provenance,
        progress=progress,
        cancel=cancel,
    )


def read_log(folder: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a model folder's ``training_log.csv``."""
    with open(Path(folder) / LOG_NAME, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
