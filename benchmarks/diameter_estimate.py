"""Benchmark: the automatic diameter estimate against the truth, and against another checkout's.

On the NIH3T3 images (14, 1024 x 1344) and every ``--step``-th DSB 2018 fluorescence image it
estimates the diameter with this checkout's ``segtune.core.diameter.estimate_diameter`` and,
with ``--compare SRC``, with that checkout's, alternating image by image; it prints the error
against ``labels_diameter`` of the true labels, how far the two estimates are apart, and their
time. Needs ``../shared/data``.

Usage::

    python benchmarks/diameter_estimate.py --compare ../main/src --step 5
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from segtune.core import diameter as current

DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def load_other(src: Path):
    spec = importlib.util.spec_from_file_location("other_diameter", src / "segtune" / "core" / "diameter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(step: int):
    nih = DATA / "nuclei_nih3t3"
    for path in sorted((nih / "images").glob("*.png")):
        yield "NIH3T3", iio.imread(path), iio.imread(nih / "labels" / path.name) > 0
    dsb = DATA / "nuclei_dsb2018"
    with open(dsb / "index.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "fluorescence"][::step]
    for r in rows:
        yield (
            "DSB 2018 fluorescence",
            iio.imread(dsb / "images" / f"{r['name']}.png"),
            iio.imread(dsb / "labels" / f"{r['name']}.png"),
        )


def timed(module, image) -> tuple[float, float]:
    start = time.perf_counter()
    value = module.estimate_diameter(image)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", type=Path, help="another checkout's src folder")
    parser.add_argument("--step", type=int, default=5, help="every N-th DSB fluorescence image")
    args = parser.parse_args()
    other = load_other(args.compare.resolve()) if args.compare else None
    results: dict[str, list[tuple]] = {}
    for group, image, labels in images(args.step):
        truth = current.labels_diameter(labels)
        new, new_s = timed(current, image)
        old, old_s = timed(other, image) if other else (np.nan, np.nan)
        results.setdefault(group, []).append((truth, new, old, new_s, old_s))
    for group, rows in results.items():
        a = np.array(rows, dtype=float)
        a = a[np.isfinite(a[:, 0])]
        error_new = np.abs(a[:, 1] / a[:, 0] - 1)
        line = (
            f"{group} ({len(a)} images): |error| vs truth median {np.median(error_new):.3f}, "
            f"mean {error_new.mean():.3f}, {a[:, 3].sum():.2f} s"
        )
        if other:
            error_old = np.abs(a[:, 2] / a[:, 0] - 1)
            apart = np.abs(a[:, 1] / a[:, 2] - 1)
            line += (
                f"; compared: median {np.median(error_old):.3f}, mean {error_old.mean():.3f}, {a[:, 4].sum():.2f} s "
                f"({a[:, 4].sum() / a[:, 3].sum():.1f}x); apart median {np.median(apart):.3f}, "
                f"90th pct {np.percentile(apart, 90):.3f}, max {apart.max():.3f}"
            )
        print(line)


if __name__ == "__main__":
    main()
