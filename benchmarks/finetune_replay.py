"""Benchmark: does mixing a bundled model's replay crops into one-image fine-tuning make it lose less?

Measured on groups of the DSB 2018 *training* split (same image size, which there stands for
lab and microscope), so that the benchmark groups of ``finetune_gain.py`` (the validation split)
are never used to choose a default. For each group: fine-tune ``nuclei-2d`` on the first image
(sorted by name) for 2 minutes with ``segtune train --from`` defaults except ``keep_if_worse``
(off, to see what training itself does), once with ``replay`` 0 and once with 0.5, and score the
group's next 16 images (matched F1 at IoU 0.5) before and after.

nuclei-2d trained on these images, so a gain is not expected here; what the table shows is how
much fine-tuning on one image costs the others, with and without replay.

    python benchmarks/finetune_replay.py
    python benchmarks/finetune_replay.py --groups 360x360 --shares 0 0.5
"""

from __future__ import annotations

import argparse
import csv
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
    args = parser.parse_args(argv)

    import train_pretrained as tp
    from finetune_gain import score

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, train

    split = tp.dsb_split(args.data)
    rows = {r["name"]: r for r in csv.DictReader(open(args.data / tp.DSB_FOLDER / "index.csv", newline=""))}
    print(f"{'group':>10}  {'start':>6}  " + "  ".join(f"replay {share:g}" for share in args.shares))
    gains: dict[float, list[float]] = {share: [] for share in args.shares}
    for group in args.groups:
        names = sorted(n for n in split["train"]["fluorescence"] if f"{rows[n]['height']}x{rows[n]['width']}" == group)
        pairs = [tp._dsb_read(args.data, n) for n in names[: SCORED + 1]]
        model, config = load_model("nuclei-2d")
        before = score(model, config, pairs[1:])
        cells = []
        for share in args.shares:
            image, truth = pairs[0]
            settings = TrainConfig(
                epochs=10_000,
                max_minutes=args.minutes,
                patience=None,
                device="cpu",
                seed=0,
                replay=share,
                keep_if_worse=False,
            )
            result = train([image], [truth.astype(np.int32)], settings, model="nuclei-2d")
            after = score(result.model, result.config, pairs[1:])
            gains[share].append(after - before)
            cells.append(f"{after:.3f} ({after - before:+.3f})")
        print(f"{group:>10}  {before:.3f}  " + "  ".join(cells), flush=True)
    print("mean change: " + ", ".join(f"replay {s:g} {np.mean(g):+.4f}" for s, g in gains.items()))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
