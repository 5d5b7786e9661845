"""Benchmark (development data only): which optimiser lets one-image fine-tuning learn without harming?

Fine-tunes ``nuclei-2d`` for 2 minutes on the first image of a draw of the DSB 2018 *training*
split (never the validation split that ``finetune_gain.py`` reports on), with ``segtune train
--from`` defaults except the optimiser, ``keep_if_worse`` off, and scores the draw's next 12
images (matched F1 at IoU 0.5) before and after. Two kinds of draw:

- fluorescence images of one size: sources nuclei-2d trained on, where one image has little to
  teach and a change shows as harm;
- stained tissue (dark nuclei on a bright background), which nuclei-2d never saw: whether the
  fine-tuning learns at all.

Also prints how far the weights moved (L2 norm of the change). ``--noise`` instead adds random
changes of given L2 norms to the weights (4 seeds each) and prints the score change on a draw's
images: how much a change of that size moves the score when it teaches nothing.

    python benchmarks/finetune_optimizer.py
    python benchmarks/finetune_optimizer.py --noise 0.05 0.25 --draws fluorescence:512x640:0
    python benchmarks/finetune_optimizer.py --variants adamw@3e-4 sgd@3e-3 --draws fluorescence:360x360:0
    python benchmarks/finetune_optimizer.py --variants sgd@3e-3 --mix 0.5 0.75

``--mix`` also scores the weights part of the way from the starting model to the fine-tuned one
(weight-space interpolation, WiSE-FT): whether a smaller step keeps the gain and loses the harm.
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
DRAWS = ("stained:256x320:0", "fluorescence:360x360:0", "fluorescence:256x256:0")
VARIANTS = ("adamw@3e-4", "sgd@1e-2", "sgd@3e-3")
SCORED = 12


def draw_pairs(data: Path, draw: str) -> list[tuple[np.ndarray, np.ndarray]]:
    import train_pretrained as tp

    kind, group, first = draw.split(":")
    names = tp.dsb_training_group(data, kind, group)
    return [tp._dsb_read(data, n) for n in names[int(first) : int(first) + SCORED + 1]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--draws", nargs="*", default=list(DRAWS), help="KIND:HEIGHTxWIDTH:FIRST")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), help="OPTIMIZER@LEARNING_RATE")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--noise", nargs="*", type=float, help="random weight changes of these L2 norms instead")
    parser.add_argument(
        "--mix", nargs="*", type=float, default=[], help="also score start + A * (fine-tuned - start) for these A"
    )
    args = parser.parse_args(argv)
    if args.noise:
        return noise_floor(args.data, args.draws, args.noise)

    import torch
    from finetune_gain import score

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, train

    for draw in args.draws:
        pairs = draw_pairs(args.data, draw)
        model, config = load_model("nuclei-2d")
        before = score(model, config, pairs[1:])
        print(f"{draw}: {len(pairs) - 1} images scored, before {before:.4f}", flush=True)
        for variant in args.variants:
            optimizer, _, learning_rate = variant.partition("@")
            model, config = load_model("nuclei-2d")
            start = [p.detach().clone() for p in model.parameters()]
            settings = TrainConfig(
                epochs=10_000,
                max_minutes=args.minutes,
                patience=None,
                device="cpu",
                seed=0,
                keep_if_worse=False,
                optimizer=optimizer,
                learning_rate=float(learning_rate),
            )
            image, truth = pairs[0]
            result = train([image], [truth.astype(np.int32)], settings, model=(model, config))
            moved = float(
                torch.sqrt(
                    sum(((p.detach() - s) ** 2).sum() for p, s in zip(result.model.parameters(), start, strict=True))
                )
            )
            after = score(result.model, result.config, pairs[1:])
            row = {
                "draw": draw,
                "variant": variant,
                "before": round(before, 4),
                "after": round(after, 4),
                "change": round(after - before, 4),
                "kept_epoch": result.best_epoch,
                "epochs": len(result.history),
                "weights_moved": round(moved, 4),
                "held_out_matched_f1": [
                    result.baseline_metrics.get("val_matched_f1"),
                    result.best_metrics.get("val_matched_f1"),
                ],
            }
            tuned = [p.detach().clone() for p in result.model.parameters()]
            for share in args.mix:  # weight-space interpolation toward the starting model (WiSE-FT)
                with torch.no_grad():
                    for parameter, s, t in zip(result.model.parameters(), start, tuned, strict=True):
                        parameter.copy_(s + share * (t - s))
                row[f"change_at_{share:g}"] = round(score(result.model, result.config, pairs[1:]) - before, 4)
            print(json.dumps(row), flush=True)
    return 0


def noise_floor(data: Path, draws: list[str], norms: list[float]) -> int:
    import torch
    from finetune_gain import score

    from segtune.core.models.store import load_model

    for draw in draws:
        pairs = draw_pairs(data, draw)[1:]  # the images the fine-tuning runs score
        model, config = load_model("nuclei-2d")
        before = score(model, config, pairs)
        print(f"{draw}: {len(pairs)} images, unchanged weights {before:.4f}", flush=True)
        for norm in norms:
            for seed in range(4):
                model, config = load_model("nuclei-2d")
                generator = torch.Generator().manual_seed(seed)
                noise = [torch.randn(p.shape, generator=generator) for p in model.parameters()]
                factor = norm / float(torch.sqrt(sum((n**2).sum() for n in noise)))
                with torch.no_grad():
                    for parameter, change in zip(model.parameters(), noise, strict=True):
                        parameter.add_(change * factor)
                print(f"  random change of L2 norm {norm:g}, seed {seed}: {score(model, config, pairs) - before:+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
