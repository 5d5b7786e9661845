"""Matched instances: one-to-one IoU matching of truth and predicted objects, and AP / F1 / PQ per IoU threshold."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from segtune.core.labels import to_instances
from segtune.core.metrics.pixel import check_pair, ratio

__all__ = ["DEFAULT_THRESHOLDS", "matched_metrics", "pair_overlaps"]

#: IoU thresholds of the matched metrics: 0.50, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def pair_overlaps(
    truth: np.ndarray, n_truth: int, pred: np.ndarray, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The overlapping (truth id, pred id) pairs, their shared pixel count and their IoU, from one pass.

    ``truth`` and ``pred`` are non-negative integer label images of one shape whose largest ids are
    ``n_truth`` and ``n_pred``; 0 is background and is never paired.
    """
    truth_area = np.bincount(truth.ravel(), minlength=n_truth + 1)
    pred_area = np.bincount(pred.ravel(), minlength=n_pred + 1)
    both = (truth > 0) & (pred > 0)
    t = truth[both].astype(np.int64)
    p = pred[both].astype(np.int64)
    if t.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    key = t * (n_pred + 1) + p
    bins = (n_truth + 1) * (n_pred + 1)
    if bins <= max(4 * key.size, 1 << 22):
        counts = np.bincount(key, minlength=bins)
        keys = np.flatnonzero(counts)
        intersection = counts[keys]
    else:
        keys, intersection = np.unique(key, return_counts=True)
    ti, pi = np.divmod(keys, n_pred + 1)
    union = truth_area[ti] + pred_area[pi] - intersection
    return ti, pi, intersection, intersection / union


def _match_at(ti: np.ndarray, pi: np.ndarray, iou: np.ndarray, threshold: float) -> tuple[int, float]:
    """Most pairs with ``IoU >= threshold`` matched one-to-one (ties: largest summed IoU).

    Returns the number of matches and the sum of their IoU.
    """
    keep = iou >= threshold
    ti, pi, iou = ti[keep], pi[keep], iou[keep]
    if iou.size == 0:
        return 0, 0.0
    rows, row_index = np.unique(ti, return_inverse=True)
    cols, col_index = np.unique(pi, return_inverse=True)
    if rows.size == iou.size and cols.size == iou.size:  # already one-to-one (IoU > 0.5 always is)
        return int(iou.size), float(iou.sum())
    # Each match is worth 1 plus a bonus below 1 / (2 k): the count wins, the summed IoU breaks ties.
    k = min(rows.size, cols.size)
    scores = np.zeros((rows.size, cols.size))
    scores[row_index, col_index] = iou
    weights = np.zeros_like(scores)
    weights[row_index, col_index] = 1.0 + iou / (2.0 * k)
    r, c = linear_sum_assignment(weights, maximize=True)
    matched = weights[r, c] > 0
    return int(matched.sum()), float(scores[r, c][matched].sum())


def _threshold_key(threshold: float) -> str:
    return format(round(float(threshold), 4), "g")


def matched_from_instances(
    truth: np.ndarray, n_truth: int, pred: np.ndarray, n_pred: int, thresholds: Iterable[float]
) -> dict[str, Any]:
    thresholds = [float(t) for t in thresholds]
    bad = [t for t in thresholds if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(f"IoU `thresholds` must lie in (0, 1], got {bad}")
    ti, pi, _, iou = pair_overlaps(truth, n_truth, pred, n_pred)
    both_empty = n_truth == 0 and n_pred == 0
    table: dict[str, dict[str, Any]] = {}
    for threshold in sorted({0.5, *thresholds}):
        tp, iou_sum = _match_at(ti, pi, iou, threshold)
        fp, fn = n_pred - tp, n_truth - tp
        table[_threshold_key(threshold)] = {
            "tp": tp,
            "fp": int(fp),
            "fn": int(fn),
            "precision": ratio(tp, tp + fp, both_empty),
            "recall": ratio(tp, tp + fn, both_empty),
            "f1": ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "ap": ratio(tp, tp + fp + fn, both_empty),
            "mean_iou": ratio(iou_sum, tp, both_empty),
            "pq": ratio(iou_sum, tp + fp / 2 + fn / 2, both_empty),
        }
    at = table[_threshold_key(0.5)]
    requested = [_threshold_key(t) for t in thresholds]
    return {
        "f1_at_0.5": at["f1"],
        "ap_at_0.5": at["ap"],
        "precision_at_0.5": at["precision"],
        "recall_at_0.5": at["recall"],
        "mean_iou_matched": at["mean_iou"],
        "pq": at["pq"],
        "ap_mean": float(np.mean([table[key]["ap"] for key in requested])) if requested else at["ap"],
        "n_truth": int(n_truth),
        "n_pred": int(n_pred),
        "thresholds": {key: table[key] for key in requested} if requested else {"0.5": at},
    }


def matched_metrics(pred: Any, truth: Any, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Instance metrics from a one-to-one IoU matching of truth and predicted objects.

    Binary inputs are split into objects by connected components; instance ids are renumbered
    1..n. The IoU of every overlapping (truth, pred) pair is computed in one pass over the
    pixels where both are foreground (no per-pair masks), so a 1024 x 1344 image with 500
    objects takes a few tens of milliseconds.

    At each threshold ``t`` the matching maximises the number of pairs with ``IoU >= t``
    (among equally many, the largest summed IoU), with ``scipy.optimize.linear_sum_assignment``
    on the pairs that qualify. Matched pairs are true positives (TP), unmatched predictions false
    positives (FP), unmatched truths false negatives (FN).

    Parameters
    ----------
    pred, truth
        2D or 3D label arrays of equal shape (binary or instance).
    thresholds
        IoU thresholds to report (0.5 is always computed, for the summary keys).

    Returns
    -------
    dict
        ``f1_at_0.5``, ``ap_at_0.5`` (``TP / (TP + FP + FN)``, the DSB 2018 / StarDist
        "average precision"), ``precision_at_0.5``, ``recall_at_0.5``, ``mean_iou_matched``
        (mean IoU of the TP pairs at 0.5; 0.0 when there are none), ``pq`` (panoptic quality at
        0.5, ``sum of TP IoU / (TP + FP/2 + FN/2)`` = mean matched IoU x F1), ``ap_mean`` (AP
        averaged over ``thresholds``), ``n_truth``, ``n_pred``, and ``thresholds``:
        ``{"0.5": {tp, fp, fn, precision, recall, f1, ap, mean_iou, pq}, "0.55": ...}``.

    Examples
    --------
    >>> truth = np.array([[1, 1, 1, 1, 0, 0]])
    >>> pred = np.array([[1, 1, 2, 2, 0, 3]])          # truth object split in two, one extra
    >>> m = matched_metrics(pred, truth)
    >>> m["thresholds"]["0.5"]["tp"], m["thresholds"]["0.5"]["fp"], m["ap_at_0.5"]
    (1, 2, 0.3333333333333333)
    """
    pred, truth = check_pair(pred, truth, spatial=True)
    truth_instances, n_truth = to_instances(truth, "truth")
    pred_instances, n_pred = to_instances(pred, "pred")
    return matched_from_instances(truth_instances, n_truth, pred_instances, n_pred, thresholds)
