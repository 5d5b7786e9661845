"""Benchmark: does fine-tuning a bundled model on ONE corrected image help on the source's other images?

For each source the bundled model never trained on, fine-tune it on one image (its true labels
standing in for the user's corrections) for a time budget with the defaults of
``segtune train --from MODEL`` (the same engine as the widget's Fine-tune tab and
``segtune demo``), then score the source's other images before and after:

- Data Science Bowl 2018 fluorescence images of the fixed validation split
  (``scripts/dsb2018_split.json``; nuclei-2d never trains on them), grouped by image size, which in
  that set stands for the lab and microscope; groups of at least 4 images, at most 8 scored;
- the 4 NIH3T3 images nuclei-2d holds out (binary masks: touching nuclei are one object there);
- ISBI 2012 images 15-19 for membranes-2d (interior pixel F1; the others matched F1 at IoU 0.5).

The first image of each source (sorted by name) is the one fine-tuned on. Prints a table and
writes ``benchmarks/results/finetune_gain.json``. Beside the scores it prints the outline ratio
(predicted over true foreground area) on the scored images before and after, and the starting
model's on the image fine-tuned on: where that image was annotated with looser or tighter outlines
than the others, fine-tuning learns its outlines, which the others' annotations score down.

    python benchmarks/finetune_gain.py               # 2 minutes per source
    python benchmarks/finetune_gain.py --minutes 2 --sources nih3t3 dsb-360x360
    python benchmarks/finetune_gain.py --corrections  # nuclei sources, corrected predictions
    python benchmarks/finetune_gain.py --draws 4      # fine-tune on each of the first 4 images in turn

With ``--corrections`` the image is not fine-tuned on its full annotation but on what a user who
corrects the starting model's prediction hands over: the predicted objects that match a true one
(IoU > 0.5) kept as the model drew them, false ones deleted, missed ones drawn from the truth,
and a true object the model split into two or more (most of each inside it) drawn whole.
That is the widget's loop, and it teaches no new outlines where the model's were good enough.
Results go to ``benchmarks/results/finetune_gain_corrections.json``.

With ``--no-keep-start`` the fine-tuned model is scored even where the held-out strip kept the
starting one (results in a ``_no_keep_start`` file beside the others): was keeping it right?

With ``--draws N`` each source is fine-tuned N times, each time on another of its first N images,
and the source's other images are scored; a row per draw and the mean gain per source tell whether
a gain or loss belongs to the source or to the one image drawn. Results go to
``benchmarks/results/finetune_gain_draws.json`` (the one-draw table keeps its own file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
RESULTS = REPO / "benchmarks" / "results" / "finetune_gain.json"
CORRECTIONS_RESULTS = REPO / "benchmarks" / "results" / "finetune_gain_corrections.json"
DRAWS_RESULTS = REPO / "benchmarks" / "results" / "finetune_gain_draws.json"
MAX_SCORED = 8


def sources(data: Path) -> dict[str, tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """name -> (bundled model, [(image, truth), ...]); the first pair is fine-tuned on."""

    import train_pretrained as tp

    split = tp.dsb_split(data)
    rows = tp.dsb_index(data)
    groups: dict[str, list[str]] = {}
    for name in split["validation"]["fluorescence"]:
        groups.setdefault(f"{rows[name]['height']}x{rows[name]['width']}", []).append(name)
    found: dict[str, tuple[str, list]] = {}
    for size, names in sorted(groups.items()):
        if len(names) >= 4:
            found[f"dsb-{size}"] = ("nuclei-2d", [tp._dsb_read(data, n) for n in sorted(names)[: MAX_SCORED + 1]])
    nih = data / "nuclei_nih3t3"
    found["nih3t3"] = (
        "nuclei-2d",
        [
            (tp._read_png(nih / "images" / n).astype(np.float32), tp._read_png(nih / "labels" / n) > 0)
            for n in tp.NIH3T3_HELD_OUT
        ],
    )
    images, labels, _ = tp.membranes_data(data, tp.ISBI_HELD_OUT)
    found["isbi-membranes"] = ("membranes-2d", list(zip(images, labels, strict=True)))
    return found


def corrected(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """A user's correction of the instance labels ``predicted`` against ``truth`` (see the module text)."""
    from skimage.measure import label
    from skimage.segmentation import relabel_sequential

    from segtune.core.metrics.matching import pair_overlaps

    truth = label(truth > 0) if truth.dtype == bool else truth.astype(np.int64)
    predicted = predicted.astype(np.int64)
    n_pred = int(predicted.max())
    t, p, intersection, iou = pair_overlaps(truth, int(truth.max()), predicted, n_pred)
    good = iou > 0.5  # one-to-one above 0.5
    # a true object that holds most of two predicted ones was split: the user merges them (draws it)
    mostly_inside = intersection / np.bincount(predicted.ravel())[p] > 0.5
    split = np.bincount(t[mostly_inside], minlength=int(truth.max()) + 1) > 1
    good &= ~split[t]
    out = np.where(np.isin(predicted, p[good]), predicted, 0)
    missed = (truth > 0) & ~np.isin(truth, t[good])
    out[missed] = truth[missed] + n_pred
    return relabel_sequential(out)[0].astype(np.int32)


def predict_labels(model, config, image: np.ndarray, pixels: bool) -> np.ndarray:
    """The model's instance labels of ``image`` (its interior mask when ``pixels``)."""
    from segtune.core.predict import predict

    return np.asarray(predict((model, config), image, axes="YX", instances=not pixels, device="cpu").labels)[0, 0]


def outline(predicted_area: int, true_area: int) -> float:
    """Predicted foreground area over the true one: above 1, the model draws objects larger than the annotation."""
    return predicted_area / max(true_area, 1)


def score(model, config, pairs, pixels: bool = False) -> float:
    """Mean matched F1 at IoU 0.5 over ``pairs`` (interior pixel F1 when ``pixels``)."""
    return score_with_outline(model, config, pairs, pixels)[0]


def score_with_outline(model, config, pairs, pixels: bool = False) -> tuple[float, float]:
    """:func:`score` and the outline ratio of all the images together, from one prediction each."""
    from segtune.core.metrics import matched_metrics, pixel_metrics

    values, predicted_area, true_area = [], 0, 0
    for image, truth in pairs:
        labels = predict_labels(model, config, image, pixels)
        if pixels:  # membranes: interior pixel F1
            values.append(pixel_metrics(labels, truth)["f1"])
        else:
            values.append(matched_metrics(labels, truth, thresholds=(0.5,))["f1_at_0.5"])
        predicted_area += int(np.count_nonzero(labels))
        true_area += int(np.count_nonzero(truth))
    return float(np.mean(values)), outline(predicted_area, true_area)


def fine_tune_and_score(name: str, model_name: str, pairs, args) -> dict:
    """Fine-tune ``model_name`` on ``pairs[0]`` for ``args.minutes`` and score ``pairs[1:]`` before and after."""
    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, held_out_summary, train

    pixels = model_name == "membranes-2d"
    if args.start is not None and not pixels:
        model_name = str(args.start)  # a model folder of the user's instead of nuclei-2d
    model, config = load_model(model_name)
    before, outline_before = score_with_outline(model, config, pairs[1:], pixels)
    image, truth = pairs[0]
    first = predict_labels(model, config, image, pixels)
    outline_trained_image = outline(np.count_nonzero(first), np.count_nonzero(truth))
    if args.corrections:
        truth = corrected(first, truth)
    start = time.monotonic()
    settings = TrainConfig(
        epochs=10_000,
        max_minutes=args.minutes,
        patience=None,
        device="cpu",
        seed=args.seed,
        keep_if_worse=not args.no_keep_start,
    )
    result = train([image], [truth.astype(np.int32)], settings, model=model_name)
    seconds = time.monotonic() - start
    after, outline_after = score_with_outline(result.model, result.config, pairs[1:], pixels)
    row = {
        "source": name,
        "model": model_name,
        "scored_images": len(pairs) - 1,
        "before": round(before, 4),
        "after": round(after, 4),
        "gain": round(after - before, 4),
        "kept_start": result.kept_start,
        "outline_trained_image": round(outline_trained_image, 3),
        "outline_before": round(outline_before, 3),
        "outline_after": round(outline_after, 3),
        "held_out": held_out_summary(result),
        "epochs": len(result.history),
        "seconds": round(seconds),
    }
    print(
        f"{name:>18}  {model_name:<12} {len(pairs) - 1} images  before {before:.3f}  after {after:.3f}  "
        f"gain {after - before:+.3f}  outline {outline_before:.2f} -> {outline_after:.2f} "
        f"(trained image {outline_trained_image:.2f})  "
        f"({row['epochs']} epochs, {seconds:.0f} s; {row['held_out']})",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--minutes", type=float, default=2.0, help="fine-tuning time per source")
    parser.add_argument("--sources", nargs="*", default=None, help="only these sources (names as printed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--corrections",
        action="store_true",
        help="fine-tune on the starting model's corrected prediction instead of the full annotation (nuclei only)",
    )
    parser.add_argument(
        "--no-keep-start",
        action="store_true",
        help="return the fine-tuned model even where the held-out strip scored it below the starting model",
    )
    parser.add_argument(
        "--start",
        type=Path,
        default=None,
        help="a model folder to fine-tune on the nuclei sources instead of nuclei-2d "
        "(e.g. one trained without a DSB lab: scripts/train_pretrained.py --leave-out)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (default: by mode, in benchmarks/results)")
    parser.add_argument(
        "--draws", type=int, default=1, help="fine-tune on each of the first N images in turn (default 1: the first)"
    )
    args = parser.parse_args(argv)

    rows = []
    for name, (model_name, all_pairs) in sources(args.data).items():
        if (args.sources and name not in args.sources) or (args.corrections and model_name == "membranes-2d"):
            continue
        gains = []
        for draw in range(min(args.draws, len(all_pairs))):
            # the image fine-tuned on first, then the source's others (scored)
            pairs = [all_pairs[draw], *all_pairs[:draw], *all_pairs[draw + 1 :]]
            row = fine_tune_and_score(name, model_name, pairs, args)
            row["draw"] = draw
            rows.append(row)
            gains.append(row["gain"])
        if len(gains) > 1:
            print(
                f"{name:>18}  mean gain over {len(gains)} draws {np.mean(gains):+.3f}  "
                f"(min {min(gains):+.3f}, max {max(gains):+.3f})",
                flush=True,
            )
    load = os.getloadavg()[0]
    print(
        f"load average {load:.1f} on {os.cpu_count()} cores (a loaded machine trains fewer steps in the same minutes)"
    )
    results = DRAWS_RESULTS if args.draws > 1 else CORRECTIONS_RESULTS if args.corrections else RESULTS
    if args.no_keep_start:
        results = results.with_name(results.stem + "_no_keep_start.json")
    results = args.out or results
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "minutes": args.minutes,
                "corrections": args.corrections,
                "draws": args.draws,
                "keep_start": not args.no_keep_start,
                "start": str(args.start) if args.start else None,
                "load_average": round(load, 1),
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
