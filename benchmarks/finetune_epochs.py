"""Benchmark: does the held-out score of one-image fine-tuning see what happens to the source's other images?

For each draw of DSB 2018 *training*-split images of one size (the first image of the draw
fine-tunes ``nuclei-2d`` for 2 minutes with ``segtune train --from`` defaults, ``keep_if_worse``
off; the draw's other 16 images, or 11 for 512x640, are scored), every epoch's weights are kept
and scored on the other images (matched F1 at IoU 0.5), beside that epoch's held-out numbers
(matched F1, panoptic quality, loss on the strip of the one image that training did not see) and
the starting model's. One JSON line per draw; the summary prints the change on the other images
at the epoch training keeps (lowest held-out loss), at the last, and what the user gets: the kept
epoch, or the starting model where the keep-if-worse rule (``segtune.core.train.validation.worse``)
finds the kept epoch worse on the held-out strip.

``--variant`` trains with other settings: ``freeze-encoder`` (encoder frozen), ``augmentation``
(the augmentation the bundled model was trained with instead of the fine-tuning default).

    python benchmarks/finetune_epochs.py --out runs.jsonl
    python benchmarks/finetune_epochs.py --variant freeze-encoder --draws 360x360:0 256x256:0 --out runs.jsonl
    python benchmarks/finetune_epochs.py --summary runs.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))
DRAWS = ("360x360:0", "520x696:0", "256x256:0", "512x640:0")
SCORED = 16
KEYS = ("epoch", "val_loss", "val_matched_f1", "val_pq", "val_f1", "train_loss")


def settings_of(variant: str) -> dict:
    from segtune.core.models.registry import resolve_model
    from segtune.core.models.store import read_config
    from segtune.core.train.augment import AugmentConfig

    if variant == "default":
        return {}
    if variant == "freeze-encoder":
        return {"freeze_encoder": True}
    if variant == "augmentation":
        trained = read_config(resolve_model("nuclei-2d"))["training"]["settings"]["augmentation"]
        return {"augmentation": AugmentConfig.from_dict(trained)}
    raise SystemExit(f"--variant: unknown {variant!r} (default, freeze-encoder, augmentation)")


def run_draw(data: Path, draw: str, variant: str) -> dict:
    import train_pretrained as tp
    from finetune_gain import score

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, train

    group, first = draw.split(":")
    names = tp.dsb_training_group(data, "fluorescence", group)
    pairs = [tp._dsb_read(data, n) for n in names[int(first) : int(first) + SCORED + 1]]
    model, config = load_model("nuclei-2d")
    before = score(model, config, pairs[1:])
    states = []

    def keep_each_epoch(event) -> None:
        if event.stage == "validate":
            states.append((dict(event.metrics), copy.deepcopy(model.state_dict())))

    image, truth = pairs[0]
    settings = TrainConfig(
        epochs=10_000, max_minutes=2.0, patience=None, device="cpu", seed=0, keep_if_worse=False, **settings_of(variant)
    )
    result = train([image], [truth.astype(np.int32)], settings, model=(model, config), progress=keep_each_epoch)
    record = {"variant": variant, "draw": draw, "before": before, "baseline": result.baseline_metrics, "epochs": []}
    for metrics, state in states:
        weights, _ = load_model("nuclei-2d")
        weights.load_state_dict(state)
        record["epochs"].append({k: metrics.get(k) for k in KEYS} | {"score": score(weights, result.config, pairs[1:])})
    return record


def summary(path: Path) -> None:
    from segtune.core.train.validation import worse

    print(
        f"{'variant':>15} {'draw':>11} {'start':>6} {'kept epoch':>16} {'last epoch':>16} {'user gets':>16}"
        "  held-out F1/PQ start -> kept"
    )
    changes: dict[str, list[float]] = {}
    delivered: dict[str, list[float]] = {}
    for line in open(path):
        record = json.loads(line)
        epochs, base = record["epochs"], record["baseline"]
        kept = min(epochs, key=lambda e: e["val_loss"])
        last = epochs[-1]
        gets = record["before"] if worse(kept, base) else kept["score"]
        changes.setdefault(record["variant"], []).append(kept["score"] - record["before"])
        delivered.setdefault(record["variant"], []).append(gets - record["before"])
        print(
            f"{record['variant']:>15} {record['draw']:>11} {record['before']:.3f} "
            f"{kept['score']:.3f} ({kept['score'] - record['before']:+.3f}) "
            f"{last['score']:.3f} ({last['score'] - record['before']:+.3f}) "
            f"{gets:.3f} ({gets - record['before']:+.3f})  "
            f"{base['val_matched_f1']:.3f}/{base['val_pq']:.3f} -> {kept['val_matched_f1']:.3f}/{kept['val_pq']:.3f}"
        )
    for variant, values in changes.items():
        print(
            f"mean change, {variant}: kept epoch {np.mean(values):+.4f}, what the user gets "
            f"{np.mean(delivered[variant]):+.4f} ({len(values)} draws)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--draws", nargs="*", default=list(DRAWS), help="GROUP:FIRST, e.g. 360x360:17")
    parser.add_argument("--variant", default="default", help="default, freeze-encoder or augmentation")
    parser.add_argument("--out", type=Path, help="JSON lines to append to")
    parser.add_argument("--summary", type=Path, help="only summarise this file's runs")
    args = parser.parse_args(argv)
    if args.summary:
        summary(args.summary)
        return 0
    if args.out is None:
        parser.error("--out is required to run")
    settings_of(args.variant)  # an unknown variant stops here, before any training
    for draw in args.draws:
        record = run_draw(args.data, draw, args.variant)
        with open(args.out, "a") as out:
            print(json.dumps(record), file=out, flush=True)
        print(draw, f"start {record['before']:.3f}", [round(e["score"], 3) for e in record["epochs"]], flush=True)
    summary(args.out)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
