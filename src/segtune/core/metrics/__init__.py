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

from segtune.core.labels import as_labels, connected_components, to_instances
from segtune.core.metrics.counting import count_objects
from segtune.core.metrics.matching import DEFAULT_THRESHOLDS, matched_metrics
from segtune.core.metrics.overlay import overlay, save_overlay_png
from segtune.core.metrics.pixel import object_metrics, pixel_metrics
from segtune.core.metrics.summary import evaluate, evaluate_many, summarize

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
