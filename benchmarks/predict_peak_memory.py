"""Peak memory (RSS) of ``segtune predict --instances`` on large uint16 TIFFs, against the image's size.

Run: ``python benchmarks/predict_peak_memory.py [--sizes 8000 16000] [--model nuclei-2d] [--tile 512]``.

For each size N a synthetic N x N uint16 image (bright discs on a noisy background, written as a
tiled, zlib-compressed TIFF) is predicted by the command exactly as a user runs it, in a child
process; the child's peak resident memory comes from the kernel (``getrusage`` of the finished
child: the high-water mark, not a sample) and its wall time is measured around it. Prints one
line per size: image megabytes, peak RSS in GB, peak RSS over image size, seconds, and the
number of objects labelled.

The image is generated tile by tile (``tifffile`` writes from a generator), so making a 16k
image does not itself hold the whole image in memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 1024


def write_image(path: Path, size: int, seed: int = 0) -> None:
    """An N x N uint16 TIFF of nuclei-like discs on noise, written one 1024 x 1024 tile at a time."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]

    def tiles():
        for _ in range(0, size, TILE):
            for _ in range(0, size, TILE):
                tile = rng.normal(300, 30, (TILE, TILE))
                for y, x in rng.integers(10, TILE - 10, (60, 2)):
                    tile[(yy - y) ** 2 + (xx - x) ** 2 < 64] += 2000
                yield tile.astype(np.uint16)

    tifffile.imwrite(
        path,
        tiles(),
        shape=(size, size),
        dtype=np.uint16,
        tile=(TILE, TILE),
        compression="zlib",
        bigtiff=size * size * 2 > 2**31,
    )


def measure(image: Path, out: Path, model: str, extra: list[str]) -> tuple[float, float, int]:
    """(peak RSS in bytes, seconds, objects) of one ``segtune predict --instances`` child."""
    import tifffile

    command = [
        sys.executable,
        "-m",
        "segtune.cli",
        "predict",
        str(image),
        "--model",
        model,
        "--out",
        str(out),
        "--instances",
        "--device",
        "cpu",
        *extra,
    ]
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own high-water mark
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        if child.returncode:
            stderr.seek(0)
            raise SystemExit(f"segtune predict failed ({child.returncode}): {stderr.read().decode()[-500:]}")
    labels = tifffile.imread(next(out.glob("*_labels.tif")))
    return usage.ru_maxrss * 1024.0, seconds, int(labels.max())  # ru_maxrss is in kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8000, 16000])
    parser.add_argument("--model", default="nuclei-2d")
    parser.add_argument("--tile", default=None, help="passed on as --tile")
    args = parser.parse_args()
    extra = ["--tile", args.tile] if args.tile else []
    print(f"segtune predict --instances --model {args.model} {' '.join(extra)}: peak RSS of the command")
    print(f"{'size':>7} {'image MB':>9} {'peak GB':>8} {'x image':>8} {'seconds':>8} {'objects':>8}")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="segtune-rss-") as folder:
            image = Path(folder) / f"large_{size}.tif"
            write_image(image, size)
            peak, seconds, objects = measure(image, Path(folder) / "out", args.model, extra)
            image_mb = size * size * 2 / 1e6
            print(
                f"{size:>7} {image_mb:>9.0f} {peak / 1e9:>8.2f} {peak / (image_mb * 1e6):>8.1f} "
                f"{seconds:>8.0f} {objects:>8}",
                flush=True,
            )


if __name__ == "__main__":
    main()
