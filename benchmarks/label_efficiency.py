"""Benchmark: does pretraining or pseudo-labelling help when only k images are labelled?

For each data set (ISBI 2012 membranes, NIH3T3 nuclei), a fixed set of test images is held out
of everything (pretraining included). From the remaining pool, k = 1, 2, 5 images (chosen by
the seed) are labelled and the rest are used without labels. Four ways to get a model, all
fine-tuned with the same budget (steps, patch, batch, learning rate, loss, U-Net):

scratch
    supervised training from random weights on the k labelled images;
restore
    the restoration pretext (drop / blur / Sobel / noise, SSIM loss) on all pool images
    without labels, then fine-tuning on the k labelled images;
simclr+local
    SimCLR (NT-Xent, temperature 0.5) on all pool images, then the local supervised
    contrastive stage (block 16, temperature 0.07) on the k labelled images, then fine-tuning;
pseudo
    the scratch model labels the unlabelled pool images (probability >= 0.9 or <= 0.1, the
    rest ignored), and a second model trains from scratch on labelled + pseudo-labelled images.

Score: pixel F1 of the object class (membranes for ISBI, nuclei for NIH3T3) on the test
images, mean and standard deviation over the seeds. Nuclei images are used at a quarter of
their size (the nuclei are then ~21 px across), membranes at full size. The two unlabelled
pretraining runs (restore, SimCLR) are done once per data set (seed 0) and shared by all k and
seeds; the local stage and everything after it runs per k and seed.

    python benchmarks/label_efficiency.py                      # both data sets, k = 1 2 5, 3 seeds
    python benchmarks/label_efficiency.py --datasets membranes --seeds 2 --steps 40

Prints a Markdown table and writes ``--out`` (JSON of every run, the table, a PNG plot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# idle OpenMP threads sleep instead of spinning (several-fold faster on shared cores); must be
# set before torch starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = (REPO / ".." / "shared" / "data").resolve()
METHODS = ("scratch", "restore", "simclr+local", "pseudo")
DATASETS = {
    # test: held out of everything; scale: resize factor; target: which label pixels are the object class
    "membranes": {
        "folder": "membranes_isbi2012",
        "test": ("15", "16", "17", "18", "19"),
        "scale": 1.0,
        "object": "membrane",
    },
    "nuclei": {"folder": "nuclei_nih3t3", "test": ("1", "30", "40", "47"), "scale": 0.25, "object": "nucleus"},
}
IGNORE = 2  # pseudo-label ignore value (the masks here are 0/1)


def load_dataset(name: str) -> dict:
    """Pool and test images (float32, resized) with 0/1 object masks."""
    from skimage.transform import downscale_local_mean

    from segtune.core.io import open_image, read_labels

    spec = DATASETS[name]
    folder = DATA / spec["folder"]
    if not folder.is_dir():
        sys.exit(f"{folder} is absent: this benchmark needs the shared data")
    stems = sorted((p.stem for p in (folder / "images").glob("*.png")), key=int)
    out = {"pool": [], "test": []}
    for stem in stems:
        image = np.asarray(open_image(folder / "images" / f"{stem}.png").data[0, 0, 0], dtype=np.float32)
        labels = read_labels(folder / "labels" / f"{stem}.png")
        mask = (labels == 0) if name == "membranes" else (labels > 0)  # ISBI: 0 = membrane
        factor = round(1 / spec["scale"])
        if factor > 1:
            image = downscale_local_mean(image, (factor, factor)).astype(np.float32)
            mask = downscale_local_mean(mask.astype(np.float32), (factor, factor)) > 0.5
        out["test" if stem in spec["test"] else "pool"].append((stem, image, mask.astype(np.uint8)))
    return out


def pixel_f1(model, config: dict, test: list) -> tuple[float, float]:
    """Mean pixel F1 and IoU of the object class over the test images."""
    from segtune.core.train.pseudolabel import model_probabilities

    f1s, ious = [], []
    for _, image, mask in test:
        predicted = model_probabilities(model, config, image, device="cpu")[0] > 0.5
        truth = mask > 0
        tp = np.count_nonzero(predicted & truth)
        fp = np.count_nonzero(predicted & ~truth)
        fn = np.count_nonzero(~predicted & truth)
        f1s.append(2 * tp / max(1, 2 * tp + fp + fn))
        ious.append(tp / max(1, tp + fp + fn))
    return float(np.mean(f1s)), float(np.mean(ious))


def finetune(images, labels, args, seed: int, start=None, ignore_value=None):
    from segtune.core.train.trainer import TrainConfig, train

    config = TrainConfig(
        head="binary",
        patch=args.patch,
        batch_size=args.batch,
        epochs=args.epochs,
        steps_per_epoch=max(1, args.steps // args.epochs),
        loss="bce+dice",
        learning_rate=args.lr,
        val_fraction=0.0,
        patience=None,
        depth=args.depth,
        base_channels=args.base_channels,
        device="cpu",
        seed=seed,
        ignore_value=ignore_value,
        min_foreground=0.0,
    )
    result = train(images, labels, config, model=start)
    return result.model, result.config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--k", nargs="+", type=int, default=[1, 2, 5], help="numbers of labelled images")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps (the same for every method)")
    parser.add_argument("--epochs", type=int, default=4, help="the fine-tuning steps are split into this many epochs")
    parser.add_argument("--pretrain-steps", type=int, default=200, help="restore and SimCLR steps (once per data set)")
    parser.add_argument("--local-steps", type=int, default=40, help="local contrastive steps (per k and seed)")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.9, help="pseudo-label confidence")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    import torch

    from segtune.core.train.pretrain import PretrainConfig, pretrain
    from segtune.core.train.pseudolabel import model_probabilities, pseudo_labels

    started = time.monotonic()
    runs: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="label_efficiency_"))
    arch = {"depth": args.depth, "base_channels": args.base_channels, "patch": args.patch, "head": "binary"}
    print(
        f"torch threads: {torch.get_num_threads()}; "
        f"fine-tuning {args.steps} steps of {args.batch} x {args.patch}^2 patches; "
        f"U-Net depth {args.depth}, width {args.base_channels}",
        flush=True,
    )
    for name in args.datasets:
        data = load_dataset(name)
        pool, test = data["pool"], data["test"]
        pool_images = [image for _, image, _ in pool]
        print(f"\n{name}: pool {len(pool)} images, test {len(test)} ({', '.join(s for s, _, _ in test)})", flush=True)
        t0 = time.monotonic()
        restore_dir, simclr_dir = work / f"{name}_restore", work / f"{name}_simclr"
        restore = pretrain(
            pool_images,
            PretrainConfig(method="restore", epochs=4, steps_per_epoch=args.pretrain_steps // 4, batch_size=8, **arch),
            out=restore_dir,
        )
        print(
            f"  restore pretraining: loss {restore.history[0]['loss']:.3f} -> {restore.history[-1]['loss']:.3f} "
            f"({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        t0 = time.monotonic()
        simclr = pretrain(
            pool_images,
            PretrainConfig(method="simclr", epochs=4, steps_per_epoch=args.pretrain_steps // 4, batch_size=16, **arch),
            out=simclr_dir,
        )
        print(
            f"  SimCLR pretraining: loss {simclr.history[0]['loss']:.3f} -> {simclr.history[-1]['loss']:.3f} "
            f"({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
        for k in args.k:
            for seed in range(args.seeds):
                chosen = sorted(
                    np.random.default_rng(1000 * k + seed).choice(len(pool), size=k, replace=False).tolist()
                )
                images = [pool[i][1] for i in chosen]
                labels = [pool[i][2] for i in chosen]
                unlabelled = [pool[i][1] for i in range(len(pool)) if i not in chosen]
                row = {"dataset": name, "k": k, "seed": seed, "labelled": [pool[i][0] for i in chosen]}
                t0 = time.monotonic()
                model, config = finetune(images, labels, args, seed)
                row["scratch"] = pixel_f1(model, config, test)
                # pseudo-labels from the scratch model on the unlabelled pool, then a new model on both
                pseudo = [
                    pseudo_labels(
                        model_probabilities(model, config, image, device="cpu"),
                        "binary",
                        args.threshold,
                        ignore_value=IGNORE,
                    )
                    for image in unlabelled
                ]
                row["pseudo_confident"] = float(np.mean([(p != IGNORE).mean() for p in pseudo]))
                student, student_config = finetune(
                    images + unlabelled, labels + pseudo, args, seed, ignore_value=IGNORE
                )
                row["pseudo"] = pixel_f1(student, student_config, test)
                model, config = finetune(images, labels, args, seed, start=restore_dir)
                row["restore"] = pixel_f1(model, config, test)
                local_dir = work / f"{name}_local_k{k}_s{seed}"
                pretrain(
                    images,
                    PretrainConfig(
                        method="local-contrastive",
                        epochs=1,
                        steps_per_epoch=args.local_steps,
                        batch_size=args.batch,
                        seed=seed,
                        min_foreground=0.0,
                        **arch,
                    ),
                    labels=labels,
                    from_model=simclr_dir,
                    out=local_dir,
                )
                model, config = finetune(images, labels, args, seed, start=local_dir)
                row["simclr+local"] = pixel_f1(model, config, test)
                row["seconds"] = time.monotonic() - t0
                runs.append(row)
                print(
                    f"  k={k} seed={seed} ({', '.join(row['labelled'])}): "
                    + ", ".join(f"{m} {row[m][0]:.3f}" for m in METHODS)
                    + f"  (pseudo-labels confident on {row['pseudo_confident']:.0%} of pixels) "
                    f"[{row['seconds']:.0f} s]",
                    flush=True,
                )
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / "label_efficiency.partial.json").write_text(json.dumps(runs, indent=2) + "\n")

    elapsed = time.monotonic() - started
    table = format_table(runs, args)
    print("\n" + table)
    print(f"\nwall time {elapsed / 60:.1f} min on {os.cpu_count()} CPU core(s)")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": runs,
        "wall_seconds": elapsed,
        "command": "python benchmarks/label_efficiency.py " + " ".join(argv or sys.argv[1:]),
    }
    (args.out / "label_efficiency.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "label_efficiency.md").write_text(table + "\n")
    plot(runs, args, args.out / "label_efficiency.png")
    (args.out / "label_efficiency.partial.json").unlink(missing_ok=True)
    print(f"wrote {args.out / 'label_efficiency.json'}, .md and .png")
    return 0


def _summary(runs, dataset, k, method):
    values = [r[method][0] for r in runs if r["dataset"] == dataset and r["k"] == k]
    return float(np.mean(values)), float(np.std(values)), len(values)


def format_table(runs: list[dict], args) -> str:
    lines = [
        "| data set (object) | k labelled | " + " | ".join(METHODS) + " | best minus scratch |",
        "| --- | --- |" + " --- |" * (len(METHODS) + 1),
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for k in sorted({r["k"] for r in runs if r["dataset"] == dataset}):
            cells, means = [], {}
            for method in METHODS:
                mean, std, n = _summary(runs, dataset, k, method)
                means[method] = mean
                cells.append(f"{mean:.3f} ± {std:.3f}")
            best = max(METHODS[1:], key=lambda m: means[m])
            lines.append(
                f"| {dataset} ({DATASETS[dataset]['object']}) | {k} | "
                + " | ".join(cells)
                + f" | {means[best] - means['scratch']:+.3f} ({best}) |"
            )
    n_seeds = max((r["seed"] for r in runs), default=-1) + 1
    lines.append("")
    lines.append(
        f"Pixel F1 of the object class on held-out test images, mean ± std over {n_seeds} seed(s) "
        f"(the seed picks the labelled images and the initialisation); every method fine-tunes for "
        f"{args.steps} steps of {args.batch} patches of {args.patch}² px."
    )
    return "\n".join(lines)


def plot(runs: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    figure, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        ks = sorted({r["k"] for r in runs if r["dataset"] == dataset})
        for offset, method in enumerate(METHODS):
            stats = [_summary(runs, dataset, k, method) for k in ks]
            x = np.arange(len(ks)) + (offset - 1.5) * 0.06
            ax.errorbar(x, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", capsize=3, label=method)
        ax.set_xticks(np.arange(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("labelled images (k)")
        ax.set_ylabel(f"pixel F1 ({DATASETS[dataset]['object']})")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    figure.suptitle(f"Label efficiency: {args.steps} fine-tuning steps, mean ± std over seeds")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
