"""Benchmark: two channels in, nuclei and Golgi out (multilabel 3D U-Net) on synthetic stacks; pair counts.

Training and test stacks come from ``segtune.core.synthetic.synthetic_nuclei_golgi`` with its
defaults (printed): 32 x 128 x 128 crops, 40-90 nucleus/Golgi pairs each, nuclei 14 px across
(Z step twice the XY pixel), Golgi 4 px, 0-3 px from the nucleus surface in a random direction,
elastic deformation of 2 px, blur 1 px, Poisson and read noise. Seeds 0.. train, seeds 1000..
test. The model: a 3D U-Net (depth 3, base 8, 2 input channels), multilabel head (one sigmoid
per class), BCE + Dice, trained for ``--minutes``. Scores on the test stacks: Dice per class
(probability > 0.5), and the pair count: objects of each class (connected components of its
mask; touching nuclei split by a distance-transform watershed, seeds 4 px apart) paired one to
one by :func:`segtune.core.measure.pair_objects` (Golgi centroid within ``--max-distance``, 8
XY pixels, of the nucleus surface, Z scaled by 2: the gap is up to 3 px, the Golgi radius 2-3
px, the deformation 2 px), against the true number of pairs.

    python benchmarks/nuclei_golgi.py --minutes 6
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--train-stacks", type=int, default=4)
    parser.add_argument("--test-stacks", type=int, default=3)
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64])
    parser.add_argument(
        "--max-distance", type=float, default=8.0, help="px from the nucleus surface to the Golgi centroid"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "nuclei_golgi.json")
    args = parser.parse_args(argv)

    import torch

    from segtune.core.measure import class_instances, pair_objects
    from segtune.core.normalize import percentile_normalize
    from segtune.core.predict import predict_raw
    from segtune.core.synthetic import synthetic_nuclei_golgi
    from segtune.core.train.trainer import TrainConfig, train

    torch.set_num_threads(args.threads)
    generator = {k: v.default for k, v in inspect.signature(synthetic_nuclei_golgi).parameters.items() if k != "seed"}
    print("generator:", generator)
    train_stacks = [synthetic_nuclei_golgi(seed=s) for s in range(args.train_stacks)]
    test_stacks = [synthetic_nuclei_golgi(seed=1000 + s) for s in range(args.test_stacks)]
    config = TrainConfig(
        spatial_dims=3,
        head="multilabel",
        n_classes=2,
        patch=tuple(args.patch),
        batch_size=2,
        epochs=10_000,
        steps_per_epoch=20,
        depth=3,
        base_channels=8,
        loss="bce+dice",
        learning_rate=2e-3,
        val_fraction=0,
        patience=None,
        max_minutes=args.minutes,
        device="cpu",
        min_foreground=0.02,
    )
    started = time.perf_counter()
    result = train([s.image for s in train_stacks], [s.classes for s in train_stacks], config)
    seconds = time.perf_counter() - started
    norm = result.config["normalization"]
    rows = []
    for index, stack in enumerate(test_stacks):
        x = np.stack([percentile_normalize(c.astype(np.float32), norm["low"], norm["high"]) for c in stack.image])
        probabilities = 1 / (1 + np.exp(-np.asarray(predict_raw(result.model.eval(), x, spatial_dims=3, device="cpu"))))
        scores = {}
        for k, name in enumerate(("nucleus", "golgi")):
            pred, truth = probabilities[k] > 0.5, ((stack.classes >> k) & 1) > 0
            scores[f"dice_{name}"] = float(2 * (pred & truth).sum() / max(1, pred.sum() + truth.sum()))
        flags = (probabilities[0] > 0.5) * 1 + (probabilities[1] > 0.5) * 2
        nuclei, golgi = class_instances(flags, 2, min_size=4, split=(0,), min_distance=4, sampling=(2.0, 1.0, 1.0))
        found = int((pair_objects(nuclei, golgi, (2.0, 1.0, 1.0), max_distance=args.max_distance)["partner"] > 0).sum())
        rows.append(
            {
                "stack": 1000 + index,
                **scores,
                "pairs_true": stack.n_pairs,
                "pairs_found": found,
                "pair_count_error": (found - stack.n_pairs) / stack.n_pairs,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    summary = {
        key: float(np.mean([r[key] for r in rows])) for key in ("dice_nucleus", "dice_golgi", "pair_count_error")
    }
    summary["abs_pair_count_error"] = float(np.mean([abs(r["pair_count_error"]) for r in rows]))
    print(
        f"trained {len(result.history)} epochs of 20 steps in {seconds:.0f} s; mean over {len(rows)} test stacks: "
        + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "settings": {**vars(args), "out": str(args.out)},
                "generator": generator,
                "epochs": len(result.history),
                "train_seconds": seconds,
                "rows": rows,
                "summary": summary,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
