"""Throughput of prediction on a local dask cluster (segtune.core.parallel_predict) with 1 and 2 workers,
against one process.

Run: ``python benchmarks/distributed_predict.py [--files 8] [--crop 512] [--workers 1 2] [--model M] [--split]``.

Inputs are real images: the first ``--files`` of ``../shared/data/nuclei_nih3t3/images``
(1024 x 1344 fluorescence), cropped to ``--crop`` pixels square (0: whole) and written as TIFFs.
The model is ``--model`` (a bundled name or folder) or an untrained U-Net of the default size
(depth 4, 32 base channels): throughput does not depend on the weights. For each worker count a
LocalCluster is started (each worker gets ``cores // workers`` torch threads), one file is
predicted to warm it up (model sent, network built, tiling probed), then all files are predicted
into a fresh folder. ``--split`` cuts every file into chunk tasks (the large-volume path).

Prints, per set-up: cluster start, warm-up and run seconds, files/s and megapixels/s, and how
many label files equal the single-process ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuclei_nih3t3" / "images"


def prepare_inputs(folder: Path, n_files: int, crop: int) -> list[Path]:
    import tifffile

    from segtune.core.io import open_image

    sources = sorted(DATA.glob("*.png"))[:n_files]
    if len(sources) < n_files:
        raise SystemExit(f"{DATA} holds {len(sources)} images; --files {n_files} needs that many")
    paths = []
    for source in sources:
        plane = np.asarray(open_image(source).data[0, 0, 0])
        if crop:
            plane = plane[:crop, :crop]
        path = folder / f"{source.stem}.tif"
        tifffile.imwrite(path, plane)
        paths.append(path)
    return paths


def model_folder(folder: Path, name: str | None) -> str:
    if name:
        return name
    from segtune.core.models.store import default_config, save_model
    from segtune.core.models.unet import UNet

    net = UNet(spatial_dims=2, in_channels=1, out_channels=1)  # the default size
    return str(save_model(net, default_config(net.architecture), folder / "unet-default"))


def main() -> None:
    import torch

    from segtune.core import parallel_predict
    from segtune.core.io import read_labels
    from segtune.core.models.store import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--crop", type=int, default=512, help="square crop of each image (0: the whole 1024 x 1344)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--model", default=None, help="bundled model name or folder (default: an untrained default U-Net)"
    )
    parser.add_argument("--split", action="store_true", help="split every file into chunk tasks")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="segtune-bench-"))
    try:
        inputs = prepare_inputs(work, args.files + 1, args.crop)
        warm, files = inputs[:1], inputs[1:]
        megapixels = sum(int(np.prod(read_labels(p).shape)) for p in files) / 1e6
        model = model_folder(work, args.model)
        cores = os.cpu_count() or 1
        print(
            f"{len(files)} files, {megapixels:.2f} Mpx in all, {cores} cores, torch {torch.__version__}, "
            f"model {Path(model).name}{', split in chunks' if args.split else ''}"
        )

        loaded = load_model(model)
        single = work / "single"
        parallel_predict.predict_file(warm[0], work / "warm_single.tif", model=loaded, device="cpu")
        start = time.perf_counter()
        for path in files:
            parallel_predict.predict_file(path, single / f"{path.stem}_labels.tif", model=loaded, device="cpu")
        seconds = time.perf_counter() - start
        rows = [("1 process", torch.get_num_threads(), 0.0, 0.0, seconds, len(files))]

        for n in args.workers:
            out = work / f"workers{n}"
            start = time.perf_counter()
            with parallel_predict.open_client(workers=n) as client:
                client.wait_for_workers(n)
                started = time.perf_counter() - start
                options = {"device": "cpu", "split_above": 1 if args.split else None}
                begin = time.perf_counter()
                parallel_predict.predict_files(model, warm, work / f"warm{n}", client=client, **options)
                warmed = time.perf_counter() - begin
                begin = time.perf_counter()
                report = parallel_predict.predict_files(model, files, out, client=client, **options)
                seconds = time.perf_counter() - begin
            same = sum(
                np.array_equal(read_labels(out / f"{p.stem}_labels.tif"), read_labels(single / f"{p.stem}_labels.tif"))
                for p in files
            )
            rows.append(
                (
                    f"{n} worker{'s' if n > 1 else ''} ({report.tasks} tasks)",
                    max(1, cores // n),
                    started,
                    warmed,
                    seconds,
                    same,
                )
            )

        print(
            f"{'set-up':<24} {'threads':>7} {'start s':>8} {'warm s':>7} {'run s':>7} "
            f"{'files/s':>8} {'Mpx/s':>7}  labels equal"
        )
        for name, threads, started, warmed, seconds, same in rows:
            print(
                f"{name:<24} {threads:>7} {started:>8.1f} {warmed:>7.1f} {seconds:>7.1f} {len(files) / seconds:>8.2f} "
                f"{megapixels / seconds:>7.2f}  {same}/{len(files)}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
