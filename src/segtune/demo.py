"""``segtune demo``: the main job on the bundled sample data, headless, saying what each step does.

The steps are the ones a biologist takes in the napari widget, run through ``segtune.core``:

1. open the 2D sample image (synthetic Hoechst-stained nuclei) and its corrected labels;
2. predict with a bundled model (nuclei-2d);
3. fine-tune the model for a minute on the corrected labels of the image's left half;
4. predict again and score both predictions on the right half, which training never saw;
5. export the masks (OME-TIFF with pixel sizes), per-object measurements (CSV), a colour
   overlay (PNG: green found, red false, blue missed) and the fine-tuned model folder.

``run_demo(..., gui=True)`` opens napari with the sample and the segtune widget instead.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segtune._resources import sample_file
from segtune.core.io import open_image, read_labels

logger = logging.getLogger(__name__)

SAMPLES = ("nuclei_2d.tif", "nuclei_3d.tif", "nuclei_2ch.czi")
IMAGE, LABELS = "nuclei_2d.tif", "nuclei_2d_labels.tif"
MARKER = "segtune demo"
OUTPUTS = (
    "summary.json",
    "nuclei_2d_before_labels.tif",
    "nuclei_2d_after_labels.tif",
    "nuclei_2d_after_measurements.csv",
    "nuclei_2d_after_overlay.png",
    "model",
)
MIN_SIZE = 15  # pixels: smaller specks are noise at this resolution (nuclei are ~18 px across)
ROWS = (
    ("pixel F1 (Dice)", "pixel", "f1"),
    ("object F1", "object", "f1"),
    ("matched F1 at IoU 0.5", "matched", "f1_at_0.5"),
    ("matched AP at IoU 0.5", "matched", "ap_at_0.5"),
    ("mean IoU of matches", "matched", "mean_iou_matched"),
)


def describe_samples(say: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Open every sample file and say what is in it (dims, pixel sizes, channels, true objects)."""
    entries = []
    for name in SAMPLES:
        image = open_image(sample_file(name))
        entry: dict[str, Any] = {
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
                entry["true_objects"] = int(len(np.unique(labels)) - 1)
            except FileNotFoundError:
                pass
        entries.append(entry)
        say(
            f"  {name}: {image.sizes()} {image.dtype}, channels {image.channel_names}, "
            f"pixel sizes {entry['pixel_sizes_um']}"
        )
    return entries


def _choose_model(say: Callable[[str], Any]) -> str:
    """The bundled model to start from (a 2D one-channel model, nuclei first)."""
    from segtune.core.models.registry import list_models
    from segtune.core.models.store import read_config

    candidates = []
    for model in list_models():
        architecture = read_config(model.folder).get("architecture", {})
        if architecture.get("spatial_dims") == 2 and architecture.get("in_channels") == 1:
            candidates.append(model)
    candidates.sort(key=lambda m: "nuclei" not in m.name.lower())
    say(f"  bundled model: {candidates[0].name} ({candidates[0].description})")
    return candidates[0].name


def _check_out(out: Path) -> None:
    """Refuse to write over anything but the results of an earlier demo."""
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if not existing:
        return
    summary = out / "summary.json"
    try:
        written_by = json.loads(summary.read_text()).get("written_by") if summary.is_file() else None
    except (OSError, ValueError):
        written_by = None
    if written_by != MARKER:
        raise FileExistsError(
            f"{out} already holds {', '.join(existing)}, not from an earlier segtune demo; choose another --out"
        )


def _replace(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def run_demo(
    out: str | Path,
    *,
    minutes: float = 1.0,
    device: str = "auto",
    say: Callable[[str], Any] = print,
    progress: Any = None,
    crop: int | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole workflow on the 2D sample and write its results into ``out``.

    Parameters
    ----------
    out
        Results folder (created). Results of an earlier demo there are replaced; any other
        file of the same name makes the demo stop with FileExistsError instead.
    minutes
        Time budget of the fine-tuning.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    say
        Receives each line meant for the user.
    progress
        Optional progress callback for the long steps (:mod:`segtune.core.progress`).
    crop
        Use only the top-left ``crop`` x ``crop`` pixels (quick tests).
    train_overrides
        :class:`~segtune.core.train.trainer.TrainConfig` fields to change (quick tests: a
        smaller ``patch``, ``batch_size``, ``steps_per_epoch``).

    Returns
    -------
    dict
        The summary written to ``out/summary.json``: metrics before and after, the files written.
    """
    from segtune.core.io import write_labels
    from segtune.core.measure import measure, save_table
    from segtune.core.metrics import evaluate, overlay, save_overlay_png
    from segtune.core.models.store import save_model
    from segtune.core.predict import ObjectOptions, predict
    from segtune.core.train.trainer import TrainConfig, held_out_summary, train

    started = time.monotonic()
    out = Path(out)
    _check_out(out)
    out.mkdir(parents=True, exist_ok=True)

    say("The sample data:")
    samples = describe_samples(say)

    image_data = open_image(sample_file(IMAGE))
    image = np.asarray(image_data.data[0, 0, 0])
    truth = read_labels(sample_file(LABELS))
    if crop is not None:
        image, truth = image[:crop, :crop], truth[:crop, :crop]
    pixel_sizes = tuple(image_data.physical_pixel_sizes)
    half = image.shape[1] // 2
    train_part, test_part = np.s_[:, :half], np.s_[:, half:]
    say(
        f"\n1. {IMAGE}: {image.shape[0]} x {image.shape[1]} pixels, "
        f"{len(np.unique(truth)) - 1} nuclei in the corrected labels."
    )
    say(
        f"   Fine-tuning uses the left half (columns 0-{half - 1}); "
        "the scores are on the right half, which it never sees."
    )

    say("\n2. The starting model:")
    bundled = _choose_model(say)
    from segtune.core.models.store import load_model

    start_model, start_config = load_model(bundled, device="cpu")
    start_name = bundled
    # the defaults of `segtune train --from` and the widget's Fine-tune tab (the trainer's auto_settings)
    settings = TrainConfig(spatial_dims=2, epochs=10_000, max_minutes=minutes, patience=None, device=device)
    if train_overrides:
        from dataclasses import replace

        settings = replace(settings, **train_overrides)
    split = start_config.get("head") == "binary"

    def segment(model: Any, config: dict[str, Any]) -> np.ndarray:
        result = predict(
            model,
            image,
            config=config,
            axes="YX",
            instances=True,
            objects=ObjectOptions(split=split, min_size=MIN_SIZE),
            device=device,
            progress=progress,
        )
        return np.asarray(result.labels)[0, 0]

    before = segment(start_model, start_config)
    scores_before = evaluate(before[test_part], truth[test_part])

    say(f"\n3. Fine-tuning for at most {minutes:g} minute(s) on the left half's corrected labels…")
    t0 = time.monotonic()
    # a bundled model is passed by name so training keeps its normalisation and records its lineage
    result = train(
        [image[train_part]],
        [truth[train_part]],
        settings,
        names=[f"{IMAGE} left half"],
        model=bundled,
        provenance={"source": "segtune demo", "start": start_name},
        progress=progress,
    )
    say(
        f"   {len(result.history)} epoch(s) in {time.monotonic() - t0:.0f} s ({result.stop_reason}); "
        f"best epoch {result.best_epoch}."
    )
    say(f"   {held_out_summary(result)}")
    say(
        "   (that held-out strip is the left half's last fifth; "
        "the scores below are on the right half, never trained on)"
    )

    after = segment(result.model, result.config)
    scores_after = evaluate(after[test_part], truth[test_part])

    say("\n4. Scores on the right half (1.0 is perfect):")
    say(f"   {'':24s} {'before':>8s} {'after':>8s}")
    for title, section, key in ROWS:
        say(f"   {title:24s} {scores_before[section][key]:8.3f} {scores_after[section][key]:8.3f}")
    n_truth = scores_after["object"]["n_truth"]
    say(
        f"   {'objects found / true':24s} {scores_before['object']['n_pred']:>4d}/{n_truth:<3d} "
        f"{scores_after['object']['n_pred']:>4d}/{n_truth:<3d}"
    )

    say("\n5. Exporting:")
    for name in OUTPUTS:
        _replace(out / name)
    files = {
        "masks_before": write_labels(out / OUTPUTS[1], before, pixel_sizes),
        "masks_after": write_labels(out / OUTPUTS[2], after, pixel_sizes),
        "measurements": save_table(
            measure(after, image=image, pixel_sizes=pixel_sizes, channel_names=["hoechst"]), out / OUTPUTS[3]
        ),
        "overlay": save_overlay_png(out / OUTPUTS[4], overlay(after, truth, image, level="pixel")),
        "model": save_model(result.model, {**result.config, "name": "demo_finetuned"}, out / OUTPUTS[5]),
    }
    descriptions = {
        "masks_before": "masks of the starting model (OME-TIFF, with pixel sizes)",
        "masks_after": "masks after fine-tuning (OME-TIFF, with pixel sizes)",
        "measurements": "one row per nucleus: position, area, diameter, intensity (CSV)",
        "overlay": "green found, red false, blue missed, over the image (PNG)",
        "model": "the fine-tuned model folder (use it with --model or in the widget)",
    }
    for key, path in files.items():
        say(f"   {path}  {descriptions[key]}")

    summary = {
        "written_by": MARKER,
        "samples": samples,
        "start_model": start_name,
        "fine_tuning": {
            "epochs": len(result.history),
            "stop_reason": result.stop_reason,
            "best_epoch": result.best_epoch,
            "minutes_budget": minutes,
            "held_out_before": result.baseline_metrics.get("val_matched_f1"),
            "held_out_after": result.best_metrics.get("val_matched_f1"),
            "kept_start": result.kept_start,
        },
        "fine_tuned_on": "left half of nuclei_2d.tif",
        "evaluated_on": "right half of nuclei_2d.tif",
        "before": {section: scores_before[section] for section in ("pixel", "object", "matched")},
        "after": {section: scores_after[section] for section in ("pixel", "object", "matched")},
        "files": {key: str(path) for key, path in files.items()},
        "seconds": round(time.monotonic() - started, 1),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=_json_default))
    say(f"   {path}  these numbers and file names (JSON)")
    say(f"\nDone in {summary['seconds']:.0f} s. Everything is in {out.resolve()}")
    return summary


def epoch_printer(say: Callable[[str], Any] = print) -> Callable[[Any], None]:
    """A progress callback that says one line per training epoch (loss and held-out scores)."""

    def callback(event: Any) -> None:
        if event.stage != "validate":
            return
        m = event.metrics
        parts = [f"epoch {m.get('epoch', event.done)}: training loss {m.get('train_loss', float('nan')):.3f}"]
        if m.get("val_matched_f1") is not None:
            parts.append(f"held-out matched F1 {m['val_matched_f1']:.3f}")
        if m.get("val_f1") is not None:
            parts.append(f"pixel F1 {m['val_f1']:.3f}")
        say("   " + ", ".join(parts))

    return callback


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def open_gui() -> None:
    """Open napari with the 2D sample, its labels and the segtune widget (needs a display)."""
    import napari

    viewer = napari.Viewer(title="segtune demo")
    viewer.open_sample("napari-segtune", "nuclei_2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtune", "segtune")
    widget.model_panel.load_bundled()
    napari.run()
