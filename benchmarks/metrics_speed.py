"""How long segtune.core.metrics takes on a 1024 x 1344 image with about 500 objects.

Run: ``python benchmarks/metrics_speed.py [--objects 500] [--repeats 5]``. Truth is ~500 discs
(instance labels, some touching); the prediction is each disc shifted by up to 3 px with a
few dropped and a few extra. Prints the median wall time of each call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def make_pair(n_objects: int, shape=(1024, 1344), radius=12, seed=0):
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.uint16)
    pred = np.zeros(shape, np.uint16)
    for i in range(1, n_objects + 1):
        y, x = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        truth[disk((y, x), radius, shape=shape)] = i
        if rng.random() < 0.95:
            dy, dx = rng.integers(-3, 4, size=2)
            pred[disk((y + dy, x + dx), radius, shape=shape)] = i
    for j in range(n_objects // 20):
        y, x = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        pred[disk((y, x), radius // 2, shape=shape)] = n_objects + 1 + j
    return pred, truth


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from segtune.core.metrics import evaluate, matched_metrics, object_metrics, pixel_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pred, truth = make_pair(args.objects)
    n_truth = len(np.unique(truth)) - 1
    n_pred = len(np.unique(pred)) - 1
    print(f"image {truth.shape}, {n_truth} truth objects, {n_pred} predicted objects (instance labels)")
    for name, fn in (
        ("pixel_metrics", lambda: pixel_metrics(pred, truth)),
        ("object_metrics", lambda: object_metrics(pred, truth)),
        ("matched_metrics (instances)", lambda: matched_metrics(pred, truth)),
        ("matched_metrics (binary masks)", lambda: matched_metrics(pred > 0, truth > 0)),
        ("evaluate (all three)", lambda: evaluate(pred, truth)),
    ):
        print(f"{name:<32} {timed(fn, args.repeats) * 1000:8.1f} ms (median of {args.repeats})")
    result = evaluate(pred, truth)["matched"]
    print(
        f"check: f1@0.5 {result['f1_at_0.5']:.3f}, AP@0.5 {result['ap_at_0.5']:.3f}, "
        f"mean matched IoU {result['mean_iou_matched']:.3f}"
    )


if __name__ == "__main__":
    main()
