"""Pixel metrics (precision, recall, F1 = Dice, IoU = Jaccard; per class) and the thesis's object metrics
(connected components)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segtune.core.labels import as_labels, connected_components

__all__ = ["check_pair", "harmonic", "object_metrics", "pixel_metrics", "ratio"]


def check_pair(pred: Any, truth: Any, *, spatial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    pred = as_labels(pred, "pred")
    truth = as_labels(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"`pred` shape {pred.shape} vs `truth` shape {truth.shape}: they must be equal")
    if pred.size == 0:
        raise ValueError(f"`pred` and `truth` are empty arrays (shape {pred.shape})")
    if spatial and pred.ndim not in (2, 3):
        raise ValueError(
            f"object and matched metrics need 2D (YX) or 3D (ZYX) labels, got shape {pred.shape}; "
            "evaluate a TZYX stack one time point at a time"
        )
    return pred, truth


def ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator) / float(denominator)


def harmonic(precision: float, recall: float) -> float:
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def _pixel_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    both_empty = tp + fp + fn == 0
    precision = ratio(tp, tp + fp, both_empty)
    recall = ratio(tp, tp + fn, both_empty)
    return {
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": ratio(tp, tp + fp + fn, both_empty),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "tn": int(tn),
    }


def binary_pixel(pred_fg: np.ndarray, truth_fg: np.ndarray) -> dict[str, Any]:
    n = pred_fg.size
    n_pred = int(np.count_nonzero(pred_fg))
    n_truth = int(np.count_nonzero(truth_fg))
    tp = int(np.count_nonzero(pred_fg & truth_fg))
    fp, fn = n_pred - tp, n_truth - tp
    return _pixel_from_counts(tp, fp, fn, n - tp - fp - fn)


def pixel_metrics(pred: Any, truth: Any, *, classes: int | Sequence[int] | None = None) -> dict[str, Any]:
    """Pixel-level precision, recall, F1 (Dice), IoU (Jaccard) and accuracy.

    Parameters
    ----------
    pred, truth
        Label arrays of equal shape, any number of dimensions.
    classes
        None (default): foreground (``label > 0``) against background; binary and instance
        inputs alike. An int ``K`` or a sequence of class values: ``pred`` and ``truth`` are
        class maps and each class is scored one-vs-rest; ``K`` means classes ``0..K-1``.

    Returns
    -------
    dict
        Without ``classes``: ``precision, recall, f1, iou, accuracy`` (floats) and the pixel
        counts ``tp, fp, fn, tn``. With ``classes``: ``{"accuracy": fraction of pixels whose
        class agrees, "classes": {str(c): the binary dict for class c}, "mean": the mean over
        classes of each ratio}``.

    Raises
    ------
    ValueError
        Shapes differ, a label array is not integer-valued, or ``classes`` is empty.

    Examples
    --------
    >>> pixel_metrics(np.array([[1, 1, 0, 0]]), np.array([[0, 1, 1, 0]]))["f1"]
    0.5
    """
    pred, truth = check_pair(pred, truth)
    if classes is None:
        return binary_pixel(pred > 0, truth > 0)

    values = np.arange(classes) if isinstance(classes, (int, np.integer)) else np.asarray(list(classes))
    if values.size == 0:
        raise ValueError(f"`classes` must name at least one class, got {classes!r}")
    if np.unique(values).size != values.size:
        raise ValueError(f"`classes` has repeated values: {list(values)}")
    order = np.argsort(values)
    sorted_values = values[order]
    k = values.size

    def index(labels: np.ndarray) -> np.ndarray:
        # position of each pixel's value among `values`, k for "some other value"
        flat = labels.ravel().astype(np.int64)
        pos = np.searchsorted(sorted_values, flat).clip(0, k - 1)
        found = sorted_values[pos] == flat
        return np.where(found, order[pos], k)

    confusion = np.bincount(index(truth) * (k + 1) + index(pred), minlength=(k + 1) ** 2)
    confusion = confusion.reshape(k + 1, k + 1)  # rows truth, columns pred
    total = pred.size
    per_class: dict[str, dict[str, Any]] = {}
    for i, value in enumerate(values):
        tp = int(confusion[i, i])
        fp = int(confusion[:, i].sum()) - tp
        fn = int(confusion[i, :].sum()) - tp
        per_class[str(int(value))] = _pixel_from_counts(tp, fp, fn, total - tp - fp - fn)
    keys = ("precision", "recall", "f1", "iou", "accuracy")
    mean = {key: float(np.mean([m[key] for m in per_class.values()])) for key in keys}
    return {
        "accuracy": float(np.trace(confusion[:k, :k])) / total,
        "classes": per_class,
        "mean": mean,
    }


# --- object (thesis connected-component algorithm) -------------------------------------------


def touched_components(
    pred_fg: np.ndarray, truth_fg: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The connected components of truth and prediction (full connectivity) and, per component
    id (index 0 the background), whether an overlap pixel touches it: ``truth_cc,
    touched_truth, pred_cc, touched_pred``."""
    truth_cc, n_truth = connected_components(truth_fg)
    pred_cc, n_pred = connected_components(pred_fg)
    overlap = truth_fg & pred_fg
    touched_truth = np.zeros(n_truth + 1, dtype=bool)
    touched_truth[truth_cc[overlap]] = True
    touched_pred = np.zeros(n_pred + 1, dtype=bool)
    touched_pred[pred_cc[overlap]] = True
    return truth_cc, touched_truth, pred_cc, touched_pred


def object_from_foreground(pred_fg: np.ndarray, truth_fg: np.ndarray) -> dict[str, Any]:
    _, touched_truth, _, touched_pred = touched_components(pred_fg, truth_fg)
    n_truth, n_pred = len(touched_truth) - 1, len(touched_pred) - 1
    tp = int(touched_truth[1:].sum())
    tp_pred = int(touched_pred[1:].sum())
    fn = int(n_truth) - tp
    fp = int(n_pred) - tp_pred
    both_empty = n_truth == 0 and n_pred == 0
    precision = ratio(tp_pred, n_pred, both_empty)
    recall = ratio(tp, n_truth, both_empty)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 1.0 if both_empty else harmonic(precision, recall),
        "iou": ratio(tp, tp + fp + fn, both_empty),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tp_pred": tp_pred,
        "n_truth": int(n_truth),
        "n_pred": int(n_pred),
    }


def object_metrics(pred: Any, truth: Any) -> dict[str, Any]:
    """Object-level metrics by the connected-component algorithm of the cell-identification thesis.

    ``overlap = truth AND pred`` (foregrounds, ``label > 0``); the binary truth and the binary
    prediction are each split into connected components (full connectivity, so touching
    instances of an instance image become one object). A truth component that shares no pixel
    with ``overlap`` is a false negative; a predicted component that shares none is a false
    positive.

    Counts: ``tp`` = truth objects touched by the overlap (objects found), ``tp_pred`` =
    predicted objects touched, ``fn = n_truth - tp``, ``fp = n_pred - tp_pred``.
    ``precision = tp_pred / n_pred``, ``recall = tp / n_truth``, ``f1`` = their harmonic mean,
    ``iou = tp / (tp + fp + fn)``. A truth object split into two predicted pieces, or two
    truth objects merged into one prediction, are all true positives here.

    Parameters
    ----------
    pred, truth
        2D or 3D label arrays of equal shape (binary or instance).

    Returns
    -------
    dict
        ``precision, recall, f1, iou`` (floats), ``tp, fp, fn, tp_pred, n_truth, n_pred`` (ints).

    Examples
    --------
    >>> truth = np.array([[1, 1, 0, 0, 1]])
    >>> pred = np.array([[0, 1, 0, 1, 0]])
    >>> m = object_metrics(pred, truth)
    >>> m["tp"], m["fp"], m["fn"], m["precision"], m["recall"]
    (1, 1, 1, 0.5, 0.5)
    """
    pred, truth = check_pair(pred, truth, spatial=True)
    return object_from_foreground(pred > 0, truth > 0)
