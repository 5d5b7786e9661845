"""Benchmark (development data only): does the keep-if-worse rule keep the right model?

When a fine-tune scores lower than the starting model on its held-out data, ``segtune train
--from`` keeps the starting model. With one image, that held-out data is a strip of it: the
rule compares matched F1 there, and on a tie panoptic quality, then the loss
(:func:`segtune.core.train.validation.worse`). This fine-tunes ``nuclei-2d`` for 2 minutes with
the defaults but ``keep_if_worse`` off, on one image of a draw of the DSB 2018 *training* split
(never the validation split ``finetune_gain.py`` reports on), scores the draw's other images
with the starting and the trained weights, and prints what each rule would have handed over:

- R0, today's rule;
- R1, keep the starting model only when the strip's matched F1 is lower (ties go to the trained
  model, as a user who pressed Fine-tune asked).

Draws: the small fluorescence groups ``nuclei-2d`` reads least well (603 x 1272, 4 images;
260 x 347, 3; 256 x 320, 3), each image fine-tuned on in turn and the group's others scored,
and the first image of four large groups (the next 12 scored).

    python benchmarks/finetune_keep_rule.py
    python benchmarks/finetune_keep_rule.py --draws fluorescence:260x347:rot0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
SMALL_GROUPS = {"603x1272": 4, "260x347": 3, "256x320": 3}
LARGE_DRAWS = ("fluorescence:360x360:0", "fluorescence:256x256:0", "fluorescence:520x696:0", "fluorescence:512x640:0")


def draws(data: Path) -> dict[str, tuple[tuple[np.ndarray, np.ndarray], list]]:
    """Draw name -> (the image fine-tuned on, the images scored)."""
    import train_pretrained as tp
    from finetune_optimizer import draw_pairs

    out = {}
    for size, count in SMALL_GROUPS.items():
        names = tp.dsb_training_group(data, "fluorescence", size)
        if len(names) != count:
            raise SystemExit(f"DSB training split: {len(names)} fluorescence images of {size}, expected {count}")
        pairs = [tp._dsb_read(data, n) for n in names]
        for i in range(count):
            out[f"fluorescence:{size}:rot{i}"] = (pairs[i], pairs[:i] + pairs[i + 1 :])
    for draw in LARGE_DRAWS:
        pairs = draw_pairs(data, draw)
        out[draw] = (pairs[0], pairs[1:])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--draws", nargs="*", help="only these draws (names as printed)")
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args(argv)

    from finetune_gain import score

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, train
    from segtune.core.train.validation import worse

    keys = ("val_matched_f1", "val_pq", "val_loss", "val_objects")
    handed = {"R0": [], "R1": []}
    for name, ((image, truth), scored) in draws(args.data).items():
        if args.draws and name not in args.draws:
            continue
        model, config = load_model("nuclei-2d")
        before = score(model, config, scored)
        settings = TrainConfig(
            epochs=10_000, max_minutes=args.minutes, patience=None, device="cpu", seed=0, keep_if_worse=False
        )
        result = train([image], [truth.astype(np.int32)], settings, model=(model, config))
        change = score(result.model, result.config, scored) - before
        start, trained = result.baseline_metrics, result.best_metrics
        keeps = {
            "R0": worse(trained, start),
            "R1": trained.get("val_matched_f1", 0.0) < start.get("val_matched_f1", 0.0),
        }
        for rule, keep in keeps.items():
            handed[rule].append(0.0 if keep else change)
        row = {
            "draw": name,
            "scored": len(scored),
            "before": round(before, 4),
            "trained_change": round(change, 4),
            "kept_epoch": result.best_epoch,
            "epochs": len(result.history),
            "strip_start": {k: start.get(k) for k in keys},
            "strip_trained": {k: trained.get(k) for k in keys},
            **{f"{rule}_keeps_start": bool(keep) for rule, keep in keeps.items()},
        }
        print(json.dumps(row), flush=True)
    for rule, changes in handed.items():
        print(f"{rule}: mean change of what the user gets over {len(changes)} draws {np.mean(changes):+.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
