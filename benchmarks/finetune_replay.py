"""Benchmark: does mixing a bundled model's replay crops into one-image fine-tuning make it lose less?

Measured on groups of the DSB 2018 *training* split (same image size, which there stands for
lab and microscope), so that the benchmark groups of ``finetune_gain.py`` (the validation split)
are never used to choose a default. For each group: fine-tune ``nuclei-2d`` on the first image
(sorted by name) for 2 minutes with ``segtune train --from`` defaults except ``keep_if_worse``
(off, to see what training itself does), with each ``--shares`` replay share (0 and 0.5) and each
``--learning-rates`` value (default: the automatic one), and score the
group's next 16 images (matched F1 at IoU 0.5) before and after.

nuclei-2d trained on these images, so a gain is not expected here; what the table shows is how
much fine-tuning on one image costs the others, with and without replay.

    python benchmarks/finetune_replay.py
    python benchmarks/finetune_replay.py --groups 360x360 --shares 0 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
SCORED = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--minutes", type=float, default=2.0, help="fine-tuning time per run")
    parser.add_argument("--groups", nargs="*", default=["360x360", "520x696", "512x640", "256x256"])
    parser.add_argument("--shares", nargs="*", type=float, default=[0.0, 0.5], help="replay shares to compare")
    parser.add_argument(
        "--learning-rates", nargs="*", type=float, default=[None], help="fine-tuning learning rates (default: auto)"
    )
    args = parser.parse_args(argv)

    import train_pretrained as tp
    from finetune_gain import score

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, train

    runs = [(share, lr) for lr in args.learning_rates for share in args.shares]
    names_of = {run: f"replay {run[0]:g}" + (f" lr {run[1]:g}" if run[1] else "") for run in runs}
    print(f"{'group':>10}  {'start':>6}  " + "  ".join(f"{names_of[run]:>15}" for run in runs))
    gains: dict[tuple, list[float]] = {run: [] for run in runs}
    for group in args.groups:
        names = tp.dsb_training_group(args.data, "fluorescence", group)
        pairs = [tp._dsb_read(args.data, n) for n in names[: SCORED + 1]]
        model, config = load_model("nuclei-2d")
        before = score(model, config, pairs[1:])
        cells = []
        for share, lr in runs:
            image, truth = pairs[0]
            settings = TrainConfig(
                epochs=10_000,
                max_minutes=args.minutes,
                patience=None,
                device="cpu",
                seed=0,
                replay=share,
                learning_rate=lr,
                keep_if_worse=False,
            )
            result = train([image], [truth.astype(np.int32)], settings, model="nuclei-2d")
            after = score(result.model, result.config, pairs[1:])
            gains[share, lr].append(after - before)
            cells.append(f"{after:.3f} ({after - before:+.3f})")
        print(f"{group:>10}  {before:.3f}  " + "  ".join(cells), flush=True)
    print("mean change: " + ", ".join(f"{names_of[run]} {np.mean(g):+.4f}" for run, g in gains.items()))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
