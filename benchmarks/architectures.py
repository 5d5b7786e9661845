"""Benchmark: U-Net vs ResNet-encoder U-Net vs UNet++ at equal training time, with and without restoration pretraining.

Two data sets, each with a fixed split:

nuclei
    fluorescence images of the 2018 Data Science Bowl (``nuclei_dsb2018``, ``index.csv`` kind
    ``fluorescence``, 256 x 256 only, sorted by name): the first 40 train, the next 20 test.
    Three-class head (background / interior / boundary), instances by seeded watershed, scored
    by matched F1 at IoU 0.5 and pixel F1 of the nuclei.
membranes
    ISBI 2012 EM (``membranes_isbi2012``): images 0-14 train, 15-19 test. Binary head on the
    membrane class, scored by its pixel F1.

Every network trains for the same wall-clock budget (``--minutes``) with the same patches,
batch, loss and learning rate; "+restore" first pretrains the same network by restoration
(``segtune pretrain --method restore``: drop / blur / Sobel / noise, SSIM) for ``--minutes`` on
the training images without labels, then fine-tunes it for ``--minutes`` (encoder not frozen).
The best epoch is chosen on a tenth of the training images. CPU prediction speed: one
1024 x 1024 image through ``predict_raw`` (one thread, after one warm-up call).

    python benchmarks/architectures.py --minutes 2
    python benchmarks/architectures.py --minutes 1 --datasets membranes --networks unet unetpp

Prints a Markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
NETWORKS = {
    # name: (architecture, encoder, base_channels)
    "unet": ("unet", None, 16),
    "resnet18-unet": ("unet", "resnet18", 8),
    "resnet34-unet": ("unet", "resnet34", 8),
    "unetpp": ("unetpp", None, 16),
}


def load(dataset: str) -> tuple[list, list]:
    from segtune.core.io import open_image, read_labels

    if dataset == "nuclei":
        folder = DATA / "nuclei_dsb2018"
        with open(folder / "index.csv") as handle:
            rows = [
                r for r in csv.DictReader(handle) if r["kind"] == "fluorescence" and r["height"] == r["width"] == "256"
            ]
        names = sorted(r["name"] for r in rows)
        split = {"train": names[:40], "test": names[40:60]}
    else:
        folder = DATA / "membranes_isbi2012"
        split = {"train": [str(i) for i in range(15)], "test": [str(i) for i in range(15, 20)]}
    if not folder.is_dir():
        sys.exit(f"{folder} is absent: this benchmark needs the shared data")
    out = []
    for part in ("train", "test"):
        pairs = []
        for name in split[part]:
            image = np.asarray(open_image(folder / "images" / f"{name}.png").data[0, 0, 0], dtype=np.float32)
            labels = np.asarray(read_labels(folder / "labels" / f"{name}.png"))
            if dataset == "membranes":
                labels = (labels == 0).astype(np.uint8)  # ISBI: 0 = membrane
            pairs.append((name, image, labels))
        out.append(pairs)
    return out[0], out[1]


def score(dataset: str, model, config: dict, test: list) -> dict:
    import torch

    from segtune.core.metrics import matched_metrics, pixel_metrics
    from segtune.core.normalize import percentile_normalize
    from segtune.core.postprocess import instances_from_three_class
    from segtune.core.predict import predict_raw

    norm = config["normalization"]
    matched, pixel = [], []
    for _, image, truth in test:
        x = percentile_normalize(image, norm["low"], norm["high"], clip=bool(norm.get("clip", False)))[None]
        logits = torch.from_numpy(np.asarray(predict_raw(model, x, spatial_dims=2, device="cpu")))
        if dataset == "nuclei":
            probabilities = torch.softmax(logits, 0).numpy()
            instances = instances_from_three_class(probabilities, min_size=8)
            matched.append(matched_metrics(instances, truth, thresholds=(0.5,))["f1_at_0.5"])
            pixel.append(pixel_metrics(instances > 0, truth > 0)["f1"])
        else:
            pixel.append(pixel_metrics(torch.sigmoid(logits[0]).numpy() > 0.5, truth > 0)["f1"])
    return {"matched_f1": float(np.mean(matched)) if matched else None, "pixel_f1": float(np.mean(pixel))}


def prediction_seconds(model) -> float:
    from segtune.core.predict import predict_raw

    image = np.random.default_rng(0).random((1, 1024, 1024), dtype=np.float32)
    predict_raw(model, image[:, :256, :256], spatial_dims=2, device="cpu")  # probe the geometry once
    start = time.perf_counter()
    predict_raw(model, image, spatial_dims=2, device="cpu")
    return time.perf_counter() - start


def run_one(dataset: str, network: str, restore: bool, train: list, test: list, args, work: Path) -> dict:
    from segtune.core.models.store import load_model
    from segtune.core.train.pretrain import PretrainConfig, pretrain
    from segtune.core.train.trainer import TrainConfig
    from segtune.core.train.trainer import train as train_model

    architecture, encoder, base = NETWORKS[network]
    head = "three_class" if dataset == "nuclei" else "binary"
    start_model = None
    pretrain_epochs = 0
    if restore:
        folder = work / f"{dataset}-{network}-restore"
        result = pretrain(
            [image for _, image, _ in train],
            PretrainConfig(
                method="restore",
                architecture=architecture,
                encoder=encoder,
                base_channels=base,
                head=head,
                patch=args.patch,
                batch_size=args.batch_size,
                epochs=10_000,
                max_minutes=args.minutes,
                device="cpu",
                seed=args.seed,
            ),
            out=folder,
            overwrite=True,
        )
        start_model, pretrain_epochs = str(folder), len(result.history)
    config = TrainConfig(
        head=head,
        architecture=architecture,
        encoder=encoder,
        base_channels=base,
        patch=args.patch,
        batch_size=args.batch_size,
        epochs=10_000,
        max_minutes=args.minutes,
        patience=None,
        val_fraction=0.1,
        loss="bce+dice",
        learning_rate=2e-3,
        device="cpu",
        seed=args.seed,
    )
    out = work / f"{dataset}-{network}-{'restore' if restore else 'scratch'}"
    started = time.perf_counter()
    result = train_model(
        [image for _, image, _ in train],
        [labels for _, _, labels in train],
        config,
        names=[name for name, _, _ in train],
        model=start_model,
        out=out,
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    model, model_config = load_model(out)
    scores = score(dataset, model, model_config, test)
    return {
        "dataset": dataset,
        "network": network,
        "start": "restore" if restore else "scratch",
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": len(result.history),
        "pretrain_epochs": pretrain_epochs,
        "train_seconds": round(seconds, 1),
        **scores,
        "predict_1024_seconds": round(prediction_seconds(model), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="training budget of every network (and of each pretraining)"
    )
    parser.add_argument("--datasets", nargs="+", choices=("nuclei", "membranes"), default=["nuclei", "membranes"])
    parser.add_argument("--networks", nargs="+", choices=tuple(NETWORKS), default=["unet", "resnet18-unet", "unetpp"])
    parser.add_argument("--no-restore", action="store_true", help="skip the runs with restoration pretraining")
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "architectures.json")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="segtune_arch_") as tmp:
        for dataset in args.datasets:
            train, test = load(dataset)
            for network in args.networks:
                for restore in (False,) if args.no_restore else (False, True):
                    row = run_one(dataset, network, restore, train, test, args, Path(tmp))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    header = "| data set | network | start | parameters | epochs | matched F1@0.5 | pixel F1 | predict 1024² (s) |"
    lines = [header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        matched = f"{r['matched_f1']:.3f}" if r["matched_f1"] is not None else "-"
        epochs = f"{r['pretrain_epochs']} + {r['epochs']}" if r["start"] == "restore" else str(r["epochs"])
        lines.append(
            f"| {r['dataset']} | {r['network']} | {r['start']} | {r['parameters'] / 1e6:.2f} M | {epochs} | "
            f"{matched} | {r['pixel_f1']:.3f} | {r['predict_1024_seconds']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows, "table": table}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
