"""Replay: general training crops shipped beside a bundled model and mixed into its fine-tuning.

A model fine-tuned on one corrected image sees nothing else for minutes and drifts toward that
image: its scores on the source's other images can fall (forgetting). The usual remedy, which
costs nothing at prediction, is to keep showing it a little of what it was trained on. A bundled
model's folder may hold ``replay.npz``: crops of its own training images, already at the object
size the model predicts at and normalised as it normalises (written by
``scripts/train_pretrained.py``). When such a model (or a model fine-tuned from it, found through
its ``lineage``) is fine-tuned with ``TrainConfig.replay`` (``segtune train --replay 0.5``), that
share of the training patches comes from these crops and the rest from the user's images.

It is off by default: measured on DSB 2018 training-split groups (fine-tune nuclei-2d on one
image for 2 minutes, score 16 others of the same size group), a half share of replay lost on
average as much as none did (see the README's *Fine-tuning*).

The file holds plain arrays (``numpy.load`` with ``allow_pickle=False``): ``images`` (N, C, Y, X)
float16, ``labels`` (N, Y, X) uint16 instance ids, and ``diameter`` and ``normalization`` (the
object size and percentiles the crops were made with; a replay set is used only by a model that
sees images the same way).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.train.data import Sample

logger = logging.getLogger(__name__)

__all__ = ["REPLAY_NAME", "find_replay", "load_replay", "save_replay"]

REPLAY_NAME = "replay.npz"


def save_replay(
    folder: str | os.PathLike,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    diameter: float | None,
    normalization: tuple[float, float],
) -> Path:
    """Write ``folder/replay.npz`` from normalised crops ``(C, Y, X)`` and their instance labels ``(Y, X)``."""
    from segtune.core.files import atomic_write

    stack = np.stack([np.asarray(i, dtype=np.float16) for i in images])
    label_stack = np.stack([np.asarray(lab) for lab in labels])
    if stack.ndim != 4 or label_stack.shape != (stack.shape[0], *stack.shape[2:]):
        raise ValueError(
            f"replay crops must be (C, Y, X) with (Y, X) labels, got {stack.shape} and {label_stack.shape}"
        )
    if label_stack.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError("replay labels must fit in uint16")
    arrays = {
        "images": stack,
        "labels": label_stack.astype(np.uint16),
        "diameter": np.float64(np.nan if diameter is None else diameter),
        "normalization": np.asarray(normalization, dtype=np.float64),
    }

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a handle: savez would add ".npz" to the temporary name
            np.savez_compressed(handle, **arrays)

    return atomic_write(Path(folder) / REPLAY_NAME, write, overwrite=True)


def load_replay(path: str | os.PathLike) -> tuple[list[Sample], float | None, tuple[float, float]]:
    """The crops of a replay file as training samples, with their object diameter and percentiles."""
    with np.load(path, allow_pickle=False) as data:
        images = data["images"].astype(np.float32)
        labels = data["labels"].astype(np.int32)
        diameter = float(data["diameter"])
        normalization = tuple(float(v) for v in data["normalization"])
    samples = [
        Sample(
            np.ascontiguousarray(image[:, None]),
            np.ascontiguousarray(lab[None]),
            np.ones((1, *lab.shape), dtype=bool),
            f"replay {i}",
        )
        for i, (image, lab) in enumerate(zip(images, labels, strict=True))
    ]
    return samples, (None if np.isnan(diameter) else diameter), normalization  # type: ignore[return-value]


def _candidates(base_name: str | None, base_config: Mapping[str, Any]) -> list[Path]:
    """Folders that may hold the replay set: the starting model's, then its ancestors' (newest first)."""
    from segtune.core.models.registry import BUNDLED_MODELS, resolve_model

    names = [base_name, base_config.get("name")]
    names += [entry.get("from") for entry in reversed(base_config.get("lineage") or []) if isinstance(entry, Mapping)]
    folders = []
    for name in names:
        if not name:
            continue
        if str(name) in BUNDLED_MODELS:
            folders.append(resolve_model(str(name)))
        elif Path(name).is_dir():
            folders.append(Path(name))
    return folders


def find_replay(
    base_name: str | None,
    base_config: Mapping[str, Any],
    *,
    diameter: float | None,
    normalization: Sequence[float],
    in_channels: int,
) -> tuple[list[Sample], Path] | None:
    """The replay samples for fine-tuning a model, or None when its lineage ships none that fits.

    A replay set fits when its crops were made at the object size the model will train at
    (``diameter``, within 10 %; both None for a model without one), with the same percentiles
    and number of channels.
    """
    for folder in _candidates(base_name, base_config):
        path = folder / REPLAY_NAME
        if not path.is_file():
            continue
        try:
            samples, replay_diameter, replay_normalization = load_replay(path)
        except (OSError, ValueError, KeyError) as e:
            logger.warning("the replay set %s cannot be read (%s)", path, e)
            return None
        same_size = (
            replay_diameter is None and diameter is None
            if replay_diameter is None or diameter is None
            else abs(replay_diameter / diameter - 1) <= 0.1
        )
        if (
            not same_size
            or not np.allclose(replay_normalization, normalization)
            or samples[0].image.shape[0] != in_channels
        ):
            logger.info("the replay set %s was made for another object size, normalisation or channel count", path)
            return None
        return samples, path
    return None
