"""Benchmark: does fine-tuning a bundled model on ONE corrected image help on the source's other images?

For each source the bundled model never trained on, fine-tune it on one image (its true labels
standing in for the user's corrections) for a time budget with the defaults of
``segtune train --from MODEL`` (the same engine as the widget's Fine-tune tab and
``segtune demo``), then score the source's other images before and after:

- Data Science Bowl 2018 fluorescence images of the fixed validation split
  (``scripts/dsb2018_split.json``; nuclei-2d never trains on them), grouped by image size, which in
  that set stands for the lab and microscope; groups of at least 4 images, at most 8 scored;
- the 4 NIH3T3 images nuclei-2d holds out (binary masks: touching nuclei are one object there);
- ISBI 2012 images 15-19 for membranes-2d (interior pixel F1; the others matched F1 at IoU 0.5).

The first image of each source (sorted by name) is the one fine-tuned on. Prints a table and
writes ``benchmarks/results/finetune_gain.json``.

    python benchmarks/finetune_gain.py               # 2 minutes per source
    python benchmarks/finetune_gain.py --minutes 2 --sources nih3t3 dsb-360x360
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
sys.path.insert(0, str(REPO / "scripts"))
RESULTS = REPO / "benchmarks" / "results" / "finetune_gain.json"
MAX_SCORED = 8


def sources(data: Path) -> dict[str, tuple[str, list[tuple[np.ndarray, np.ndarray]]]]:
    """name -> (bundled model, [(image, truth), ...]); the first pair is fine-tuned on."""
    import csv

    import train_pretrained as tp

    split = tp.dsb_split(data)
    rows = {r["name"]: r for r in csv.DictReader(open(data / tp.DSB_FOLDER / "index.csv", newline=""))}
    groups: dict[str, list[str]] = {}
    for name in split["validation"]["fluorescence"]:
        groups.setdefault(f"{rows[name]['height']}x{rows[name]['width']}", []).append(name)
    found: dict[str, tuple[str, list]] = {}
    for size, names in sorted(groups.items()):
        if len(names) >= 4:
            found[f"dsb-{size}"] = ("nuclei-2d", [tp._dsb_read(data, n) for n in sorted(names)[: MAX_SCORED + 1]])
    nih = data / "nuclei_nih3t3"
    found["nih3t3"] = (
        "nuclei-2d",
        [
            (tp._read_png(nih / "images" / n).astype(np.float32), tp._read_png(nih / "labels" / n) > 0)
            for n in tp.NIH3T3_HELD_OUT
        ],
    )
    images, labels, _ = tp.membranes_data(data, tp.ISBI_HELD_OUT)
    found["isbi-membranes"] = ("membranes-2d", list(zip(images, labels, strict=True)))
    return found


def score(model, config, pairs, pixels: bool = False) -> float:
    from segtune.core.metrics import matched_metrics, pixel_metrics
    from segtune.core.predict import predict

    values = []
    for image, truth in pairs:
        if pixels:  # membranes: interior pixel F1
            mask = np.asarray(predict((model, config), image, axes="YX", instances=False, device="cpu").labels)[0, 0]
            values.append(pixel_metrics(mask, truth)["f1"])
        else:
            labels = np.asarray(predict((model, config), image, axes="YX", instances=True, device="cpu").labels)[0, 0]
            values.append(matched_metrics(labels, truth, thresholds=(0.5,))["f1_at_0.5"])
    return float(np.mean(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=(REPO / ".." / "shared" / "data").resolve())
    parser.add_argument("--minutes", type=float, default=2.0, help="fine-tuning time per source")
    parser.add_argument("--sources", nargs="*", default=None, help="only these sources (names as printed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from segtune.core.models.store import load_model
    from segtune.core.train.trainer import TrainConfig, held_out_summary, train

    rows = []
    for name, (model_name, pairs) in sources(args.data).items():
        if args.sources and name not in args.sources:
            continue
        model, config = load_model(model_name)
        pixels = model_name == "membranes-2d"
        before = score(model, config, pairs[1:], pixels)
        (image, truth), start = pairs[0], time.monotonic()
        settings = TrainConfig(epochs=10_000, max_minutes=args.minutes, patience=None, device="cpu", seed=args.seed)
        result = train([image], [truth.astype(np.int32)], settings, model=model_name)
        seconds = time.monotonic() - start
        after = score(result.model, result.config, pairs[1:], pixels)
        row = {
            "source": name,
            "model": model_name,
            "scored_images": len(pairs) - 1,
            "before": round(before, 4),
            "after": round(after, 4),
            "gain": round(after - before, 4),
            "kept_start": result.kept_start,
            "held_out": held_out_summary(result),
            "epochs": len(result.history),
            "seconds": round(seconds),
        }
        rows.append(row)
        print(
            f"{name:>18}  {model_name:<12} {len(pairs) - 1} images  before {before:.3f}  after {after:.3f}  "
            f"gain {after - before:+.3f}  ({row['epochs']} epochs, {seconds:.0f} s; {row['held_out']})",
            flush=True,
        )
    load = os.getloadavg()[0]
    print(
        f"load average {load:.1f} on {os.cpu_count()} cores (a loaded machine trains fewer steps in the same minutes)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"minutes": args.minutes, "load_average": round(load, 1), "rows": rows}, indent=1) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
