"""All the metrics of an image pair together (:func:`evaluate`), and over many pairs (:func:`evaluate_many`,
:func:`summarize`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segtune.core.labels import to_instances
from segtune.core.metrics.matching import DEFAULT_THRESHOLDS, matched_from_instances
from segtune.core.metrics.pixel import binary_pixel, check_pair, object_from_foreground
from segtune.core.progress import CancelToken, ProgressCallback, Reporter

__all__ = ["evaluate", "evaluate_many", "summarize"]


def evaluate(pred: Any, truth: Any, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Pixel, object and matched metrics of one prediction against its ground truth.

    Parameters
    ----------
    pred, truth
        2D (YX) or 3D (ZYX) label arrays of equal shape; binary masks (bool, 0/1, 0/255) or
        instance labels, in any combination.
    thresholds
        IoU thresholds of the matched section.

    Returns
    -------
    dict
        ``{"pixel": {precision, recall, f1, iou, accuracy, tp, fp, fn, tn},
        "object": {precision, recall, f1, iou, tp, fp, fn, tp_pred, n_truth, n_pred},
        "matched": {f1_at_0.5, ap_at_0.5, mean_iou_matched, pq, ..., "thresholds": {...}}}``;
        see :func:`pixel_metrics`, :func:`object_metrics`, :func:`matched_metrics`.

    Raises
    ------
    ValueError
        Shapes differ (the message gives both), a label array holds non-integer values
        (probabilities: threshold first), negative values, or is not 2D/3D.

    Examples
    --------
    >>> truth = np.zeros((8, 8), np.uint8); truth[1:4, 1:4] = 255
    >>> pred = np.zeros((8, 8), bool); pred[1:4, 1:5] = True
    >>> result = evaluate(pred, truth)
    >>> result["pixel"]["iou"], result["object"]["f1"], result["matched"]["f1_at_0.5"]
    (0.75, 1.0, 1.0)
    """
    pred, truth = check_pair(pred, truth, spatial=True)
    pred_fg, truth_fg = pred > 0, truth > 0
    truth_instances, n_truth = to_instances(truth, "truth")
    pred_instances, n_pred = to_instances(pred, "pred")
    return {
        "pixel": binary_pixel(pred_fg, truth_fg),
        "object": object_from_foreground(pred_fg, truth_fg),
        "matched": matched_from_instances(truth_instances, n_truth, pred_instances, n_pred, thresholds),
    }


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Combine per-image :func:`evaluate` results: ratios averaged, counts summed.

    Parameters
    ----------
    results
        One or more results of :func:`evaluate` (same thresholds).

    Returns
    -------
    dict
        The same layout: every float is the mean over ``results``, every int (``tp``, ``fp``,
        ``fn``, ``n_truth`` ...) the sum; keys that are neither are left out.
    """
    if not results:
        raise ValueError("no results to summarize")
    return _combine(results)


def _combine(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, first in results[0].items():
        values = [r[key] for r in results]
        if isinstance(first, Mapping):
            out[key] = _combine(values)
        elif isinstance(first, bool):
            out[key] = all(values)
        elif isinstance(first, int):
            out[key] = int(sum(values))
        elif isinstance(first, float):
            out[key] = float(np.mean(values))
    return out


def evaluate_many(
    preds: Sequence[Any],
    truths: Sequence[Any],
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> dict[str, Any]:
    """:func:`evaluate` over image pairs, with the per-image results and their mean.

    Parameters
    ----------
    preds, truths
        Equally many label arrays; ``preds[i]`` is scored against ``truths[i]``. Arrays may be
        loaded lazily (anything ``numpy.asarray`` accepts), one pair at a time.
    thresholds
        IoU thresholds of the matched section.
    progress, cancel
        Progress callback and cancel token (:mod:`segtune.core.progress`), one step per pair.

    Returns
    -------
    dict
        ``{"n_images": n, "pixel": {...}, "object": {...}, "matched": {...}, "images": [...]}``:
        ``images`` holds each pair's :func:`evaluate` result in order; in the top-level sections
        every ratio is the mean over the pairs and every count (``tp``, ``fp``, ``fn``,
        ``n_truth`` ...) the sum over the pairs.

    Raises
    ------
    ValueError
        The numbers of predictions and truths differ, or there are none.
    """
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions but {len(truths)} ground truths: give equally many")
    if not preds:
        raise ValueError("no image pairs to evaluate")
    report = Reporter(progress, cancel, stage="evaluate", total=len(preds))
    report.check()
    images = []
    for i, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        try:
            images.append(evaluate(pred, truth, thresholds=thresholds))
        except ValueError as e:
            raise ValueError(f"image pair {i}: {e}") from e
        report.step(i + 1, message=f"pair {i + 1}/{len(preds)}")
    return {"n_images": len(images), **summarize(images), "images": images}
