"""Benchmark: a large OME-Zarr image predicted to OME-Zarr labels, streamed; wall time and peak RSS.

Writes a ``size`` x ``size`` uint16 OME-Zarr (NGFF 0.5, with ome-zarr-py, 1024² chunks, built band
by band from synthetic nuclei so the input is never whole in memory either), then, in a fresh
process so the peak resident memory is the prediction's own, opens it with
``segtune.core.io.open_image`` and runs ``segtune.core.omezarr.predict_to_ome_zarr`` with a
seeded base-8, 3-level binary U-Net (the model of ``sliding_window.py --only stream``) under a
1 GB activation limit: probabilities stream tile by tile to a scratch zarr store, and the mask
pyramid is computed chunk by chunk into the image's ``labels/segtune`` group. It prints the wall
time, the peak RSS and the levels written.

Usage::

    python benchmarks/omezarr_predict.py                  # 16384 x 16384 (long on 2 shared cores)
    python benchmarks/omezarr_predict.py --size 8192 --dir /tmp/omezarr-bench
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sliding_window import make_model, peak_rss, reset_peak_rss, synthetic_nuclei  # noqa: E402


def write_input(path: Path, size: int) -> None:
    """A uint16 OME-Zarr of synthetic nuclei, written band by band through ome-zarr-py."""
    import dask
    import dask.array as da
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    band = 1024
    tile = (synthetic_nuclei((band, band), seed=1) * 3000 + 200).astype(np.uint16)

    def block(block_info: dict | None = None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return np.roll(tile, (y0 // band) * 97 + (x0 // band) * 31, axis=1)[: y1 - y0, : x1 - x0]

    image = da.map_blocks(block, dtype=np.uint16, chunks=((band,) * (size // band), (band,) * (size // band)))
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    with dask.config.set(scheduler="synchronous"):
        write_image(
            image,
            group,
            axes="yx",
            fmt=FormatV05(),
            scale={"y": 0.65, "x": 0.65},
            axes_units={"y": "micrometer", "x": "micrometer"},
            scale_factors=(2, 4),
            storage_options={"chunks": (band, band)},
        )


def run(path: Path, base: int, memory_limit: str) -> None:
    import dask
    import zarr

    from segtune.core.io import open_image
    from segtune.core.omezarr import predict_to_ome_zarr
    from segtune.core.predict import TilingOptions

    model = make_model(2, 3, base, synthetic_nuclei((256, 256), seed=2))
    config = {
        "architecture": model.architecture,
        "head": "binary",
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
    }
    image = open_image(path)
    print(
        f"  opened {path.name}: {image.sizes()}, pixel sizes {tuple(image.physical_pixel_sizes)}, "
        f"levels {image.metadata['levels']}",
        flush=True,
    )
    done: list = []
    reset_peak_rss()
    before = peak_rss()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="synchronous"):  # one chunk at a time: the memory bound, not speed
        target = predict_to_ome_zarr(
            (model, config),
            image,
            path,
            name="segtune",
            device="cpu",
            diameter=None,
            tiling=TilingOptions(memory_limit=memory_limit),
            progress=done.append,
        )
    wall = time.perf_counter() - t0
    peak = peak_rss()
    levels = [zarr.open_array(str(p), mode="r").shape for p in sorted(target.iterdir()) if p.is_dir()]
    labels = open_image(target)
    print(
        f"  predicted and wrote labels in {wall:.1f} s; peak RSS {peak / 1e9:.2f} GB (process before: "
        f"{before / 1e9:.2f} GB); levels {levels}; labels pixel sizes {tuple(labels.physical_pixel_sizes)}",
        flush=True,
    )
    corner = np.asarray(labels.data[0, 0, 0, :512, :512])
    crop = np.asarray(image.data[0, 0, 0, :512, :512])
    print(f"  foreground in the first 512² corner: {corner.mean():.3f} (image mean {crop.mean():.0f})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=16384, help="image side in pixels (a multiple of 1024)")
    parser.add_argument("--base", type=int, default=8, help="U-Net width")
    parser.add_argument("--memory", default="1GB", help="memory one forward pass may use")
    parser.add_argument("--dir", default=None, help="folder for the OME-Zarr (a temporary one by default)")
    parser.add_argument("--predict-only", default=None, help=argparse.SUPPRESS)  # the fresh process's half
    args = parser.parse_args(argv)
    if args.predict_only:
        run(Path(args.predict_only), args.base, args.memory)
        return 0
    with contextlib.ExitStack() as stack:
        folder = (
            Path(args.dir)
            if args.dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segtune-omezarr-")))
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"nuclei_{args.size}.ome.zarr"
        print(
            f"=== {args.size} x {args.size} uint16 OME-Zarr -> OME-Zarr labels, U-Net base {args.base}, "
            f"memory limit {args.memory} ===",
            flush=True,
        )
        t0 = time.perf_counter()
        write_input(path, args.size)
        print(f"  wrote the input with ome-zarr-py in {time.perf_counter() - t0:.1f} s", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--predict-only", str(path), "--base", str(args.base), "--memory", args.memory],
            check=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
