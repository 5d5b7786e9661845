"""Benchmark: train a nuclei model from scratch on NIH3T3 images, evaluate on held-out images at full resolution.

Trains a 2D U-Net with a background/interior/boundary head on 10 of the 14 images of
``../shared/data/nuclei_nih3t3`` (or on the files given), within a time budget, then predicts
the held-out images whole (rescaled to the model's object size, probabilities resized back
to the original 1024 x 1344), splits touching nuclei (interior seeds grown over the
foreground by watershed) and compares with the original hand-drawn masks at full
resolution. Prints matched F1 at IoU 0.5 (one-to-one matching, splits and merges count as
errors), pixel F1, wall time and peak resident memory.

    python benchmarks/train_nuclei.py                       # the default split, 13-minute training budget
    python benchmarks/train_nuclei.py --minutes 13 --out /tmp/nuclei_model \
        --test-images held_out/*.png --test-labels held_out_masks/*.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

# idle OpenMP threads sleep instead of spinning (several-fold faster on shared cores); must be
# set before torch starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "nuclei_nih3t3").resolve()
# held out by default: every fourth image in numeric order (1, 30, 40, 47)
DEFAULT_TEST = ("1", "30", "40", "47")


def predict_instances(model, config: dict, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-resolution instances and class probabilities for one 2D image.

    The image is normalised as the model's config says, resized by its ``input_scale`` (the
    training images' rescaling to ``object_diameter``), passed through the model with
    ``segtune.core.predict.predict_raw`` (equal to one untiled pass), and the probabilities are
    resized back to the image's size before the seeded watershed of
    ``segtune.core.postprocess.instances_from_three_class``.
    """
    import torch
    from skimage.transform import resize

    from segtune.core.normalize import percentile_normalize
    from segtune.core.postprocess import instances_from_three_class
    from segtune.core.predict import predict_raw

    norm = config["normalization"]
    x = percentile_normalize(image.astype(np.float32), norm["low"], norm["high"], clip=bool(norm.get("clip", False)))
    scale = float(config.get("input_scale") or 1.0)
    small = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
    if small != image.shape:
        x = resize(x, small, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
    logits = predict_raw(model, x[None], spatial_dims=2, device="cpu")
    probabilities = torch.softmax(torch.from_numpy(np.asarray(logits)), 0).numpy()
    full = np.stack([resize(p, image.shape, order=1, preserve_range=True) for p in probabilities]).astype(np.float32)
    # objects and seeds smaller than a tenth / a fortieth of a typical nucleus are noise
    area = np.pi * (config["object_diameter"] / scale / 2) ** 2 if config.get("object_diameter") else 1000.0
    instances = instances_from_three_class(full, min_size=int(0.1 * area), min_seed_size=int(0.025 * area))
    return instances, full


def _read(path: Path) -> np.ndarray:
    from segtune.core.io import read_labels

    return np.asarray(read_labels(path))  # a 2D grey image reads like a label image: (Y, X)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and labels/ (default: %(default)s)"
    )
    parser.add_argument(
        "--test", nargs="*", default=list(DEFAULT_TEST), help="image names (stems) held out from --data"
    )
    parser.add_argument(
        "--test-images", nargs="*", type=Path, default=None, help="held-out image files (then all of --data trains)"
    )
    parser.add_argument("--test-labels", nargs="*", type=Path, default=None, help="their masks, in the same order")
    parser.add_argument("--minutes", type=float, default=13.0, help="training time budget")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--diameter", type=float, default=32.0, help="object size the network sees (px)")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--loss", default="bce+dice")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="training images held out to pick the best epoch"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="model folder to write (default: a temporary folder)")
    args = parser.parse_args(argv)

    import tempfile

    from segtune.core.metrics import matched_metrics, pixel_metrics
    from segtune.core.progress import tqdm_progress
    from segtune.core.train.trainer import TrainConfig, train

    start = time.perf_counter()
    image_dir, label_dir = args.data / "images", args.data / "labels"
    names = sorted((p.stem for p in image_dir.glob("*.png")), key=lambda s: (len(s), s))
    if args.test_images:
        train_names, test_pairs = names, list(zip(args.test_images, args.test_labels or [], strict=True))
    else:
        train_names = [n for n in names if n not in set(args.test)]
        test_pairs = [(image_dir / f"{n}.png", label_dir / f"{n}.png") for n in args.test]
    images = [_read(image_dir / f"{n}.png") for n in train_names]
    labels = [_read(label_dir / f"{n}.png") for n in train_names]
    print(f"training on {len(images)} images ({', '.join(train_names)}); testing on {len(test_pairs)}", flush=True)

    config = TrainConfig(
        head="three_class",
        patch=args.patch,
        batch_size=args.batch_size,
        epochs=args.epochs,
        loss=args.loss,
        learning_rate=args.lr,
        depth=args.depth,
        base_channels=args.base_channels,
        object_diameter=args.diameter,
        max_minutes=args.minutes,
        patience=None,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device="cpu",
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="segtune_nuclei_")) / "model"
    train_start = time.perf_counter()
    with tqdm_progress("train", mininterval=5, file=sys.stderr) as progress:
        result = train(
            images,
            labels,
            config,
            names=train_names,
            out=out,
            overwrite=True,
            progress=progress,
            provenance={"command": " ".join(["python", *sys.argv])},
        )
    train_seconds = time.perf_counter() - train_start
    print(
        f"trained {len(result.history)} epochs in {train_seconds:.0f} s, stop: {result.stop_reason}, "
        f"best epoch {result.best_epoch}: "
        f"{json.dumps({k: round(v, 4) for k, v in result.best_metrics.items() if isinstance(v, float)})}"
    )

    from segtune.core.models.store import load_model

    model, model_config = load_model(out)  # what a user gets back from the folder
    predict_start = time.perf_counter()
    rows = []
    for image_path, label_path in test_pairs:
        image, truth = _read(image_path), _read(label_path)
        instances, _ = predict_instances(model, model_config, image)
        matched = matched_metrics(instances, truth, thresholds=(0.5,))
        pixel = pixel_metrics(instances > 0, truth > 0)
        rows.append((Path(image_path).name, matched["f1_at_0.5"], pixel["f1"], matched["n_truth"], matched["n_pred"]))
        print(
            f"  {rows[-1][0]:>10}: matched F1@0.5 {rows[-1][1]:.3f}  pixel F1 {rows[-1][2]:.3f}  "
            f"objects truth {rows[-1][3]} predicted {rows[-1][4]}"
        )
    predict_seconds = time.perf_counter() - predict_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"matched F1@0.5 (mean over {len(rows)} held-out images): {np.mean([r[1] for r in rows]):.3f}")
    print(f"pixel F1 (mean): {np.mean([r[2] for r in rows]):.3f}")
    print(
        f"wall time: train {train_seconds:.0f} s, predict {predict_seconds:.1f} s, "
        f"total {time.perf_counter() - start:.0f} s"
    )
    print(f"peak RSS: {peak_mb:.0f} MiB")
    print(f"model folder: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
