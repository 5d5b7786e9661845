"""`segtune evaluate`: compare predicted labels with ground truth (pixel, object, matched metrics)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from segtune._cli.common import UsageError, image_files

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare predicted labels with ground truth",
        description=(
            "Score predicted label images against ground truth: pixel precision/recall/F1/IoU, "
            "object-level counts by connected components, and IoU-matched instance F1, AP and "
            "mean IoU. Pairs are matched in sorted order of the paths; a folder stands for the "
            "image files in it. Label files may be binary masks (0/1, 0/255) or instance labels."
        ),
    )
    parser.add_argument("--pred", nargs="+", required=True, metavar="PATH", help="predicted label files or folders")
    parser.add_argument("--truth", nargs="+", required=True, metavar="PATH", help="ground-truth label files or folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object (means and per-image results)")
    parser.add_argument(
        "--overlay",
        metavar="DIR",
        default=None,
        help=(
            "write DIR/<pred>_overlay.png per pair: green true positive, red false positive, blue false negative pixels"
        ),
    )
    parser.add_argument("--overwrite", action="store_true", help="replace overlay files that exist")
    parser.set_defaults(func=run)


def _write_overlays(folder: Path, pred_path: Path, rgb: Any, overwrite: bool) -> list[Path]:
    from segtune.core.io import output_name
    from segtune.core.metrics import save_overlay_png

    if rgb.ndim == 3:
        return [save_overlay_png(folder / output_name(pred_path, "_overlay", ".png"), rgb, overwrite=overwrite)]
    width = max(3, len(str(rgb.shape[0] - 1)))
    return [
        save_overlay_png(
            folder / output_name(pred_path, f"_overlay_z{z:0{width}d}", ".png"), plane, overwrite=overwrite
        )
        for z, plane in enumerate(rgb)
    ]


def run(args: argparse.Namespace) -> int:
    from segtune.core.io import read_labels
    from segtune.core.metrics import evaluate, overlay, summarize
    from segtune.core.progress import Reporter, tqdm_progress

    # pairs are matched in sorted order of the paths
    preds = sorted(image_files(args.pred, "--pred"), key=str)
    truths = sorted(image_files(args.truth, "--truth"), key=str)
    if len(preds) != len(truths):
        raise UsageError(
            f"{len(preds)} --pred file(s) but {len(truths)} --truth file(s); pairs are matched in "
            "sorted order, so give equally many"
        )
    overlay_dir = Path(args.overlay) if args.overlay else None

    images: list[dict[str, Any]] = []
    with tqdm_progress("evaluate", leave=False, disable=len(preds) < 2) as progress:
        report = Reporter(progress, stage="evaluate", total=len(preds))
        for i, (pred_path, truth_path) in enumerate(zip(preds, truths, strict=True)):
            pred, truth = read_labels(pred_path), read_labels(truth_path)
            try:
                result = evaluate(pred, truth)
            except ValueError as e:
                raise ValueError(f"{pred_path} against {truth_path}: {e}") from e
            images.append({"pred": str(pred_path), "truth": str(truth_path), **result})
            if overlay_dir is not None:
                written = _write_overlays(overlay_dir, pred_path, overlay(pred, truth), args.overwrite)
                logger.info("wrote %s", ", ".join(map(str, written)))
            report.step(i + 1, message=pred_path.name)

    summary = {"n_images": len(images), **summarize(images), "images": images}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary)
    if overlay_dir is not None:
        print(f"overlays written to {overlay_dir}", file=sys.stderr if args.json else sys.stdout)
    return 0


_COLUMNS = (
    ("px P", "pixel", "precision"),
    ("px R", "pixel", "recall"),
    ("px F1", "pixel", "f1"),
    ("px IoU", "pixel", "iou"),
    ("obj P", "object", "precision"),
    ("obj R", "object", "recall"),
    ("obj F1", "object", "f1"),
    ("F1@.5", "matched", "f1_at_0.5"),
    ("AP@.5", "matched", "ap_at_0.5"),
    ("mIoU", "matched", "mean_iou_matched"),
    ("PQ", "matched", "pq"),
)


def _print_table(summary: dict[str, Any]) -> None:
    rows = [(Path(img["pred"]).name, Path(img["truth"]).name, img) for img in summary["images"]]
    rows.append(("mean", "", summary))
    pred_w = max(4, *(len(r[0]) for r in rows))
    truth_w = max(5, *(len(r[1]) for r in rows))
    header = f"{'pred':<{pred_w}}  {'truth':<{truth_w}}  " + "  ".join(f"{c[0]:>6}" for c in _COLUMNS)
    print(header)
    print("-" * len(header))
    for i, (pred, truth, result) in enumerate(rows):
        if i == len(rows) - 1 and len(rows) > 2:
            print("-" * len(header))
        elif i == len(rows) - 1:
            break  # one pair: the mean is that pair
        values = "  ".join(f"{result[section][key]:>6.3f}" for _, section, key in _COLUMNS)
        print(f"{pred:<{pred_w}}  {truth:<{truth_w}}  {values}")
    obj, instances = summary["object"], summary["matched"]
    at_half = instances["thresholds"]["0.5"]
    print(
        f"objects: {instances['n_truth']} true, {instances['n_pred']} predicted (each labelled object counts, "
        f"touching or not; a 0/1 mask counts its connected components); {at_half['tp']} matched one-to-one at "
        f"IoU >= 0.5, {at_half['fn']} missed, {at_half['fp']} false"
    )
    print(
        f"connected components: {obj['n_truth']} true, {obj['n_pred']} predicted; {obj['tp']} true ones touched "
        f"by a prediction, {obj['fn']} missed, {obj['fp']} predicted ones touching no truth"
    )
    print(LEGEND)


LEGEND = (
    "legend: px = pixels; obj = connected components (a true one is found when any predicted pixel touches it); "
    "P = precision, R = recall, F1 = their harmonic mean (pixels: Dice), IoU = intersection over union; "
    "F1@.5, AP@.5 = F1 and average precision of objects matched one-to-one at IoU >= 0.5; "
    "mIoU = mean IoU of those pairs; PQ = panoptic quality (mIoU x F1@.5)"
)
