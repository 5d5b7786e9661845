"""Segmentation metrics: pixel-level, object-level (connected components) and IoU-matched instances.

Three views of how good a segmentation ``pred`` is against ``truth``:

pixel
    Counts of pixels: precision, recall, accuracy, F1 (= Dice) and IoU (= Jaccard) of the
    foreground (``label > 0``), or per class of a multi-class label map
    (:func:`pixel_metrics` with ``classes``).
object
    The connected-component algorithm of the cell-identification thesis
    (:func:`object_metrics`): ``overlap = truth AND pred``; connected components of the binary
    truth and of the binary prediction; a truth object that no overlap pixel touches is a false
    negative, a predicted object that no overlap pixel touches is a false positive. Splits and
    merges are not penalised: every piece that touches counts as found.
matched
    One-to-one matching of truth and predicted instances by IoU (:func:`matched_metrics`), the
    DSB 2018 / StarDist definitions: at each IoU threshold ``t`` in 0.50, 0.55, ..., 0.95 the
    matching maximises the number of pairs with ``IoU >= t`` (ties broken by the larger summed
    IoU, solved with ``scipy.optimize.linear_sum_assignment``); matched pairs are true positives,
    unmatched predictions false positives, unmatched truths false negatives;
    ``AP = TP / (TP + FP + FN)``. Splits and merges are penalised.

Conventions, the same in every section:

* Foreground is ``label > 0``. A ``bool`` array, or one whose non-zero pixels all hold the
  same mask value 1, 255 or the largest value of its dtype (0/1 masks, 0/255 PNG masks), is
  *binary*: where instances are needed it is split into objects by connected components. Any
  other integer image is an *instance* image: each non-zero id is one object (ids need not be
  consecutive).
* Connected components use full connectivity: 8-neighbourhood in 2D, 26 in 3D (pixels touching
  at a corner are one object), the convention of the thesis and of ``skimage.measure.label``.
* A ratio whose denominator is zero is 1.0 when truth and prediction are both empty (nothing to
  find and nothing found is a perfect result) and 0.0 otherwise, so that with an empty truth
  and a non-empty prediction precision, recall, F1 and IoU are all 0, and likewise with an
  empty prediction and a non-empty truth.
* Labels must be non-negative integers or booleans. Floating-point arrays are accepted only
  when every value is a whole number (labels saved as float); probabilities are refused with a
  message to threshold them first.

:func:`evaluate` gives all three sections for one image pair; :func:`evaluate_many` gives the
layout ``segtune evaluate --json`` prints. :func:`count_objects` counts objects per plane and
time point; :func:`overlay` and :func:`save_overlay_png` draw the thesis colour code (green
true positive, red false positive, blue false negative).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from segtune.core.progress import CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_THRESHOLDS",
    "as_labels",
    "connected_components",
    "count_objects",
    "evaluate",
    "evaluate_many",
    "matched_metrics",
    "object_metrics",
    "overlay",
    "pixel_metrics",
    "save_overlay_png",
    "summarize",
    "to_instances",
]

#: IoU thresholds of the matched metrics: 0.50, 0.55, ..., 0.95.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

GREEN = (0, 255, 0)
RED = (255, 0, 0)
BLUE = (0, 0, 255)


# --- input checks ----------------------------------------------------------------------------


def as_labels(array: Any, name: str) -> np.ndarray:
    """``array`` as a non-negative integer (or bool) numpy array, or a ValueError naming ``name``."""
    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise ValueError(f"`{name}` must not hold negative labels (its minimum is {array.min()})")
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not np.all(np.isfinite(array)):
            raise ValueError(f"`{name}` holds NaN or infinite values; labels must be whole numbers")
        fractional = array != np.round(array)
        if np.any(fractional):
            example = float(array[fractional].flat[0])
            raise ValueError(
                f"`{name}` has non-integer values (e.g. {example:.4g}, dtype {array.dtype}); it looks "
                f"like probabilities or an image: threshold it first (e.g. `{name} > 0.5`) or label it"
            )
        if array.size and array.min() < 0:
            raise ValueError(f"`{name}` must not hold negative labels (its minimum is {array.min():g})")
        top = float(array.max()) if array.size else 0.0
        return array.astype(np.uint32 if top < 2**32 else np.uint64)
    raise ValueError(
        f"`{name}` must be a label image of integers or booleans, got dtype {array.dtype}"
    )


_as_labels = as_labels  # the name the other modules of the package import


def _check_pair(pred: Any, truth: Any, *, spatial: bool = False) -> tuple[np.ndarray, np.ndarray]:
    pred = _as_labels(pred, "pred")
    truth = _as_labels(truth, "truth")
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


def _ratio(numerator: float, denominator: float, both_empty: bool) -> float:
    if denominator == 0:
        return 1.0 if both_empty else 0.0
    return float(numerator) / float(denominator)


def _harmonic(precision: float, recall: float) -> float:
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# --- instances -------------------------------------------------------------------------------


def _full_structure(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, dtype=bool)


def connected_components(mask: Any) -> tuple[np.ndarray, int]:
    """Label the connected components of ``mask > 0`` with full connectivity.

    Parameters
    ----------
    mask
        Binary or label array of any dimension (every non-zero pixel is foreground).

    Returns
    -------
    labels : numpy.ndarray
        int32 array, components numbered 1..n.
    n : int
        Number of components.

    Examples
    --------
    >>> labels, n = connected_components(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]]))
    >>> n                                     # diagonal neighbours are one object
    1
    """
    mask = np.asarray(mask)
    labels, n = ndimage.label(mask > 0 if mask.dtype != bool else mask, structure=_full_structure(mask.ndim))
    return labels, int(n)


def _is_binary(labels: np.ndarray) -> bool:
    """A mask: bool, or every non-zero pixel holds the same mask value (1, 255 or the dtype's top).

    One object with another id (an instance image with a single object left) stays an instance.
    """
    if labels.dtype == bool:
        return True
    top = labels.max()
    if top == 0:
        return True
    mask_values = {1, 255}
    if np.issubdtype(labels.dtype, np.integer):
        mask_values.add(int(np.iinfo(labels.dtype).max))
    if int(top) not in mask_values:
        return False
    foreground = labels[labels > 0]
    return bool(foreground.min() == top)


def _relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the non-zero ids of ``labels`` to 1..n keeping their order; 0 stays 0."""
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:  # a look-up table is O(pixels), no sort
        present = np.zeros(top + 1, dtype=bool)
        present[labels.ravel()] = True
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        n = int(lut[-1])
        if n == top:  # already 1..n: nothing to renumber
            return (labels if labels.dtype != np.uint64 else labels.astype(np.int64)), n
        dtype = np.int32 if n < 2**31 else np.int64
        return lut.astype(dtype)[labels], n
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    n = int(ids.size - (1 if ids[0] == 0 else 0))
    return inverse.reshape(labels.shape).astype(np.int64), n


def to_instances(labels: Any, name: str = "labels") -> tuple[np.ndarray, int]:
    """Instance labels 1..n from a binary mask (connected components) or an instance image.

    Parameters
    ----------
    labels
        A binary mask (bool, or all non-zero pixels 1, all 255, or all the dtype's largest
        value) or an instance image (non-zero ids, not necessarily consecutive).
    name
        What to call the argument in error messages.

    Returns
    -------
    instances : numpy.ndarray
        Integer array, objects numbered 1..n consecutively, background 0.
    n : int
        Number of objects.
    """
    labels = _as_labels(labels, name)
    if _is_binary(labels):
        return connected_components(labels)
    return _relabel_consecutive(labels)


# --- pixel -----------------------------------------------------------------------------------


def _pixel_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    both_empty = tp + fp + fn == 0
    precision = _ratio(tp, tp + fp, both_empty)
    recall = _ratio(tp, tp + fn, both_empty)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
        "accuracy": (tp + tn) / (tp + fp + fn + tn),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "tn": int(tn),
    }


def _binary_pixel(pred_fg: np.ndarray, truth_fg: np.ndarray) -> dict[str, Any]:
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
    pred, truth = _check_pair(pred, truth)
    if classes is None:
        return _binary_pixel(pred > 0, truth > 0)

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


def _object_from_fg(pred_fg: np.ndarray, truth_fg: np.ndarray) -> dict[str, Any]:
    structure = _full_structure(pred_fg.ndim)
    truth_cc, n_truth = ndimage.label(truth_fg, structure=structure)
    pred_cc, n_pred = ndimage.label(pred_fg, structure=structure)
    overlap = truth_fg & pred_fg
    touched_truth = np.zeros(n_truth + 1, dtype=bool)
    touched_truth[truth_cc[overlap]] = True
    touched_pred = np.zeros(n_pred + 1, dtype=bool)
    touched_pred[pred_cc[overlap]] = True
    tp = int(touched_truth[1:].sum())
    tp_pred = int(touched_pred[1:].sum())
    fn = int(n_truth) - tp
    fp = int(n_pred) - tp_pred
    both_empty = n_truth == 0 and n_pred == 0
    precision = _ratio(tp_pred, n_pred, both_empty)
    recall = _ratio(tp, n_truth, both_empty)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 1.0 if both_empty else _harmonic(precision, recall),
        "iou": _ratio(tp, tp + fp + fn, both_empty),
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
    pred, truth = _check_pair(pred, truth, spatial=True)
    return _object_from_fg(pred > 0, truth > 0)


# --- matched instances -----------------------------------------------------------------------


def _pair_overlaps(
    truth: np.ndarray, n_truth: int, pred: np.ndarray, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The overlapping (truth id, pred id) pairs and their IoU, from one pass over the pixels."""
    truth_area = np.bincount(truth.ravel(), minlength=n_truth + 1)
    pred_area = np.bincount(pred.ravel(), minlength=n_pred + 1)
    both = (truth > 0) & (pred > 0)
    t = truth[both].astype(np.int64)
    p = pred[both].astype(np.int64)
    if t.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
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
    return ti, pi, intersection / union


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


def _matched_from_instances(
    truth: np.ndarray, n_truth: int, pred: np.ndarray, n_pred: int, thresholds: Iterable[float]
) -> dict[str, Any]:
    thresholds = [float(t) for t in thresholds]
    bad = [t for t in thresholds if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(f"IoU `thresholds` must lie in (0, 1], got {bad}")
    ti, pi, iou = _pair_overlaps(truth, n_truth, pred, n_pred)
    both_empty = n_truth == 0 and n_pred == 0
    table: dict[str, dict[str, Any]] = {}
    for threshold in sorted({0.5, *thresholds}):
        tp, iou_sum = _match_at(ti, pi, iou, threshold)
        fp, fn = n_pred - tp, n_truth - tp
        table[_threshold_key(threshold)] = {
            "tp": tp,
            "fp": int(fp),
            "fn": int(fn),
            "precision": _ratio(tp, tp + fp, both_empty),
            "recall": _ratio(tp, tp + fn, both_empty),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn, both_empty),
            "ap": _ratio(tp, tp + fp + fn, both_empty),
            "mean_iou": _ratio(iou_sum, tp, both_empty),
            "pq": _ratio(iou_sum, tp + fp / 2 + fn / 2, both_empty),
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


def matched_metrics(
    pred: Any, truth: Any, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
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
    pred, truth = _check_pair(pred, truth, spatial=True)
    truth_instances, n_truth = to_instances(truth, "truth")
    pred_instances, n_pred = to_instances(pred, "pred")
    return _matched_from_instances(truth_instances, n_truth, pred_instances, n_pred, thresholds)


# --- all together ----------------------------------------------------------------------------


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
    pred, truth = _check_pair(pred, truth, spatial=True)
    pred_fg, truth_fg = pred > 0, truth > 0
    truth_instances, n_truth = to_instances(truth, "truth")
    pred_instances, n_pred = to_instances(pred, "pred")
    return {
        "pixel": _binary_pixel(pred_fg, truth_fg),
        "object": _object_from_fg(pred_fg, truth_fg),
        "matched": _matched_from_instances(truth_instances, n_truth, pred_instances, n_pred, thresholds),
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


# --- counting --------------------------------------------------------------------------------


def count_objects(
    labels: Any,
    *,
    axes: str | None = None,
    per_plane: bool = True,
    typical_size: float | None = None,
) -> list[dict[str, Any]]:
    """Count objects per plane (or per volume) and per time point, two ways.

    ``components`` is the number of connected components of the foreground (full
    connectivity). ``estimate`` is the area-based count ``foreground / typical_size``, which
    counts a clump of touching objects as several: ``typical_size`` is the median size of the
    connected components over the whole input (every plane and time point pooled) unless given.
    ``labels`` is the number of distinct non-zero ids (equal to ``components`` for a binary
    mask of separate objects; the object count of an instance image).

    Parameters
    ----------
    labels
        Binary or instance labels with axes ``axes``.
    axes
        ``"YX"``, ``"ZYX"``, ``"TYX"`` or ``"TZYX"``; by default ``YX``, ``ZYX`` or ``TZYX``
        from the number of dimensions.
    per_plane
        Count each YX plane on its own (2D components, sizes in pixels). False counts each ZYX
        volume as one (3D components, sizes in voxels); it makes no difference without Z.
    typical_size
        Typical object area (2D) or volume (3D) in pixels for the estimate.

    Returns
    -------
    list of dict
        One row per plane / volume: ``{"t": int or None, "z": int or None, "components": int,
        "labels": int, "foreground": int (pixels), "typical_size": float, "estimate": float}``.
        ``estimate`` is 0.0 when no typical size can be found (no objects anywhere).

    Examples
    --------
    >>> mask = np.zeros((10, 10), bool); mask[1:3, 1:3] = True; mask[5:9, 5:7] = True
    >>> row = count_objects(mask)[0]
    >>> row["components"], row["typical_size"], row["estimate"]
    (2, 6.0, 2.0)
    """
    array = _as_labels(labels, "labels")
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(array.ndim)
        if axes is None:
            raise ValueError(f"`labels` must be YX, ZYX or TZYX, got shape {array.shape}")
    axes = axes.upper()
    if axes not in ("YX", "ZYX", "TYX", "TZYX"):
        raise ValueError(f"`axes` must be 'YX', 'ZYX', 'TYX' or 'TZYX', got {axes!r}")
    if len(axes) != array.ndim:
        raise ValueError(f"`axes` {axes!r} do not match `labels` of shape {array.shape}")
    if typical_size is not None and not typical_size > 0:
        raise ValueError(f"`typical_size` must be positive, got {typical_size}")
    if "T" not in axes:
        array = array[np.newaxis]
    if "Z" not in axes:
        array = array[:, np.newaxis]
    has_t, has_z = "T" in axes, "Z" in axes

    units: list[tuple[int | None, int | None, np.ndarray]] = []
    for t in range(array.shape[0]):
        if per_plane or not has_z:
            for z in range(array.shape[1]):
                units.append((t if has_t else None, z if has_z else None, array[t, z]))
        else:
            units.append((t if has_t else None, None, array[t]))

    rows, sizes = [], []
    for t, z, unit in units:
        components, n = connected_components(unit)
        ids = np.unique(unit)
        area = np.bincount(components.ravel())[1:]
        sizes.append(area)
        rows.append(
            {
                "t": t,
                "z": z,
                "components": n,
                "labels": int(np.count_nonzero(ids)),
                "foreground": int(area.sum()),
            }
        )
    typical = float(typical_size) if typical_size is not None else None
    if typical is None:
        pooled = np.concatenate(sizes)
        typical = float(np.median(pooled)) if pooled.size else 0.0
    for row in rows:
        row["typical_size"] = typical
        row["estimate"] = row["foreground"] / typical if typical > 0 else 0.0
    return rows


# --- overlays --------------------------------------------------------------------------------


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
    pred, truth = _check_pair(pred, truth)
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
        structure = _full_structure(pred.ndim)
        truth_cc, n_truth = ndimage.label(truth_fg, structure=structure)
        pred_cc, n_pred = ndimage.label(pred_fg, structure=structure)
        overlap = truth_fg & pred_fg
        touched_truth = np.zeros(n_truth + 1, dtype=bool)
        touched_truth[truth_cc[overlap]] = True
        touched_pred = np.zeros(n_pred + 1, dtype=bool)
        touched_pred[pred_cc[overlap]] = True
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
        raise ValueError(
            f"`rgb` must have shape (Y, X, 3), got {rgb.shape}; save a 3D overlay one plane at a time"
        )
    if rgb.dtype != np.uint8:
        raise ValueError(f"`rgb` must be uint8, got dtype {rgb.dtype}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"overlay file {path} must end in .png")
    from segtune.core.files import atomic_write_bytes

    # encoded in memory: imageio's file writer retries a failed flush when it is collected
    return atomic_write_bytes(path, iio.imwrite("<bytes>", rgb, extension=".png"), overwrite=overwrite)
