"""Overlays in the thesis colour code: green true positive, red false positive, blue false negative."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.metrics.pixel import check_pair, touched_components

__all__ = ["BLUE", "GREEN", "RED", "overlay", "save_overlay_png"]

GREEN = (0, 255, 0)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def _grey_background(image: Any, shape: tuple[int, ...]) -> np.ndarray:
    from segtune.core.normalize import percentile_normalize

    image = np.asarray(image)
    if image.shape != shape:
        raise ValueError(f"`image` shape {image.shape} vs labels shape {shape}: they must be equal")
    scaled = percentile_normalize(image.astype(np.float32), clip=True)
    return np.round(np.asarray(scaled) * 255).astype(np.uint8)


def overlay(
    pred: Any,
    truth: Any,
    image: Any = None,
    *,
    level: str = "pixel",
    alpha: float = 0.5,
) -> np.ndarray:
    """An RGB picture of agreement: green true positive, red false positive, blue false negative.

    Parameters
    ----------
    pred, truth
        Label arrays of equal shape (binary or instance), 2D or 3D.
    image
        Optional grey image of the same shape drawn underneath (percentile-stretched); without
        it the background is black and the colours are drawn at full strength.
    level
        ``"pixel"``: each pixel by its own status (TP where both are foreground).
        ``"object"``: whole objects by the status :func:`object_metrics` gives them (touched
        truth and predicted objects green, untouched predictions red, missed truths blue).
    alpha
        Opacity of the colours over ``image`` (0..1).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape ``pred.shape + (3,)``; napari shows it with ``add_image(rgb=True)``.
    """
    pred, truth = check_pair(pred, truth)
    if level not in ("pixel", "object"):
        raise ValueError(f"`level` must be 'pixel' or 'object', got {level!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be between 0 and 1, got {alpha}")
    pred_fg, truth_fg = pred > 0, truth > 0
    if level == "pixel":
        tp = pred_fg & truth_fg
        fp = pred_fg & ~truth_fg
        fn = truth_fg & ~pred_fg
    else:
        if pred.ndim not in (2, 3):
            raise ValueError(f"object overlays need 2D or 3D labels, got shape {pred.shape}")
        truth_cc, touched_truth, pred_cc, touched_pred = touched_components(pred_fg, truth_fg)
        touched_truth[0] = touched_pred[0] = False
        tp = touched_truth[truth_cc] | touched_pred[pred_cc]
        fp = pred_fg & ~touched_pred[pred_cc]
        fn = truth_fg & ~touched_truth[truth_cc]

    if image is None:
        rgb = np.zeros((*pred.shape, 3), dtype=np.uint8)
        for where, colour in ((tp, GREEN), (fp, RED), (fn, BLUE)):
            rgb[where] = colour
        return rgb
    grey = _grey_background(image, pred.shape)
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1).astype(np.float32)
    for where, colour in ((tp, GREEN), (fp, RED), (fn, BLUE)):
        rgb[where] = (1 - alpha) * rgb[where] + alpha * np.asarray(colour, dtype=np.float32)
    return np.round(rgb).astype(np.uint8)


def save_overlay_png(path: str | os.PathLike, rgb: Any, *, overwrite: bool = False) -> Path:
    """Write a 2D RGB overlay as PNG, atomically.

    Parameters
    ----------
    path
        Destination ``.png``.
    rgb
        uint8 array of shape (Y, X, 3), e.g. from :func:`overlay`. For a 3D overlay save each
        plane (``rgb[z]``).
    overwrite
        Replace an existing file; otherwise an existing file raises FileExistsError.

    Returns
    -------
    Path
        The written file.
    """
    import imageio.v3 as iio

    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"`rgb` must have shape (Y, X, 3), got {rgb.shape}; save a 3D overlay one plane at a time")
    if rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8, got dtype {rgb.dtype}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"overlay file {path} must end in .png")
    from segtune.core.files import atomic_write_bytes

    # encoded in memory: imageio's file writer retries a failed flush when it is collected
    return atomic_write_bytes(path, iio.imwrite("<bytes>", rgb, extension=".png"), overwrite=overwrite)
