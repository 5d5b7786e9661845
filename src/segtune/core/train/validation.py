"""Validation during training: the held-out loss, pixel F1/IoU and instance F1, scored as prediction will score.

The instances are made as prediction makes them for the model (:func:`instance_options`), so the
held-out score is the one the user will get; :func:`worse` is the keep-if-worse rule of
fine-tuning, and :func:`held_out_summary` the line a person reads after training.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.models.heads import ACTIVATIONS
from segtune.core.train.data import make_targets
from segtune.core.train.loop import autocast

__all__ = ["deciding_metric", "forward", "held_out_summary", "instance_options", "validate", "worse"]


def instance_options(head: str, model_config: dict[str, Any], diameter: float | None) -> dict[str, Any]:
    """How validation turns probabilities into instances: as prediction does for this model
    (distance-peak split when its config asks for it, seeds and smallest object from its object
    size), so that the held-out score is the one the user will get."""
    from segtune.core.postprocess import default_min_size, default_seed_distance

    return {
        "split": bool(model_config.get("split_instances", False)),
        "min_distance": default_seed_distance(diameter, head),
        "min_size": default_min_size(diameter, 2),
    }


def instances_of(probabilities: np.ndarray, head: str, options: dict[str, Any] | None = None) -> np.ndarray | None:
    """Instance labels for validation: a seeded watershed (three_class) or components (binary)."""
    from segtune.core.postprocess import postprocess

    if head not in ("binary", "three_class"):
        return None
    return postprocess(probabilities, head, instances=True, **(options or {"min_size": 4}))


def deciding_metric(metrics: dict[str, Any], baseline: dict[str, Any]) -> str | None:
    """The held-out measure that tells ``metrics`` from ``baseline``: matched F1 where both have
    one and it differs; on a tie (a held-out region of a few objects often has one) panoptic
    quality (matched F1 times the matched objects' mean IoU: how well the objects are drawn, as
    prediction draws them); else the validation loss; None when nothing differs.

    The loss is the last resort because it falls whenever the model moves toward the one image it
    trains on, also where the objects it draws on that image's held-out part get no better."""
    for key in ("val_matched_f1", "val_pq", "val_loss"):
        value, reference = metrics.get(key), baseline.get(key)
        if (
            isinstance(value, float)
            and isinstance(reference, float)
            and math.isfinite(value)
            and math.isfinite(reference)
            and value != reference
        ):
            return key
    return None


def worse(metrics: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """Whether ``metrics`` score below ``baseline`` on the held-out data, by the measure
    :func:`deciding_metric` picks."""
    key = deciding_metric(metrics, baseline)
    if key is None:
        return False
    return metrics[key] > baseline[key] if key == "val_loss" else metrics[key] < baseline[key]


@torch.no_grad()
def forward(
    model: nn.Module, image: np.ndarray, device: torch.device, spatial_dims: int, amp: bool, tile: int = 1024
) -> torch.Tensor:
    """Logits ``(K, *S)`` for one ``(C, *S)`` image; large 2D images go through in overlapping tiles."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    spatial = x.shape[1:]
    margin = 64
    if spatial_dims == 3 or max(spatial) <= tile:
        with autocast(device, amp):
            return model(x[None].to(device)).float()[0].cpu()
    out = None
    step = tile - 2 * margin
    for y0 in range(0, spatial[0], step):
        for x0 in range(0, spatial[1], step):
            ys, xs = max(0, y0 - margin), max(0, x0 - margin)
            ye, xe = min(spatial[0], y0 + step + margin), min(spatial[1], x0 + step + margin)
            with autocast(device, amp):
                logits = model(x[None, :, ys:ye, xs:xe].to(device)).float()[0].cpu()
            if out is None:
                out = torch.zeros((logits.shape[0], *spatial))
            out[:, y0 : min(y0 + step, spatial[0]), x0 : min(x0 + step, spatial[1])] = logits[
                :, y0 - ys : y0 - ys + min(step, spatial[0] - y0), x0 - xs : x0 - xs + min(step, spatial[1] - x0)
            ]
    return out


def validate(
    model, samples, *, head, n_classes, loss_fn, device, spatial_dims, amp, instance_options=None
) -> dict[str, float]:
    """Loss, pixel F1/IoU of the foreground, and instance F1 and panoptic quality at IoU 0.5 over the
    validation samples."""
    from segtune.core.metrics import matched_metrics

    model.eval()
    losses, weights = [], []
    tp = fp = fn = 0
    matched: list[float] = []
    quality: list[float] = []
    objects = 0
    for sample in samples:
        planes = range(sample.labels.shape[0]) if spatial_dims == 2 else [None]
        for z in planes:
            image = sample.image[:, z] if z is not None else sample.image
            labels = sample.labels[z] if z is not None else sample.labels
            valid = sample.valid[z] if z is not None else sample.valid
            logits = forward(model, image, device, spatial_dims, amp)
            target = torch.from_numpy(make_targets(labels, head, n_classes=n_classes))[None]
            valid_t = torch.from_numpy(valid)[None]
            if valid.any():
                losses.append(float(loss_fn(logits[None], target, valid_t)))
                weights.append(float(valid.sum()))
            if ACTIVATIONS.get(head) == "sigmoid":
                probabilities = torch.sigmoid(logits).numpy()
                predicted_fg = (probabilities > 0.5).any(0)
            else:
                probabilities = torch.softmax(logits, 0).numpy()
                predicted_fg = probabilities.argmax(0) > 0
            truth_fg = labels > 0
            tp += int(np.count_nonzero(predicted_fg & truth_fg & valid))
            fp += int(np.count_nonzero(predicted_fg & ~truth_fg & valid))
            fn += int(np.count_nonzero(~predicted_fg & truth_fg & valid))
            instances = instances_of(probabilities, head, instance_options)
            if instances is not None:
                truth = labels * valid  # ignored pixels count as background on both sides
                scores = matched_metrics(instances * valid, truth, thresholds=(0.5,))
                matched.append(scores["f1_at_0.5"])
                quality.append(scores["pq"])
                objects += int(scores["n_truth"])
    metrics = {
        "val_loss": float(np.average(losses, weights=weights)) if losses else float("nan"),
        "val_f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "val_iou": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
    }
    metrics["val_matched_f1"] = float(np.mean(matched)) if matched else float("nan")
    metrics["val_pq"] = float(np.mean(quality)) if quality else float("nan")
    metrics["val_objects"] = objects
    return metrics


def held_out_summary(result: Any) -> str:
    """The line a person reads after training: the held-out score of the starting model and of
    the trained one (on images or a region training never saw, at the scale the model predicts
    at), and whether the starting model was kept."""
    best, base = result.best_metrics, result.baseline_metrics
    key = next(
        (k for k in ("val_matched_f1", "val_f1") if isinstance(best.get(k), float) and math.isfinite(best[k])), None
    )
    if key is None:
        return "held-out score: none (no held-out data; give more images or a larger held-out fraction)"
    name = "matched F1 at IoU 0.5" if key == "val_matched_f1" else "pixel F1"
    objects = best.get("val_objects")
    where = f"held-out data, {objects} objects, not trained on" if objects else "held-out data, not trained on"
    if objects == 0 and key == "val_matched_f1":  # 1.000 there only says that nothing false was found
        where = "held-out data with no objects in it, so it only counts false ones; not trained on"
    if not base or not isinstance(base.get(key), float):
        return f"held-out {name} {best[key]:.3f} ({where})"
    line = f"held-out {name} {base[key]:.3f} -> {best[key]:.3f} (starting model -> trained, {where})"
    if key == "val_matched_f1" and base[key] == best[key] and deciding_metric(best, base) == "val_pq":
        line += f"; a tie, so panoptic quality decides: {base['val_pq']:.3f} -> {best['val_pq']:.3f}"
    if result.kept_start:
        line += "; that is worse, so the starting model was kept"
    return line
