"""Benchmark: segtune's tiled prediction against MONAI's sliding window and one untiled forward pass.

Runs, in one process and alternating so that machine load hits every method alike:

* 2D: a base-32, 4-level U-Net (3 poolings) on a 2048 x 2048 image (a real NIH3T3 nuclei image
  mirrored out to that size when ``../shared/data`` is there, else synthetic nuclei);
* 3D: a base-16, 3-level U-Net (2 poolings) on a 64 x 512 x 512 synthetic volume;

timing ``segtune.core.predict.predict_raw`` (automatic tiles, and a run under a memory limit
that forces several tiles), MONAI's ``sliding_window_inference`` (roi 256 / 64x128x128, overlap
0.25, Gaussian, batch 4 / 2) and one untiled forward pass (plain eager, and with the same
channels-last layout and folded BatchNorm segtune uses). It prints medians, throughput ratios,
the largest difference from the untiled pass (logits and sigmoid probabilities) and the peak
resident memory of each run. The weights are random (seeded) with BatchNorm statistics warmed
on the input, as a trained network's would be.

A streaming run then predicts a 16384 x 16384 uint16 zarr image on disk into a zarr store in a
fresh process, printing wall time and peak RSS.

Usage::

    python benchmarks/sliding_window.py                 # everything (15-40 min on 2 shared cores)
    python benchmarks/sliding_window.py --repeats 3 --repeats-3d 2 --extras-3d
    python benchmarks/sliding_window.py --only stream --stream-base 32

MONAI and psutil are benchmark-only dependencies (``pip install napari-segtune[benchmark]``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


# --- memory ---------------------------------------------------------------------------------


def _status(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    match = re.search(rf"{field}:\s+(\d+) kB", text)
    return int(match.group(1)) * 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    value = _status("VmHWM")
    if value is not None:
        return value
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


# --- models and data ------------------------------------------------------------------------


def make_model(spatial_dims: int, depth: int, base: int, warm_on: np.ndarray, seed: int = 0) -> torch.nn.Module:
    """segtune's U-Net with seeded random weights and BatchNorm statistics from ``warm_on``."""
    from segtune.core.models.unet import UNet

    torch.manual_seed(seed)
    model = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=1, depth=depth, base_channels=base)
    model.train()
    crop = tuple(slice(0, min(n, 128 if spatial_dims == 2 else 32)) for n in warm_on.shape)
    patch = torch.from_numpy(np.ascontiguousarray(warm_on[crop]))[None, None]
    with torch.no_grad():
        for _ in range(4):
            model(patch)
    return model.eval()


def real_or_synthetic_2d(size: int) -> tuple[np.ndarray, str]:
    """A normalised nuclei image of ``size`` x ``size``: NIH3T3 mirrored out, or synthetic."""
    folder = SHARED_DATA / "nuclei_nih3t3"
    files = (
        sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in (".png", ".tif", ".tiff") and "label" not in str(p).lower()
        )
        if folder.is_dir()
        else []
    )
    if files:
        import imageio.v3 as iio

        raw = np.asarray(iio.imread(files[0])).astype(np.float32)
        raw = raw if raw.ndim == 2 else raw[..., 0]
        lo, hi = np.percentile(raw, (1, 99.8))
        image = (raw - lo) / max(hi - lo, 1e-6)
        pad = [(0, max(0, size - n)) for n in image.shape]
        image = np.pad(image, pad, mode="symmetric")[:size, :size]
        return np.ascontiguousarray(image, dtype=np.float32), f"real: {files[0].name} mirrored to {size}x{size}"
    return synthetic_nuclei((size, size), seed=0), "synthetic nuclei"


def synthetic_nuclei(shape: tuple[int, ...], seed: int = 0, count_per_mpx: float = 400.0) -> np.ndarray:
    """Bright blurred blobs on a noisy background, normalised to about [0, 1]."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    n = max(1, int(count_per_mpx * np.prod(shape) / 1e6))
    centres = tuple(rng.integers(0, s, n) for s in shape)
    image[centres] = 1.0
    image = ndi.gaussian_filter(image, 4.0) * 150.0
    image += rng.normal(0.05, 0.02, shape).astype(np.float32)
    return np.clip(image, 0, None).astype(np.float32)


# --- the methods ----------------------------------------------------------------------------


def run_untiled(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(image)[None, None])[0].numpy()


def run_untiled_fast(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The same single pass with the optimisations segtune applies (a fair floor for it)."""
    from segtune.core.predict import Runner

    runner = Runner(model, torch.device("cpu"), "float32", image.ndim)
    return runner.run(image[None, None])[0]


def run_segtune(model: torch.nn.Module, image: np.ndarray, memory_limit: Any = None) -> np.ndarray:
    from segtune.core.predict import predict_raw

    return predict_raw(model, image[None], spatial_dims=image.ndim, device="cpu", memory_limit=memory_limit)


def run_monai(
    model: torch.nn.Module, image: np.ndarray, roi: tuple[int, ...], batch: int, fast: bool = False
) -> np.ndarray:
    """MONAI's sliding window; ``fast`` gives it segtune's optimised model copy (channels last, BN folded)."""
    from monai.inferers import sliding_window_inference

    predictor: Any = model
    if fast:
        from segtune.core.predict import Runner

        predictor = Runner(model, torch.device("cpu"), "float32", image.ndim).forward
    with torch.inference_mode():
        out = sliding_window_inference(
            torch.from_numpy(image)[None, None], roi, batch, predictor, overlap=0.25, mode="gaussian"
        )
    return out[0].numpy()


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def bench_case(
    name: str,
    model: torch.nn.Module,
    image: np.ndarray,
    roi: tuple[int, ...],
    batch: int,
    repeats: int,
    limit: str,
    extras: bool = True,
    monai_fast: bool = False,
) -> dict:
    from segtune.core.predict import Runner, memory_budget, model_geometry, plan_tiles

    print(f"\n=== {name}: input {image.shape}, {repeats} round(s) ===", flush=True)
    t0 = time.perf_counter()
    runner = Runner(model, torch.device("cpu"), "float32", image.ndim)
    geometry = model_geometry(runner, model, image.ndim, 1, None, None)
    print(f"probe (once per model, cached): {time.perf_counter() - t0:.1f} s -> {geometry}", flush=True)
    for label, budget in (
        ("auto", memory_budget(torch.device("cpu"), None)),
        (limit, memory_budget(torch.device("cpu"), limit)),
    ):
        plan = plan_tiles(image.shape, geometry, memory_limit=budget)
        print(
            f"segtune plan ({label}): tile {plan.tile} x {plan.counts}, work {plan.work:.3f}x untiled, "
            f"batch {plan.batch_size}",
            flush=True,
        )
    del runner

    methods = {
        "untiled": lambda: run_untiled(model, image),
        "segtune": lambda: run_segtune(model, image),
        "monai": lambda: run_monai(model, image, roi, batch),
    }
    once = (
        {
            "untiled-fast": lambda: run_untiled_fast(model, image),
            f"segtune-{limit}": lambda: run_segtune(model, image, limit),
        }
        if extras
        else {}
    )
    if monai_fast:
        once["monai-fast"] = lambda: run_monai(model, image, roi, batch, fast=True)
    times: dict[str, list[float]] = {k: [] for k in [*methods, *once]}
    rss: dict[str, int] = {}
    outputs: dict[str, np.ndarray] = {}
    order = list(methods)
    for round_ in range(repeats):
        sequence = order if round_ % 2 == 0 else order[::-1]
        if round_ == 0:
            sequence = [*sequence, *once]
        for key in sequence:
            fn = methods.get(key) or once[key]
            gc.collect()
            reset_peak_rss()
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            times[key].append(elapsed)
            rss[key] = max(rss.get(key, 0), peak_rss())
            outputs.setdefault(key, np.asarray(out))
            del out
            print(f"  {key:>16}: {elapsed:7.2f} s   peak RSS {rss[key] / 1e9:5.2f} GB", flush=True)
    reference = outputs["untiled"]
    result = {"name": name, "rows": []}
    untiled_median = float(np.median(times["untiled"]))
    fast_median = float(np.median(times["untiled-fast"])) if "untiled-fast" in times else float("nan")
    monai_median = float(np.median(times["monai"]))
    print(f"\n{name}: medians, ratios and differences from the untiled pass")
    print(
        f"  {'method':>16} {'median s':>9} {'vs untiled':>11} {'vs fast':>8} {'MONAI/this':>11} "
        f"{'max|dlogit|':>12} {'max|dprob|':>11} {'peak RSS':>9}"
    )
    for key, values in times.items():
        median = float(np.median(values))
        diff = float(np.abs(outputs[key] - reference).max())
        dprob = float(np.abs(sigmoid(outputs[key]) - sigmoid(reference)).max())
        row = {
            "method": key,
            "median_s": median,
            "runs": len(values),
            "vs_untiled": median / untiled_median,
            "vs_untiled_fast": median / fast_median,
            "monai_over_this": monai_median / median,
            "max_abs_logit": diff,
            "max_abs_prob": dprob,
            "peak_rss_gb": rss[key] / 1e9,
        }
        result["rows"].append(row)
        print(
            f"  {key:>16} {median:9.2f} {row['vs_untiled']:10.2f}x {row['vs_untiled_fast']:7.2f}x "
            f"{row['monai_over_this']:10.2f}x {diff:12.2e} {dprob:11.2e} {rss[key] / 1e9:7.2f} GB"
        )
    return result


def exactness_on_real_image(model: torch.nn.Module) -> None:
    """A real NIH3T3 image at its own size, forced into several tiles, against one pass."""
    from segtune.core.predict import predict_raw, probe_model

    folder = SHARED_DATA / "nuclei_nih3t3"
    if not folder.is_dir():
        print("\n(real-image exactness skipped: ../shared/data/nuclei_nih3t3 is absent)")
        return
    import imageio.v3 as iio

    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".tif", ".tiff") and "label" not in str(p).lower()
    )
    geometry = probe_model(model, spatial_dims=2, in_channels=1, device="cpu")
    print("\n=== exactness on real images (NIH3T3, native size, forced tiling) ===")
    for path in files[:2]:
        raw = np.asarray(iio.imread(path)).astype(np.float32)
        raw = raw if raw.ndim == 2 else raw[..., 0]
        lo, hi = np.percentile(raw, (1, 99.8))
        image = ((raw - lo) / max(hi - lo, 1e-6)).astype(np.float32)
        reference = run_untiled(model, image)
        limit = 600 * 600 * geometry.bytes_per_pixel
        events: list = []
        tiled = predict_raw(
            model, image[None], spatial_dims=2, device="cpu", memory_limit=limit, progress=events.append
        )
        print(
            f"  {path.name} {image.shape}: {events[-1].total} tiles, "
            f"max |dlogit| {np.abs(tiled - reference).max():.2e}, "
            f"max |dprob| {np.abs(sigmoid(tiled) - sigmoid(reference)).max():.2e}"
        )


def floor(model: torch.nn.Module, image: np.ndarray, repeats: int) -> None:
    """segtune against the same single pass with the same optimisations, alternating, ``repeats`` rounds."""
    run_segtune(model, image[:256, :256])  # probe and warm up outside the timings
    times: dict[str, list[float]] = {"segtune": [], "untiled-fast": []}
    for round_ in range(repeats):
        for key in ("segtune", "untiled-fast") if round_ % 2 == 0 else ("untiled-fast", "segtune"):
            start = time.perf_counter()
            run_segtune(model, image) if key == "segtune" else run_untiled_fast(model, image)
            times[key].append(time.perf_counter() - start)
            print(f"  {key:>13}: {times[key][-1]:7.2f} s", flush=True)
    ratios = [a / b for a, b in zip(times["segtune"], times["untiled-fast"], strict=True)]
    print(
        f"medians: segtune {np.median(times['segtune']):.2f} s, untiled-fast {np.median(times['untiled-fast']):.2f} s; "
        f"ratio of medians {np.median(times['segtune']) / np.median(times['untiled-fast']):.3f}, "
        f"per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}"
    )


# --- streaming ------------------------------------------------------------------------------


def stream(size: int, base: int, memory_limit: str, folder: Path) -> None:
    """Predict a ``size`` x ``size`` uint16 zarr image on disk into a zarr store; print time and peak RSS."""
    import zarr

    from segtune.core.predict import TilingOptions, predict

    source = folder / "input.zarr"
    print(
        f"\n=== streaming: {size} x {size} uint16 zarr -> zarr, U-Net base {base}, memory limit {memory_limit} ===",
        flush=True,
    )
    t0 = time.perf_counter()
    array = zarr.open_array(str(source), mode="w", shape=(size, size), chunks=(1024, 1024), dtype="uint16")
    band = 1024
    tile = (synthetic_nuclei((band, band), seed=1) * 3000 + 200).astype(np.uint16)
    for y in range(0, size, band):
        array[y : y + band] = np.tile(np.roll(tile, y // band * 97, axis=1), (1, size // band))
    print(
        f"  wrote the input in {time.perf_counter() - t0:.1f} s ({array.nbytes / 1e9:.2f} GB uncompressed)", flush=True
    )
    del array, tile
    gc.collect()

    warm = synthetic_nuclei((256, 256), seed=2)
    model = make_model(2, 3, base, warm)
    config = {
        "architecture": model.architecture,
        "head": "binary",
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
    }
    image = zarr.open_array(str(source), mode="r")
    gc.collect()
    reset_peak_rss()
    before = peak_rss()
    done: list = []
    t0 = time.perf_counter()
    result = predict(
        (model, config),
        image,
        axes="YX",
        device="cpu",
        labels=False,
        tiling=TilingOptions(memory_limit=memory_limit),
        out=folder / "probabilities.zarr",
        progress=done.append,
    )
    wall = time.perf_counter() - t0
    peak = peak_rss()
    out = result.probabilities
    check = np.asarray(out[0, 0, 0, :512, :512])
    print(
        f"  predicted {size}x{size} in {wall:.1f} s ({done[-1].total} tiles); peak RSS {peak / 1e9:.2f} GB "
        f"(process before the run: {before / 1e9:.2f} GB); output {out.shape} chunks {out.chunks}, "
        f"complete={out.attrs.get('segtune', {}).get('complete')}, finite corner: {bool(np.isfinite(check).all())}",
        flush=True,
    )


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--only",
        choices=("2d", "3d", "stream", "real", "floor"),
        default=None,
        help="one part; 'floor' alternates segtune and the equally optimised untiled pass in 2D (--repeats rounds)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds for 2D (alternating order)")
    parser.add_argument("--repeats-3d", type=int, default=1, help="rounds for 3D (each costs about 7 min on 2 cores)")
    parser.add_argument(
        "--extras-3d", action="store_true", help="also time the optimised untiled pass and a memory-limited run in 3D"
    )
    parser.add_argument(
        "--monai-fast", action="store_true", help="also time MONAI given segtune's optimised model copy"
    )
    parser.add_argument("--size-2d", type=int, default=2048)
    parser.add_argument("--shape-3d", default="64,512,512")
    parser.add_argument("--stream-size", type=int, default=16384)
    parser.add_argument(
        "--stream-base", type=int, default=8, help="U-Net width for the streaming run (32 takes ~30 min on 2 cores)"
    )
    parser.add_argument("--stream-memory", default="1GB", help="memory limit for one forward pass in the streaming run")
    parser.add_argument(
        "--stream-dir", default=None, help="folder for the streaming run's zarr stores (a temporary one by default)"
    )
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()}"
    )
    if args.only == "stream":
        with contextlib.ExitStack() as stack:
            folder = (
                Path(args.stream_dir)
                if args.stream_dir
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="segtune-stream-")))
            )
            stream(args.stream_size, args.stream_base, args.stream_memory, folder)
        return 0

    if args.only == "floor":
        image, origin = real_or_synthetic_2d(args.size_2d)
        model2d = make_model(2, 3, 32, image)
        print(f"2D input: {origin}")
        floor(model2d, image, args.repeats)
        return 0
    if args.only in (None, "2d", "real"):
        image, origin = real_or_synthetic_2d(args.size_2d)
        model2d = make_model(2, 3, 32, image)
        if args.only in (None, "2d"):
            print(f"2D input: {origin}")
            bench_case(
                "2D U-Net base 32, 4 levels",
                model2d,
                image,
                (256, 256),
                4,
                args.repeats,
                "1.5GB",
                monai_fast=args.monai_fast,
            )
        exactness_on_real_image(model2d)
        del image, model2d
        gc.collect()
    if args.only in (None, "3d"):
        shape = tuple(int(s) for s in args.shape_3d.split(","))
        volume = synthetic_nuclei(shape, seed=3, count_per_mpx=60.0)
        model3d = make_model(3, 2, 16, volume)
        print("3D input: synthetic nuclei")
        bench_case(
            "3D U-Net base 16, 3 levels",
            model3d,
            volume,
            (64, 128, 128),
            2,
            args.repeats_3d,
            "3GB",
            args.extras_3d,
            monai_fast=args.monai_fast,
        )
        del volume, model3d
        gc.collect()
    if args.only is None:
        command = [
            sys.executable,
            __file__,
            "--only",
            "stream",
            "--stream-size",
            str(args.stream_size),
            "--stream-base",
            str(args.stream_base),
            "--stream-memory",
            args.stream_memory,
        ]
        if args.stream_dir:
            command += ["--stream-dir", args.stream_dir]
        subprocess.run(command, check=True)  # a fresh process, so its peak RSS is its own
    return 0


if __name__ == "__main__":
    sys.exit(main())
