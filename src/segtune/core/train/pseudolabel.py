"""Pseudo-labelling: a trained model labels unlabelled images, leaving out the pixels it is unsure of.

A model's probabilities become labels where it is confident and an ignore value (:data:`IGNORE`,
255, by default) where it is not (:func:`pseudo_labels`); a second model then trains on the
labelled images plus the pseudo-labelled ones with that ignore value, so uncertain pixels take
no part in its loss (``TrainConfig(ignore_value=255)``, ``segtune train --ignore-value 255``).
The ignore value applies to every label file of that training, so it must not occur in the
hand-made labels: for masks that mark foreground with 255 choose another one (e.g. 2).

Confidence, per head:

binary
    foreground (1) where ``p >= threshold``, background (0) where ``p <= 1 - threshold``;
three_class
    the same on the foreground probability ``1 - p(background)`` (interior and boundary are
    foreground; the second model derives its own boundaries from the objects);
semantic
    the most probable class where its probability is ``>= threshold``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.progress import CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = ["IGNORE", "PseudoLabelResult", "model_probabilities", "pseudo_labels", "pseudolabel_files"]

IGNORE = 255
REPORT_NAME = "pseudolabel_report.json"


def pseudo_labels(
    probabilities: np.ndarray, head: str, threshold: float = 0.9, *, ignore_value: int = IGNORE
) -> np.ndarray:
    """Labels from class probabilities, :data:`IGNORE` where the model is not confident.

    Parameters
    ----------
    probabilities
        ``(K, *S)``: sigmoid output (binary, K = 1) or softmax output (K classes).
    head
        ``"binary"``, ``"three_class"`` or ``"semantic"``.
    threshold
        Confidence needed, in (0.5, 1] for binary and three-class heads, (0, 1] for semantic.
    ignore_value
        The label of uncertain pixels (2 to 255, and above the class indices of a semantic head).

    Returns
    -------
    numpy.ndarray
        uint8 ``(*S)``: 0/1 (binary, three_class) or class indices (semantic), ``ignore_value``
        where the model is unsure.

    Examples
    --------
    >>> pseudo_labels(np.array([[0.05, 0.5, 0.97]]), "binary", threshold=0.9)
    array([  0, 255,   1], dtype=uint8)
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if not 2 <= int(ignore_value) <= 255:
        raise ValueError(f"ignore_value must be from 2 to 255 (0 and 1 are labels), got {ignore_value}")
    if probabilities.ndim < 2:
        raise ValueError(f"probabilities must be (K, *spatial), got shape {probabilities.shape}")
    if head in ("binary", "three_class"):
        if not 0.5 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0.5, 1] for a {head} head, got {threshold}")
        if head == "binary":
            if probabilities.shape[0] != 1:
                raise ValueError(f"a binary head has 1 probability channel, got {probabilities.shape[0]}")
            foreground = probabilities[0]
        else:
            if probabilities.shape[0] != 3:
                raise ValueError(f"a three_class head has 3 probability channels, got {probabilities.shape[0]}")
            foreground = 1.0 - probabilities[0]
        labels = np.full(foreground.shape, ignore_value, dtype=np.uint8)
        labels[foreground >= threshold] = 1
        labels[foreground <= 1.0 - threshold] = 0
        return labels
    if head == "semantic":
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if probabilities.shape[0] > ignore_value:
            raise ValueError(
                f"ignore_value {ignore_value} is one of the model's {probabilities.shape[0]} classes; "
                "choose a larger one"
            )
        labels = probabilities.argmax(0).astype(np.uint8)
        labels[probabilities.max(0) < threshold] = ignore_value
        return labels
    raise ValueError(f"head must be binary, three_class or semantic, got {head!r}")


@torch.no_grad()
def model_probabilities(
    model: nn.Module,
    config: dict[str, Any],
    image: np.ndarray,
    *,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Class probabilities ``(K, Y, X)`` of a 2D segmentation model for one image.

    The image (``(Y, X)`` or ``(C, Y, X)``) is normalised as the model's ``normalization``
    says, resized by its ``input_scale`` if it has one, run through
    :func:`segtune.core.predict.predict_raw` and the probabilities resized back.
    """
    from segtune.core.diameter import restore_shape
    from segtune.core.normalize import model_percentiles, percentile_normalize
    from segtune.core.predict import predict_raw
    from segtune.core.resize import resize_yx

    head = config.get("head")
    if head not in ("binary", "three_class", "semantic"):
        raise ValueError(f"pseudo-labels come from a segmentation model; this one has a {head!r} head")
    architecture = config["architecture"]
    if int(architecture.get("spatial_dims", 2)) != 2:
        raise ValueError("pseudo-labelling uses 2D models")
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    in_channels = int(architecture.get("in_channels", 1))
    if image.ndim != 3 or image.shape[0] != in_channels:
        raise ValueError(f"the model takes {in_channels} channel(s) as (C, Y, X); the image has shape {image.shape}")
    low, high, clip = model_percentiles(config)
    normalized = np.stack([percentile_normalize(c, low, high, clip=clip) for c in image]).astype(np.float32)
    scale = float(config.get("input_scale") or 1.0)
    shape = normalized.shape[1:]
    if scale != 1.0:
        normalized = resize_yx(normalized, scale, order=1)  # as training rescaled its images
    logits = predict_raw(model, normalized, spatial_dims=2, device=device)
    logits_t = torch.from_numpy(np.ascontiguousarray(logits))
    probabilities = (torch.sigmoid(logits_t) if head == "binary" else torch.softmax(logits_t, 0)).numpy()
    if scale != 1.0:
        probabilities = restore_shape(probabilities, shape, order=1)
    return probabilities


@dataclass
class PseudoLabelResult:
    """One pseudo-labelled image: where it went and how much of it the model was sure of."""

    source: str
    labels_file: str
    confident_fraction: float
    foreground_fraction: float


def pseudolabel_files(
    model: str | os.PathLike | nn.Module,
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    config: dict[str, Any] | None = None,
    threshold: float = 0.9,
    ignore_value: int = IGNORE,
    channel: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> list[PseudoLabelResult]:
    """Write pseudo-labels ``out/NAME_labels.tif`` (uint8, ``ignore_value`` = unsure) for every image in ``paths``.

    Parameters
    ----------
    model
        A bundled model name, a model folder, or a module (then ``config`` is its config).
    paths
        2D images (the first time point and z-plane of each file is used); with ``channel``
        one channel of a multi-channel file, else as many channels as the model takes.
    out
        Output folder; also receives ``pseudolabel_report.json`` (the model, the threshold and
        per image the confident and foreground fractions).
    threshold, ignore_value
        See :func:`pseudo_labels`.
    channel, device, overwrite
        Channel to use, where to compute, whether to replace existing files.
    progress, cancel
        See :mod:`segtune.core.progress`; one event per image. Files written before a cancel
        are complete.

    Returns
    -------
    list of PseudoLabelResult

    Raises
    ------
    FileExistsError
        An output exists and ``overwrite`` is False (checked before any work).
    """
    from segtune.core.io import open_image, output_name, write_labels
    from segtune.core.models.store import atomic_write_text, load_model

    model_name = None
    if not isinstance(model, nn.Module):
        model_name = str(model)
        model, config = load_model(model, device="cpu")
    if config is None:
        raise ValueError("pass the model's config along with a module")
    if not paths:
        raise ValueError("no images to pseudo-label")
    out = Path(out)
    targets = [out / output_name(p) for p in paths]
    if len({t.name for t in targets}) != len(targets):
        raise ValueError("several inputs have the same name; their pseudo-labels would overwrite each other")
    if not overwrite:
        for target in [*targets, out / REPORT_NAME]:
            if target.exists():
                raise FileExistsError(f"{target} already exists; pass overwrite=True (or --overwrite) to replace it")
    head = config["head"]
    report = Reporter(progress, cancel, stage="pseudolabel", total=len(paths))
    report.check()
    out.mkdir(parents=True, exist_ok=True)
    results: list[PseudoLabelResult] = []
    in_channels = int(config["architecture"].get("in_channels", 1))
    for i, (path, target) in enumerate(zip(paths, targets, strict=True)):
        image = open_image(path)
        data = image.data
        if channel is not None:
            if not 0 <= channel < data.shape[1]:
                raise ValueError(f"channel {channel} is out of range: {path} has {data.shape[1]} channel(s)")
            plane = np.asarray(data[0, channel : channel + 1, 0].compute())
        else:
            plane = np.asarray(data[0, :in_channels, 0].compute())
        probabilities = model_probabilities(model, config, plane, device=device)
        labels = pseudo_labels(probabilities, head, threshold, ignore_value=ignore_value)
        write_labels(target, labels, pixel_sizes=image.physical_pixel_sizes, overwrite=overwrite)
        confident = labels != ignore_value
        results.append(
            PseudoLabelResult(
                str(path),
                target.name,
                float(confident.mean()),
                float(((labels > 0) & confident).sum() / max(1, confident.sum())),
            )
        )
        report.step(i + 1, message=Path(path).name, confident=round(results[-1].confident_fraction, 3))
    record = {
        "model": model_name,
        "head": head,
        "threshold": threshold,
        "ignore_value": ignore_value,
        "images": [asdict(r) for r in results],
    }
    atomic_write_text(out / REPORT_NAME, json.dumps(record, indent=2) + "\n")
    return results
