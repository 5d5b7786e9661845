"""Benchmark: 3D nuclei without labels (CycleGAN from synthetic masks) vs Vox2Vox vs a supervised 3D U-Net.

Data: the shared QCANet stack (``nuclei3d_qcanet``: an 8-cell mouse embryo, 51 x 120 x 122,
8 labelled nuclei, 10-19 px across). With one stack, the split is by depth: planes 0-25 train,
planes 26-50 test (nuclei 6-8 and the lower parts of 4-5 fall in the test half). The shared
CZI stacks have 5 planes, too thin for 3D patches, and are not used.

supervised
    ``segtune.core.train.trainer.train``, 3D U-Net, binary head, BCE + Dice, on the labels of
    the training half;
vox2vox
    ``segtune.core.train.gan.train_gan(method="vox2vox")`` on the same labels;
cyclegan
    ``train_gan(method="cyclegan")`` on the training half *without its labels*, with masks
    from the synthetic-nuclei recipe ``--mask-recipe`` (diameter about the nuclei's, no Z
    anisotropy: the stack's nuclei are about as deep as wide in planes).

Every method gets the same wall-clock budget (``--minutes``), the same U-Net (depth 3, base 8,
instance norm) and patch. Score: Dice of the foreground (probability > 0.5) on the test half,
by ``segtune.core.predict.predict_raw``. The thesis reported Dice 0.77 (CycleGAN, unsupervised)
and 0.78 (supervised U-Net) on its own data; those numbers are not from this stack.

    python benchmarks/unsupervised_3d.py --minutes 6
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
DATA = (REPO / ".." / "shared" / "data" / "nuclei3d_qcanet").resolve()
SPLIT = 26


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return float(2 * (pred & truth).sum() / total) if total else 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training budget of each method")
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=("supervised", "vox2vox", "cyclegan"),
        default=["supervised", "vox2vox", "cyclegan"],
    )
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 48, 48])
    parser.add_argument("--mask-recipe", default="diameter=15,z_anisotropy=1,touching=0.1,coverage=0.05")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "unsupervised_3d.json")
    args = parser.parse_args(argv)

    import tifffile
    import torch

    from segtune.core.normalize import percentile_normalize
    from segtune.core.predict import predict_raw
    from segtune.core.train.gan import GanConfig, parse_mask_recipe, train_gan
    from segtune.core.train.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs the shared data")
    image = tifffile.imread(DATA / "images" / "8_cell_stage.tif").astype(np.float32)
    labels = tifffile.imread(DATA / "labels" / "8_cell_stage.tif")
    train_image, train_labels = image[:SPLIT], labels[:SPLIT]
    test_image, test_truth = image[SPLIT:], labels[SPLIT:] > 0
    patch = tuple(args.patch)
    rows = []
    for method in args.methods:
        started = time.perf_counter()
        if method == "supervised":
            config = TrainConfig(
                spatial_dims=3,
                head="binary",
                patch=patch,
                batch_size=2,
                epochs=10_000,
                steps_per_epoch=20,
                depth=3,
                base_channels=8,
                norm="instance",
                loss="bce+dice",
                learning_rate=1e-3,
                val_fraction=0,
                patience=None,
                max_minutes=args.minutes,
                device="cpu",
                seed=args.seed,
                min_foreground=0.01,
            )
            result = train([train_image], [train_labels], config)
            model, normalization, epochs = result.model, result.config["normalization"], len(result.history)
        else:
            config = GanConfig(
                method=method,
                patch=patch,
                batch_size=2,
                epochs=10_000,
                steps_per_epoch=20,
                depth=3,
                base_channels=8,
                learning_rate=1e-3 if method == "vox2vox" else 2e-4,
                mask_recipe=parse_mask_recipe(args.mask_recipe),
                max_minutes=args.minutes,
                device="cpu",
                seed=args.seed,
            )
            result = train_gan([train_image], [train_labels] if method == "vox2vox" else None, config)
            model, normalization, epochs = result.model, result.config["normalization"], len(result.history)
        seconds = time.perf_counter() - started
        x = percentile_normalize(test_image, normalization["low"], normalization["high"])[None].astype(np.float32)
        logits = np.asarray(predict_raw(model.eval(), x, spatial_dims=3, device="cpu"))[0]
        score = dice(1 / (1 + np.exp(-logits)) > 0.5, test_truth)
        rows.append(
            {
                "method": method,
                "labels_used": method != "cyclegan",
                "epochs": epochs,
                "train_seconds": round(seconds, 1),
                "dice_test": round(score, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        "| method | labels used | epochs (20 steps) | training (s) | Dice, planes 26-50 |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['method']} | {'yes' if r['labels_used'] else 'none'} | {r['epochs']} | "
        f"{r['train_seconds']:.0f} | {r['dice_test']:.3f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"settings": {**vars(args), "out": str(args.out)}, "rows": rows, "table": table}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
