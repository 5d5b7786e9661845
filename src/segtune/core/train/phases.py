"""The phases of :func:`~segtune.core.train.trainer.train` before the loop: open the run, resolve the starting
model, prepare the data.

:func:`open_run` checks the model folder and, when resuming, takes the interrupted run's
settings from its checkpoint; :func:`resolve_start` loads the starting model, whose head,
normalisation and object diameter decide the input pipeline of a fine-tuned one;
:func:`prepare_data` checks the images and labels, decides the rescaling and makes the
training and validation samples.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.metrics import as_labels
from segtune.core.models.heads import head_of
from segtune.core.models.unet import build_model
from segtune.core.normalize import DEFAULT_PERCENTILES, check_pixels, model_percentiles
from segtune.core.train.checkpoint import load_checkpoint
from segtune.core.train.data import Sample, make_sample, split_samples
from segtune.core.train.losses import parse_loss
from segtune.core.train.replay import find_replay
from segtune.core.train.settings import NEW_MAX_DIAMETER, TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["Start", "TrainingData", "check_inputs", "open_run", "prepare_data", "resolve_start"]


@dataclass
class Start:
    """The starting model (None for a new one) and what its config says."""

    model: nn.Module | None
    base_config: dict[str, Any]
    base_name: str | None
    resumed_config: dict[str, Any] | None


@dataclass
class TrainingData:
    """The training and validation samples, normalised and rescaled, and the object size."""

    names: list[str]
    train_samples: list[Sample]
    val_samples: list[Sample]
    in_channels: int
    scale: float  # the zoom of an image with the median object size (each image is zoomed by its own)
    model_diameter: float | None  # the objects' diameter after rescaling (what the model sees)
    replay_samples: list[Sample] = field(default_factory=list)  # general crops mixed in when fine-tuning
    replay_path: Path | None = None


def check_inputs(images, labels, masks, names) -> tuple[list, list, list, list[str]]:
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s); give one label image per image")
    if not images:
        raise ValueError("no training images given")
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} mask(s) for {len(images)} image(s)")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    return images, labels, masks, names


def open_run(
    config: TrainConfig,
    out: str | os.PathLike | None,
    *,
    overwrite: bool,
    resume: bool,
) -> tuple[TrainConfig, Path | None, tuple[dict[str, torch.Tensor], dict[str, Any]] | None]:
    """Check the model folder; when resuming, read the checkpoint and take the interrupted run's
    settings (only the budgets may change)."""
    out_folder = Path(out) if out is not None else None
    if resume and out_folder is None:
        raise ValueError("resume needs the model folder (out) that holds the checkpoint")
    checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    if out_folder is not None:
        if resume:
            checkpoint = load_checkpoint(out_folder)
        elif out_folder.exists() and not out_folder.is_dir():
            raise FileExistsError(
                f"{out_folder} is an existing file, not a model folder; choose another name for the model"
            )
        elif out_folder.exists() and any(out_folder.iterdir()) and not overwrite:
            raise FileExistsError(
                f"model folder {out_folder} already exists; pass --overwrite to replace it or --resume to continue it"
            )
    if checkpoint is not None:
        saved = TrainConfig.from_dict(checkpoint[1]["train_config"])
        # the data pipeline and the model must be those of the interrupted run; budgets may change
        config = TrainConfig.from_dict(
            {
                **saved.to_dict(),
                "epochs": config.epochs,
                "max_minutes": saved.max_minutes if config.max_minutes is None else config.max_minutes,
                "patience": config.patience,
                "device": config.device,
            }
        )
        # epochs and minutes are the whole run's, as if it had never stopped: raise them to train on
        state = checkpoint[1]
        if int(state["epoch"]) >= config.epochs:
            raise ValueError(
                f"{out_folder} has run all {config.epochs} epochs it was given: "
                "give more epochs (the whole run's) to train on"
            )
        used = float(state.get("elapsed", 0.0))
        if config.max_minutes and used >= config.max_minutes * 60.0:
            raise ValueError(
                f"{out_folder} has trained {used / 60:.1f} minutes, its whole {config.max_minutes:g}-minute budget: "
                "give a larger max_minutes (the whole run's) to train on"
            )
    return config, out_folder, checkpoint


def resolve_start(model: Any, config: TrainConfig, checkpoint: Any, out_folder: Path | None) -> Start:
    """The starting model, which decides the input pipeline of a fine-tuned one: its head,
    normalisation and object diameter fill the settings left open (``config`` is updated)."""
    from segtune.core.models.store import load_model, read_config

    base_config: dict[str, Any] = {}
    base_name = None
    resumed_config: dict[str, Any] | None = None
    if checkpoint is not None:
        # the interrupted run's own folder says what the network is and where it came from
        resumed_config = read_config(out_folder)
        if model is not None:
            logger.warning("resuming %s: its checkpoint replaces the starting model given", out_folder)
        model = build_model(resumed_config["architecture"])
        base_config = resumed_config
    if isinstance(model, (str, os.PathLike)):
        base_name = str(model)
        model, base_config = load_model(model, device="cpu")
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], dict):
        model, base_config = model[0], dict(model[1])  # a module with its config (the widget's model)
        base_name = base_config.get("name")
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(
            f"model must be None, a torch module, a (module, config) pair, a bundled model name or a folder, "
            f"got {type(model).__name__}"
        )
    if model is not None:
        architecture = getattr(model, "architecture", None) or base_config.get("architecture", {})
        model_head = base_config.get("head") or head_of(int(architecture.get("out_channels", 1)))
        if config.head is not None and config.head != model_head:
            raise ValueError(f"the starting model has a {model_head} head; it cannot be trained as {config.head}")
        config.head = model_head
        if architecture.get("spatial_dims", config.spatial_dims) != config.spatial_dims:
            raise ValueError(
                f"the starting model is {architecture.get('spatial_dims')}D but spatial_dims={config.spatial_dims}"
            )
        if model_head in ("semantic", "multilabel"):
            config.n_classes = int(architecture.get("out_channels", config.n_classes or 2))
        stated = model_percentiles(base_config, default=None)
        if config.normalization is None and stated is not None:
            config.normalization, config.clip = stated[:2], stated[2]
        # (a resumed run's settings already say whether it zoomed, and to which size)
        inherit = resumed_config is None and base_config.get("object_diameter")
        if config.object_diameter is None and config.scale is None and inherit:
            config.object_diameter = float(base_config["object_diameter"])
    config.head = config.head or "three_class"
    config.normalization = tuple(config.normalization or DEFAULT_PERCENTILES)
    parse_loss(config.loss, config.head)
    return Start(model, base_config, base_name, resumed_config)


def prepare_data(images, labels, masks, names, validation, config: TrainConfig, start: Start) -> TrainingData:
    """Check the images and labels, measure the objects, decide the rescaling (a new 2D instance
    model shrinks objects larger than ``NEW_MAX_DIAMETER``) and make the samples, split into
    training and validation (``config`` records the diameter chosen)."""
    from segtune.core.diameter import labels_diameter

    head, normalization = config.head, config.normalization
    label_arrays = [np.asarray(lab) for lab in labels]
    for image, lab, name in zip(images, label_arrays, names, strict=True):
        check_pixels(image, source=name)  # NaN or inf would make the loss NaN at the first step
        try:
            as_labels(lab, "labels")
        except ValueError as e:
            raise ValueError(f"the labels of {name}: {e}") from None
    if not any(
        np.any(lab != 0) if config.ignore_value is None else np.any((lab != 0) & (lab != config.ignore_value))
        for lab in label_arrays
    ):
        raise ValueError(f"the labels are empty: none of the {len(label_arrays)} label image(s) has a labelled pixel")

    def diameter_of(lab: np.ndarray) -> float:  # nan without objects, and for class labels
        if head in ("semantic", "multilabel"):
            return float("nan")
        return labels_diameter(np.where(lab == config.ignore_value, 0, lab) if config.ignore_value is not None else lab)

    diameters = [diameter_of(lab) for lab in label_arrays]
    measured = [d for d in diameters if np.isfinite(d)]
    data_diameter = float(np.median(measured)) if measured else None
    if (
        start.model is None
        and start.resumed_config is None
        and config.object_diameter is None
        and config.scale is None
        and config.spatial_dims == 2
        and head != "semantic"
        and data_diameter
        and data_diameter > NEW_MAX_DIAMETER
    ):
        config.object_diameter = NEW_MAX_DIAMETER
    scale = 1.0
    if config.scale is not None:
        scale = float(config.scale)
    elif config.object_diameter is not None and data_diameter:
        scale = float(config.object_diameter) / data_diameter

    def scale_of(diameter: float) -> float:
        # each image zoomed by its own objects, as prediction zooms each image by its own diameter
        # (one factor from the median would teach images of other magnifications at a wrong size)
        if config.scale is None and config.object_diameter is not None and np.isfinite(diameter):
            return float(config.object_diameter) / diameter
        return scale

    samples = [
        make_sample(
            image,
            lab,
            mask=mask,
            ignore_value=config.ignore_value,
            normalization=normalization,
            clip=config.clip,
            scale=scale_of(diameter),
            name=name,
        )
        for image, lab, mask, name, diameter in zip(images, label_arrays, masks, names, diameters, strict=True)
    ]
    in_channels = samples[0].image.shape[0]
    for sample in samples[1:]:
        if sample.image.shape[0] != in_channels:
            raise ValueError(
                f"{sample.name} has {sample.image.shape[0]} channel(s) but {samples[0].name} has {in_channels}"
            )
    if validation is not None:
        train_samples = samples
        val_samples = [
            make_sample(
                image,
                np.asarray(lab),
                ignore_value=config.ignore_value,
                normalization=normalization,
                clip=config.clip,
                scale=scale_of(diameter_of(np.asarray(lab))),
                name=f"validation {i}",
            )
            for i, (image, lab) in enumerate(zip(*validation, strict=True))
        ]
    else:
        train_samples, val_samples = split_samples(samples, config.val_fraction, seed=config.seed)
    model_diameter = data_diameter * scale if data_diameter else None
    replay = None
    if config.replay:
        replay = find_replay(
            start.base_name,
            start.base_config,
            diameter=config.object_diameter,
            normalization=normalization,
            in_channels=in_channels,
        )
        if start.model is None or config.spatial_dims != 2 or replay is None:
            raise ValueError(
                f"replay {config.replay:g}: the starting model ships no replay set that fits it "
                "(only 2D bundled models, fine-tuned at their own object size, have one); use replay 0"
            )
    return TrainingData(
        names,
        train_samples,
        val_samples,
        in_channels,
        scale,
        model_diameter,
        replay_samples=replay[0] if replay else [],
        replay_path=replay[1] if replay else None,
    )
