"""``segtune demo``: the main job on the bundled sample data, headless, explaining each step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from segtune._resources import sample_file
from segtune.core.io import open_image, read_labels

logger = logging.getLogger(__name__)

SAMPLES = ("nuclei_2d.tif", "nuclei_3d.tif", "nuclei_2ch.czi")


def run_demo(out: Path, say=print) -> dict:
    """Open every sample file, report what was read, and write ``summary.json`` into ``out``.

    Returns the summary. ``say`` receives each line meant for the user.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"samples": []}
    for name in SAMPLES:
        image = open_image(sample_file(name))
        entry = {
            "file": name,
            "dims": image.sizes(),
            "dtype": str(image.dtype),
            "pixel_sizes_um": dict(zip("ZYX", image.physical_pixel_sizes, strict=True)),
            "channels": image.channel_names,
        }
        labels_name = name.replace(".tif", "_labels.tif")
        if labels_name != name:
            try:
                labels = read_labels(sample_file(labels_name))
                entry["true_objects"] = int(len(set(labels.ravel().tolist()) - {0}))
            except FileNotFoundError:
                pass
        summary["samples"].append(entry)
        say(f"read {name}: {image.sizes()} {image.dtype}, channels {image.channel_names}, pixel sizes {entry['pixel_sizes_um']}")
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2))
    say(f"wrote {path}")
    return summary
