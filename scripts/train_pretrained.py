"""Retrain the bundled pretrained models from scratch (CPU is enough), validate them and write their folders.

Usage::

    python scripts/train_pretrained.py                      # all three, one after the other
    python scripts/train_pretrained.py nuclei-2d            # one by name
    python scripts/train_pretrained.py --evaluate-only all  # re-validate the shipped models

Each model is trained with the public training engine (:func:`segtune.core.train.trainer.train`)
for a fixed time budget, then validated on data it never saw, and written with fp16 weights to
``src/segtune/pretrained/<name>/`` (``config.json``, ``weights.safetensors``, ``MODEL_CARD.md``;
the card's numbers are those this script measured). Real data is read from ``../shared/data``
beside the repository (``--data`` to change). The wall time of each model is printed.

nuclei-2d
    3-class 2D U-Net trained on 10 of the 14 NIH3T3 Hoechst images plus synthetic nuclei of
    many microscopes (Hoechst/GFP/H2B-like, 8/16-bit, dim/bright), every image rescaled so its
    nuclei are about ``NUCLEI_2D_DIAMETER`` pixels across (with scale jitter on top).
    Validated on the other 4 NIH3T3 images, on unseen synthetic variants at 8-90 px and on the
    Data Science Bowl 2018 example image that the StarDist wheel ships (fetched from PyPI).
membranes-2d
    binary 2D U-Net (cell interior vs membrane) trained on ISBI 2012 images 0-14, validated on
    images 15-19 (pixel F1 of the interior).
nuclei-3d
    3-class 3D U-Net trained on synthetic 3D nuclei stacks (anisotropy 1-3), validated on
    unseen synthetic stacks and on StarDist's example stack (another generator), matched F1 at IoU 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PRETRAINED = REPO / "src" / "segtune" / "pretrained"
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
WORK = Path("/tmp/segtune_pretrained_work")
MODELS = ("nuclei-2d", "membranes-2d", "nuclei-3d", "nuclei-he-2d")

NUCLEI_2D_DIAMETER = 20.0  # pixels: what nuclei-2d sees after rescaling
SYNTHETIC_2D_IMAGES = 120
NUCLEI_3D_DIAMETER = 12.0  # XY pixels for nuclei-3d

# the NIH3T3 images held out from nuclei-2d training (every image not listed here trains)
NIH3T3_HELD_OUT = ("1.png", "28.png", "32.png", "42.png")
ISBI_TRAIN = tuple(f"{i}.png" for i in range(15))
ISBI_HELD_OUT = tuple(f"{i}.png" for i in range(15, 20))

DESCRIPTIONS = {
    "nuclei-2d": (
        "Fluorescent nuclei, 2D, many labs and microscopes (Hoechst/DAPI, GFP, H2B; 8/16-bit): 3-class U-Net, "
        "watershed instances, any nucleus size via --diameter"
    ),
    "membranes-2d": "EM membranes, 2D (ISBI 2012-like serial-section TEM): cell interior vs membrane",
    "nuclei-3d": "Fluorescent nuclei, 3D stacks: 3-class 3D U-Net, watershed instances",
    "nuclei-he-2d": (
        "Dark nuclei in brightfield images, 2D: hematoxylin-stained (H&E) tissue (brightfield cytology only "
        "with --diameter), colour or grey (an RGB image is read as its grey mean): 3-class U-Net, watershed instances"
    ),
}
STAINED_KINDS = ("stained", "brightfield")  # the DSB kinds nuclei-he-2d trains on

# minutes of training per model (the wall-time budget; on a contended 2-core machine)
BUDGET_MINUTES = {"nuclei-2d": 60.0, "membranes-2d": 45.0, "nuclei-3d": 15.0, "nuclei-he-2d": 40.0}

logger = logging.getLogger("train_pretrained")


# --- data --------------------------------------------------------------------------------------


def _read_png(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    array = iio.imread(path)
    return array if array.ndim == 2 else array[..., 0]


def _resize_pair(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from segtune.core.diameter import rescale_for_model

    image = rescale_for_model(image.astype(np.float32), 1.0, factor)
    labels = rescale_for_model(labels, 1.0, factor, order=0)
    return image, labels


DSB_FOLDER = "nuclei_dsb2018"
DSB_SPLIT_FILE = REPO / "scripts" / "dsb2018_split.json"
DSB_VAL_EVERY = 7  # one image in 7 of each stratum validates (about 14 %)


def _dsb_read(data: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    import imageio.v3 as iio

    folder = data / DSB_FOLDER
    image = iio.imread(folder / "images" / f"{name}.png")
    if image.ndim == 3:
        image = image[..., :3].mean(-1) if image.shape[-1] >= 3 else image[..., 0]
    return image.astype(np.float32), iio.imread(folder / "labels" / f"{name}.png").astype(np.int32)


def dsb_index(data: Path) -> dict[str, dict[str, str]]:
    """The DSB folder's ``index.csv``: image name -> its row (kind, height, width, ...), in file order."""
    import csv

    with open(data / DSB_FOLDER / "index.csv", newline="") as handle:
        return {row["name"]: row for row in csv.DictReader(handle)}


def dsb_training_group(data: Path, kind: str, size: str) -> list[str]:
    """The names, sorted, of the DSB training split's images of one ``kind`` and ``size``
    ("HEIGHTxWIDTH"; a size stands for a lab and microscope): the development draws' groups."""
    rows = dsb_index(data)
    return sorted(n for n in dsb_split(data)["train"][kind] if f"{rows[n]['height']}x{rows[n]['width']}" == size)


def dsb_split(data: Path) -> dict[str, Any]:
    """The fixed train/validation split of the DSB 2018 images, by image, stratified by kind,
    image size and median nucleus diameter (terciles within each kind): within each stratum the
    images, sorted by name, are dealt so that every ``DSB_VAL_EVERY``-th validates. Written once to
    ``scripts/dsb2018_split.json`` (with each image's diameter) and read from there afterwards,
    so the split never changes with the code."""

    from segtune.core.diameter import labels_diameter

    if DSB_SPLIT_FILE.exists():
        return json.loads(DSB_SPLIT_FILE.read_text())
    rows = list(dsb_index(data).values())
    diameters = {r["name"]: round(labels_diameter(_dsb_read(data, r["name"])[1]), 2) for r in rows}
    strata: dict[tuple[str, str, int], list[str]] = {}
    for kind in sorted({r["kind"] for r in rows}):
        kind_rows = [r for r in rows if r["kind"] == kind]
        cuts = np.quantile([diameters[r["name"]] for r in kind_rows], [1 / 3, 2 / 3])
        for r in kind_rows:
            size = "small" if int(r["height"]) * int(r["width"]) <= 360 * 360 else "large"
            tercile = int(np.searchsorted(cuts, diameters[r["name"]]))
            strata.setdefault((kind, size, tercile), []).append(r["name"])
    split: dict[str, Any] = {
        "train": {},
        "validation": {},
        "diameters": diameters,
        "rule": f"stratified by kind, image size (<= 360x360 or larger) and diameter tercile; "
        f"sorted by name, every {DSB_VAL_EVERY}th from the 4th validates",
    }
    kinds = {r["name"]: r["kind"] for r in rows}
    for names in strata.values():
        for i, name in enumerate(sorted(names)):
            part = "validation" if i % DSB_VAL_EVERY == 3 else "train"
            split[part].setdefault(kinds[name], []).append(name)
    for part in ("train", "validation"):
        split[part] = {k: sorted(v) for k, v in sorted(split[part].items())}
    DSB_SPLIT_FILE.write_text(json.dumps(split, indent=1) + "\n")
    return split


def dsb_pairs(
    data: Path,
    part: str,
    kinds: tuple[str, ...] = ("fluorescence",),
    diameter: float | None = None,
    leave_out: str | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """DSB images of ``part`` ("train" or "validation"), zoomed so nuclei are ``diameter`` px (None: native);
    ``leave_out`` ("360x360"): without the images of that size, which in this set stands for a lab."""
    split = dsb_split(data)
    left_out = (
        {name for name, r in dsb_index(data).items() if f"{r['height']}x{r['width']}" == leave_out}
        if leave_out
        else set()
    )
    images, labels, names = [], [], []
    for kind in kinds:
        for name in split[part].get(kind, []):
            if name in left_out:
                continue
            image, mask = _dsb_read(data, name)
            if diameter is not None:
                factor = float(np.clip(diameter / split["diameters"][name], 0.25, 4.0))
                image, mask = _resize_pair(image, mask, factor)
            images.append(image)
            labels.append(mask)
            names.append(f"dsb2018/{name}")
    return images, labels, names


def nuclei_2d_data(
    data: Path, seed: int = 0, synthetic: bool = True, leave_out: str | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """DSB 2018 fluorescence training images (instance labels; ``leave_out``: see :func:`dsb_pairs`)
    and the NIH3T3 training images, each zoomed so its median nucleus is ``NUCLEI_2D_DIAMETER`` px,
    plus synthetic nuclei."""
    from segtune.core.diameter import labels_diameter
    from segtune.core.synthetic import random_nuclei_parameters, synthetic_nuclei

    images, labels, names = dsb_pairs(data, "train", diameter=NUCLEI_2D_DIAMETER, leave_out=leave_out)
    folder = data / "nuclei_nih3t3"
    for path in sorted((folder / "images").glob("*.png")):
        if path.name in NIH3T3_HELD_OUT:
            continue
        image, mask = _read_png(path), _read_png(folder / "labels" / path.name)
        small_image, small_mask = _resize_pair(
            image, (mask > 0).astype(np.uint8), NUCLEI_2D_DIAMETER / labels_diameter(mask > 0)
        )
        images.append(small_image)
        labels.append(small_mask)
        names.append(f"nih3t3/{path.name}")
    rng = np.random.default_rng(seed)
    for index in range(SYNTHETIC_2D_IMAGES if synthetic else 0):
        # drawn at a native size of 6-90 px, then zoomed to the model's size (with jitter) exactly
        # as prediction zooms a real image: the network sees upsampled (smooth-noise) small nuclei
        # and downsampled large ones, not only nuclei born at its own size
        native = float(np.exp(rng.uniform(np.log(6.0), np.log(90.0))))
        params = random_nuclei_parameters(rng, diameter=(native, native))
        target = NUCLEI_2D_DIAMETER * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        side = int(np.clip(176 * native / target, 48, 900))
        sample = synthetic_nuclei((side, side), seed=int(rng.integers(2**31)), **params)
        image, mask = _resize_pair(sample.image, sample.labels, target / labels_diameter(sample.labels))
        images.append(image)
        labels.append(mask)
        names.append(f"synthetic/{index}")
    return images, labels, names


def membranes_data(data: Path, names: tuple[str, ...]) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    folder = data / "membranes_isbi2012"
    images = [_read_png(folder / "images" / n).astype(np.float32) for n in names]
    labels = [(_read_png(folder / "labels" / n) > 0).astype(np.uint8) for n in names]
    return images, labels, [f"isbi2012/{n}" for n in names]


QCANET_FOLDER = "nuclei3d_qcanet"
# the one real 3D stack (QCANet's 8-cell mouse embryo, 51 x 120 x 122, 8 nuclei): nuclei-3d trains
# on X >= 50 (5 nuclei) and the card's real number is measured on X < 50 (3 nuclei); no nucleus
# crosses X = 50
QCANET_CUT_X = 50
QCANET_TRAIN_COPIES = 12  # the real part's weight among the ~48 synthetic stacks in the patch draw


def qcanet_parts(data: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The QCANet stack and labels: ``train`` (X >= 50), ``held_out`` (X < 50) and ``whole``."""
    import tifffile

    folder = data / QCANET_FOLDER
    image = tifffile.imread(folder / "images" / "8_cell_stage.tif").astype(np.float32)
    labels = tifffile.imread(folder / "labels" / "8_cell_stage.tif").astype(np.int32)
    cut = QCANET_CUT_X
    return {
        "train": (image[..., cut:], labels[..., cut:]),
        "held_out": (image[..., :cut], labels[..., :cut]),
        "whole": (image, labels),
    }


def _zoom_xy(image: np.ndarray, labels: np.ndarray, diameter: float) -> tuple[np.ndarray, np.ndarray]:
    """Y and X zoomed as prediction zooms a stack with nuclei ``diameter`` px across (Z kept)."""
    from segtune.core.diameter import rescale_for_model

    return (
        rescale_for_model(image, diameter, NUCLEI_3D_DIAMETER, spatial_dims=3),
        rescale_for_model(labels, diameter, NUCLEI_3D_DIAMETER, spatial_dims=3, order=0),
    )


def nuclei_3d_data(
    count: int, seed: int, data: Path | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Synthetic stacks (a third with nuclei taller in Z than wide, as isotropic stacks become once
    Y and X are zoomed to the model's diameter) and, with ``data``, the QCANet training part."""
    from segtune.core.diameter import labels_diameter
    from segtune.core.synthetic import random_nuclei_parameters, synthetic_nuclei

    rng = np.random.default_rng(seed)
    images, labels, names = [], [], []
    for index in range(count):
        params = random_nuclei_parameters(rng, ndim=3, diameter=(NUCLEI_3D_DIAMETER * 0.75, NUCLEI_3D_DIAMETER * 1.4))
        # Z steps 1-2.5 x the XY pixel (nuclei at least ~4 planes deep), or 0.6-1 (zoomed isotropic stacks)
        params["z_anisotropy"] = float(rng.uniform(0.6, 1.0) if index % 3 == 2 else rng.uniform(1.0, 2.5))
        sample = synthetic_nuclei((32, 96, 96), seed=int(rng.integers(2**31)), **params)
        images.append(sample.image.astype(np.float32))
        labels.append(sample.labels)
        names.append(f"synthetic3d/{index}")
    if data is not None:
        image, truth = qcanet_parts(data)["train"]
        image, truth = _zoom_xy(image, truth, labels_diameter(truth))
        for copy in range(QCANET_TRAIN_COPIES):
            images.append(image)
            labels.append(truth)
            names.append(f"qcanet/8_cell_stage[x>={QCANET_CUT_X}]#{copy}")
    return images, labels, names


# the example images the StarDist package ships (BSD-3; the 2D one is from the 2018 Data Science
# Bowl, BBBC038, CC0): one real nucleus image of another microscope and cell line than NIH3T3 with
# instance masks, and a 3D stack from another synthetic generator than ours. Validation only:
# fetched from PyPI into WORK on first use (``pip download``), never trained on or shipped.
STARDIST_WHEEL = "stardist==0.9.1"
STARDIST_FILES = ("img2d.tif", "mask2d.tif", "img3d.tif", "mask3d.tif")


def outside_sample(kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """StarDist's example image and instance mask, ``kind`` "2d" or "3d"; None when offline."""
    import tifffile

    folder = _outside_samples()
    if folder is None:
        return None
    return tifffile.imread(folder / f"img{kind}.tif"), tifffile.imread(folder / f"mask{kind}.tif")


def _outside_samples() -> Path | None:
    """The folder holding StarDist's example images, fetching them if needed; None when offline."""
    import subprocess
    import zipfile

    folder = WORK / "stardist_samples"
    if all((folder / n).exists() for n in STARDIST_FILES):
        return folder
    download = WORK / "stardist_wheel"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        STARDIST_WHEEL,
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(download),
    ]
    if subprocess.run(command, capture_output=True, text=True).returncode != 0:
        logger.warning(
            "could not fetch %s from the package index: the outside samples are not measured", STARDIST_WHEEL
        )
        return None
    wheel = next(download.glob("stardist-*.whl"))
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in STARDIST_FILES:
            (folder / name).write_bytes(archive.read(f"stardist/data/images/{name}"))
    return folder


# --- training ------------------------------------------------------------------------------------


def _train_config(
    name: str,
    minutes: float,
    seed: int,
    device: str,
    depth: int | None = None,
    base_channels: int | None = None,
    warm: bool = False,
    learning_rate: float | None = None,
):
    # (re)training on a large data set: none of the fine-tuning guards (frozen normalisation, L2-SP,
    # keeping the starting model), even when training further from a shipped model
    common = {
        "epochs": 10_000,
        "patience": None,
        "max_minutes": minutes,
        "seed": seed,
        "device": device,
        "schedule": "cosine",
        "optimizer": "adamw",
        "freeze_norm": False,
        "l2sp": 0.0,
        "keep_if_worse": False,
    }
    config = _per_model_config(name, common, depth, base_channels, warm)
    if learning_rate is not None:
        config.learning_rate = learning_rate
    return config


def _per_model_config(name: str, common: dict[str, Any], depth: int | None, base_channels: int | None, warm: bool):
    from segtune.core.train.augment import AugmentConfig
    from segtune.core.train.trainer import TrainConfig

    if name in ("nuclei-2d", "nuclei-he-2d"):
        # validated by the DSB validation split given to train() (val_fraction unused); epochs of
        # 300 steps (nuclei-2d) so that validating costs a small part of each epoch; nuclei-he-2d's
        # 105 images and 18 validation images are fewer: 100 steps
        return TrainConfig(
            spatial_dims=2,
            head="three_class",
            patch=128,
            batch_size=8,
            steps_per_epoch=300 if name == "nuclei-2d" else 100,
            loss="ce+dice",
            learning_rate=1e-3 if warm else 3e-3,
            val_fraction=0.0,
            scale=1.0,
            min_foreground=0.02,
            depth=depth or 4,
            base_channels=base_channels or 24,
            augmentation=AugmentConfig(
                zoom=0.25,
                rotation=25.0,
                affine_probability=0.5,
                brightness=0.1,
                contrast=0.3,
                blur_probability=0.2,
                noise_probability=0.3,
                noise_std=0.08,
            ),
            **common,
        )
    if name == "membranes-2d":
        return TrainConfig(
            spatial_dims=2,
            head="binary",
            patch=128,
            batch_size=4,
            steps_per_epoch=40,
            loss="bce+dice",
            learning_rate=3e-3,
            val_fraction=0.14,
            monitor="val_f1",
            min_foreground=0.0,
            depth=4,
            base_channels=16,
            augmentation=AugmentConfig(
                zoom=0.1,
                rotation=15.0,
                shear=0.05,
                affine_probability=0.5,
                brightness=0.1,
                contrast=0.2,
                blur_probability=0.15,
                noise_probability=0.15,
                noise_std=0.04,
                salt_pepper_probability=0.0,
            ),
            **common,
        )
    if name == "nuclei-3d":
        return TrainConfig(
            spatial_dims=3,
            head="three_class",
            patch=(32, 48, 48),
            batch_size=2,
            steps_per_epoch=40,
            loss="ce+dice",
            learning_rate=1e-3 if warm else 3e-3,
            val_fraction=0.0,
            min_foreground=0.02,
            depth=depth or 3,
            base_channels=base_channels or 16,
            augmentation=AugmentConfig(
                zoom=0.15,
                rotation=20.0,
                affine_probability=0.4,
                brightness=0.1,
                contrast=0.3,
                blur_probability=0.2,
                noise_probability=0.3,
                noise_std=0.08,
            ),
            **common,
        )
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def train_one(
    name: str,
    data: Path,
    *,
    minutes: float,
    seed: int,
    device: str,
    depth: int | None = None,
    base_channels: int | None = None,
    start: str | None = None,
    work: Path | None = None,
    resume: bool = False,
    learning_rate: float | None = None,
    patch: int | None = None,
    batch_size: int | None = None,
    loss: str | None = None,
    leave_out: str | None = None,
) -> tuple[Any, dict[str, Any], float]:
    """Train ``name`` from scratch (or from the model folder ``start``); returns (model, config, seconds).

    The run writes its model folder and checkpoint to ``work`` as it goes; ``resume`` continues
    an interrupted run there (same data and settings, the time budget may be raised)."""
    from segtune.core.train.trainer import train

    started = time.monotonic()
    validation = None
    if name == "nuclei-2d":
        images, labels, names = nuclei_2d_data(data, seed, leave_out=leave_out)
        # the best epoch is chosen on a third of the DSB validation split (every 3rd image): validating
        # all 78 images each epoch would cost more than the epoch on 2 CPU cores
        val_images, val_labels, _ = dsb_pairs(data, "validation", diameter=NUCLEI_2D_DIAMETER, leave_out=leave_out)
        validation = (val_images[::3], val_labels[::3])
    elif name == "nuclei-he-2d":
        images, labels, names = dsb_pairs(data, "train", kinds=STAINED_KINDS, diameter=NUCLEI_2D_DIAMETER)
        # the best epoch is chosen on the 18 stained and brightfield images of the DSB validation split
        val_images, val_labels, _ = dsb_pairs(data, "validation", kinds=STAINED_KINDS, diameter=NUCLEI_2D_DIAMETER)
        validation = (val_images, val_labels)
    elif name == "membranes-2d":
        images, labels, names = membranes_data(data, ISBI_TRAIN)
    else:
        images, labels, names = nuclei_3d_data(48, seed, data)
        # the best epoch is chosen on synthetic stacks of other seeds: the real held-out part stays unselected-on
        val_images, val_labels, _ = nuclei_3d_data(6, seed + 1000)
        validation = (val_images, val_labels)
    config = _train_config(
        name, minutes, seed, device, depth, base_channels, warm=start is not None, learning_rate=learning_rate
    )
    config.patch = patch or config.patch  # more context per patch (e.g. 256 for membranes)
    config.batch_size = batch_size or config.batch_size
    config.loss = loss or config.loss  # e.g. focal+dice: more weight on the hard pixels (thin membranes)
    work = work or WORK / name
    if work.exists() and not resume:
        shutil.rmtree(work)
    command = (
        " ".join(["python", "scripts/train_pretrained.py", *sys.argv[1:]])
        if sys.argv[1:]
        else f"python scripts/train_pretrained.py {name}"
    )
    note = f"bundled model {name}, " + (f"trained further from {start}" if start else "trained from scratch")
    result = train(
        images,
        labels,
        config,
        names=names,
        validation=validation,
        model=start,
        out=work,
        overwrite=True,
        resume=resume,
        provenance={"command": command, "note": note},
    )
    seconds = time.monotonic() - started
    model_config = bundled_config(name, result.config, seconds)
    logger.info(
        "%s: trained in %.1f min (%s, best epoch %s, %d epochs)",
        name,
        seconds / 60,
        result.stop_reason,
        result.best_epoch,
        len(result.history),
    )
    return result.model, model_config, seconds


def _log_rows(folder: Path) -> list[dict[str, str]]:
    from segtune.core.train.trainer import read_log

    return read_log(folder) if (folder / "training_log.csv").exists() else []


def bundled_config(name: str, config: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A trained model's config as the bundled model ships it: description, the object size that
    prediction zooms new images to, distance-peak splitting, the training's wall time."""
    model_config = dict(config)
    model_config["description"] = DESCRIPTIONS[name]
    if name == "nuclei-2d":
        model_config.update(object_diameter=NUCLEI_2D_DIAMETER, auto_diameter=True, split_instances=True)
    elif name == "nuclei-he-2d":
        # nuclei darker than the background: the automatic diameter is estimated on the inverted image
        model_config.update(
            object_diameter=NUCLEI_2D_DIAMETER, auto_diameter=True, split_instances=True, dark_objects=True
        )
    elif name == "nuclei-3d":
        model_config.update(object_diameter=NUCLEI_3D_DIAMETER, auto_diameter=True, split_instances=True)
    else:
        model_config.update(
            object_diameter=None, auto_diameter=False, split_instances=False
        )  # EM: no rescaling by object size
    model_config["training"] = {**model_config.get("training", {}), "wall_seconds": round(seconds, 1)}
    return model_config


def save_model_config(folder: Path, config: dict[str, Any]) -> None:
    from segtune.core.models.store import atomic_write_text

    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")


def write_model(name: str, model: Any, config: dict[str, Any], data: Path) -> Path:
    """Save with fp16 weights (halves the size; predictions are checked to stay within tolerance),
    and the replay set that fine-tuning mixes in (the folder is replaced as a whole)."""

    from segtune.core.models.store import save_model

    model = model.cpu().eval()
    config["fp16_check"] = fp16_check(model)
    folder = save_model(fp16_copy(model), config, PRETRAINED / name, overwrite=True)
    write_replay(name, data, folder)
    return folder


REPLAY_CROPS = {"nuclei-2d": 64, "membranes-2d": 30}
REPLAY_SIDE = 128


def write_replay(name: str, data: Path, folder: Path, seed: int = 0) -> Path | None:
    """``folder/replay.npz``: crops of the model's own real training images, at the object size it
    predicts at and normalised as it normalises, which fine-tuning mixes into its patches so that a
    model taught one image keeps what it knew (:mod:`segtune.core.train.replay`). One crop per
    image drawn at random (NIH3T3 and DSB training images for nuclei-2d; ISBI training images for
    membranes-2d, two crops each), placed where it holds at least 10 % foreground when it can.
    nuclei-3d has none."""
    from segtune.core.models.store import read_config
    from segtune.core.normalize import model_percentiles
    from segtune.core.train.data import make_sample
    from segtune.core.train.replay import save_replay

    if name not in REPLAY_CROPS:
        return None
    config = read_config(folder)
    low, high, clip = model_percentiles(config)
    rng = np.random.default_rng(seed)
    if name == "nuclei-2d":
        images, labels, _ = nuclei_2d_data(data, seed, synthetic=False)
        order = rng.permutation(len(images))
    else:
        images, labels, _ = membranes_data(data, ISBI_TRAIN)
        order = np.concatenate([rng.permutation(len(images)), rng.permutation(len(images))])
    crops, crop_labels = [], []
    for index in order:
        sample = make_sample(images[index], labels[index], normalization=(low, high), clip=clip)
        image, lab = sample.image[:, 0], sample.labels[0]
        if min(lab.shape) < REPLAY_SIDE:
            continue
        best = None
        for _ in range(20):
            y, x = (int(rng.integers(0, n - REPLAY_SIDE + 1)) for n in lab.shape)
            window = (slice(y, y + REPLAY_SIDE), slice(x, x + REPLAY_SIDE))
            fraction = float(np.mean(lab[window] > 0))
            if best is None or fraction > best[0]:
                best = (fraction, window)
            if fraction >= 0.1:
                break
        crops.append(image[(slice(None), *best[1])])
        crop_labels.append(lab[best[1]])
        if len(crops) == REPLAY_CROPS[name]:
            break
    return save_replay(folder, crops, crop_labels, diameter=config.get("object_diameter"), normalization=(low, high))


def fp16_copy(model: Any) -> Any:
    """The model with its weights in fp16, except statistics beyond fp16's range (a BatchNorm
    running variance of 9e4 in the depth-4 nuclei-2d), which stay fp32 rather than become inf."""
    import copy

    import torch

    half = copy.deepcopy(model).half()
    limit = float(torch.finfo(torch.float16).max)
    for name, value in model.state_dict().items():
        if value.is_floating_point() and float(value.abs().max()) > limit:
            module_name, _, attribute = name.rpartition(".")
            module = half.get_submodule(module_name)
            if attribute in module._buffers:
                module._buffers[attribute] = value.detach().clone().float()
            else:
                getattr(module, attribute).data = value.detach().clone().float()
    return half


def fp16_check(model: Any) -> dict[str, Any]:
    """How far fp16 storage moves the probabilities: the model with its weights rounded to fp16
    (computing in fp32, as after loading) against the fp32 model, on a synthetic test image."""

    import torch

    from segtune.core.normalize import percentile_normalize
    from segtune.core.synthetic import synthetic_nuclei

    spatial_dims = model.architecture["spatial_dims"]
    shape = (128, 128) if spatial_dims == 2 else (16, 64, 64)
    image = percentile_normalize(synthetic_nuclei(shape, diameter=NUCLEI_3D_DIAMETER, seed=99).image.astype(np.float32))
    x = torch.from_numpy(image[None, None].astype(np.float32))
    rounded = fp16_copy(model).float()
    with torch.no_grad():
        logits = model(x), rounded(x)
    if logits[0].shape[1] == 1:
        probabilities = [torch.sigmoid(t) for t in logits]
    else:
        probabilities = [torch.softmax(t, 1) for t in logits]
    difference = float((probabilities[0] - probabilities[1]).abs().max())
    return {"max_probability_difference": round(difference, 6), "input": f"synthetic nuclei {shape}, seed 99"}


# --- validation ----------------------------------------------------------------------------------


def predict_labels(
    model_or_name: Any,
    image: np.ndarray,
    *,
    diameter: float | None | str = "auto",
    config: dict[str, Any] | None = None,
) -> np.ndarray:
    """Instance labels of a 2D or 3D image, as ``segtune predict --instances [--diameter D]`` makes them."""
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict

    if isinstance(model_or_name, (str, Path)):
        model, config = load_model(model_or_name)
    else:
        model = model_or_name
    result = predict(
        (model, config), image, axes="ZYX" if image.ndim == 3 else "YX", instances=True, diameter=diameter, device="cpu"
    )
    labels = np.asarray(result.labels)[0]
    return labels[0] if image.ndim == 2 else labels


def predict_mask(model_or_name: Any, image: np.ndarray, config: dict[str, Any] | None = None) -> np.ndarray:
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict

    if isinstance(model_or_name, (str, Path)):
        model, config = load_model(model_or_name)
    else:
        model = model_or_name
    result = predict((model, config), image.astype(np.float32), axes="YX", instances=False, device="cpu")
    return np.asarray(result.labels)[0, 0]


def validate(name: str, data: Path, model_or_name: Any = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Numbers on data the model was not trained on (the model card's)."""
    from segtune.core.diameter import estimate_diameter, labels_diameter
    from segtune.core.metrics import matched_metrics, pixel_metrics
    from segtune.core.models.store import load_model
    from segtune.core.synthetic import random_nuclei_parameters, synthetic_nuclei

    if model_or_name is None or isinstance(model_or_name, (str, Path)):
        model_or_name, config = load_model(model_or_name or PRETRAINED / name)

    def f1(
        image: np.ndarray, truth: np.ndarray, diameter: float | str = "auto", config: dict[str, Any] | None = config
    ) -> float:
        """Matched F1 at IoU 0.5 of the model's instances of ``image`` against ``truth``."""
        predicted = predict_labels(model_or_name, image, diameter=diameter, config=config)
        return float(matched_metrics(predicted, truth, thresholds=(0.5,))["f1_at_0.5"])

    results: dict[str, Any] = {}
    if name == "nuclei-2d":
        folder = data / "nuclei_nih3t3"
        given, auto, unsplit = [], [], []
        # the NIH3T3 masks are binary: touching nuclei are one object there, which splitting them
        # is scored against; the unsplit watershed's number shows that trade-off
        unsplit_config = {**(config or {}), "split_instances": False}
        for image_name in NIH3T3_HELD_OUT:
            image = _read_png(folder / "images" / image_name)
            truth = _read_png(folder / "labels" / image_name) > 0
            true_diameter = labels_diameter(truth)
            given.append(f1(image, truth, diameter=true_diameter))
            auto.append(f1(image, truth))
            unsplit.append(f1(image, truth, config=unsplit_config))
        results["nih3t3_heldout_f1_at_0.5_true_diameter"] = round(float(np.mean(given)), 4)
        results["nih3t3_heldout_f1_at_0.5_auto_diameter"] = round(float(np.mean(auto)), 4)
        results["nih3t3_heldout_f1_at_0.5_auto_diameter_unsplit"] = round(float(np.mean(unsplit)), 4)
        results["nih3t3_heldout_images"] = list(NIH3T3_HELD_OUT)
        rng = np.random.default_rng(20240)  # seeds never used in training
        by_size: dict[str, float] = {}
        for size in (8, 12, 20, 35, 60, 90):
            scores = []
            for _ in range(3):
                params = random_nuclei_parameters(rng, diameter=(size, size))
                side = int(min(768, max(192, size * 9)))
                sample = synthetic_nuclei((side, side), seed=int(rng.integers(2**31)), **params)
                scores.append(f1(sample.image, sample.labels))
            by_size[str(size)] = round(float(np.mean(scores)), 4)
        results["synthetic_f1_at_0.5_auto_diameter_by_size"] = by_size
        results.update(
            dsb_validation(
                data, lambda image, diameter: predict_labels(model_or_name, image, diameter=diameter, config=config)
            )
        )
    elif name == "membranes-2d":
        f1s = []
        for image, truth in zip(*membranes_data(data, ISBI_HELD_OUT)[:2], strict=True):
            f1s.append(pixel_metrics(predict_mask(model_or_name, image, config=config), truth)["f1"])
        results["isbi_heldout_interior_pixel_f1"] = round(float(np.mean(f1s)), 4)
        results["isbi_heldout_images"] = list(ISBI_HELD_OUT)
    elif name == "nuclei-he-2d":
        segment = lambda image, diameter: predict_labels(model_or_name, image, diameter=diameter, config=config)  # noqa: E731
        for kind in STAINED_KINDS:
            results.update(dsb_validation(data, segment, kind=kind))
    elif name == "nuclei-3d":
        rng = np.random.default_rng(777)
        scores = []
        for _ in range(4):
            params = random_nuclei_parameters(rng, ndim=3, diameter=(NUCLEI_3D_DIAMETER, NUCLEI_3D_DIAMETER * 2))
            params["z_anisotropy"] = float(rng.uniform(1.0, 2.5))
            sample = synthetic_nuclei((32, 128, 128), seed=int(rng.integers(2**31)), **params)
            scores.append(f1(sample.image, sample.labels))
        results["synthetic3d_f1_at_0.5_auto_diameter"] = round(float(np.mean(scores)), 4)
        parts = qcanet_parts(data)
        for part in ("held_out", "whole"):
            image, truth = parts[part]
            results[f"qcanet_{part}_f1_at_0.5_auto_diameter"] = round(f1(image, truth), 4)
            results[f"qcanet_{part}_f1_at_0.5_true_diameter"] = round(
                f1(image, truth, diameter=labels_diameter(truth)), 4
            )
        sample = outside_sample("3d")
        if sample is not None:
            image, truth = sample
            true_diameter = labels_diameter(truth)
            results["stardist_synthetic3d_sample_diameter_px"] = [
                round(estimate_diameter(image), 1),
                round(true_diameter, 1),
            ]
            for key, diameter in (("auto_diameter", "auto"), ("true_diameter", true_diameter)):
                results[f"stardist_synthetic3d_sample_f1_at_0.5_{key}"] = round(f1(image, truth, diameter=diameter), 4)
    return results


def dsb_validation(data: Path, segment: Any, kind: str = "fluorescence") -> dict[str, Any]:
    """Matched F1@0.5 and AP@0.5:0.95 on the DSB 2018 validation split (images of ``kind``), each
    image at its own scale as a user has it, with the automatic and with the true diameter; the
    mean over images and per diameter tercile (the split's strata). Keys start ``dsb2018_validation_``
    (fluorescence) or ``dsb2018_KIND_validation_``."""
    from segtune.core.metrics import matched_metrics

    split = dsb_split(data)
    images, truths, names = dsb_pairs(data, "validation", kinds=(kind,))
    diameters = np.array([split["diameters"][n.split("/")[-1]] for n in names])
    cuts = np.quantile(diameters, [1 / 3, 2 / 3])
    prefix = "dsb2018_validation" if kind == "fluorescence" else f"dsb2018_{kind}_validation"
    results: dict[str, Any] = {f"{prefix}_images": len(images)}
    for key, use_true in (("auto_diameter", False), ("true_diameter", True)):
        f1s, aps = [], []
        for image, truth, diameter in zip(images, truths, diameters, strict=True):
            predicted = segment(image, float(diameter) if use_true else "auto")
            metrics = matched_metrics(predicted, truth)
            f1s.append(metrics["f1_at_0.5"])
            aps.append(metrics["ap_mean"])
        results[f"{prefix}_f1_at_0.5_{key}"] = round(float(np.mean(f1s)), 4)
        results[f"{prefix}_ap_0.5_0.95_{key}"] = round(float(np.mean(aps)), 4)
        tercile = np.searchsorted(cuts, diameters)
        results[f"{prefix}_f1_at_0.5_{key}_by_diameter"] = {
            f"{lo:.0f}-{hi:.0f} px": round(float(np.mean(np.array(f1s)[tercile == t])), 4)
            for t, (lo, hi) in enumerate(zip([diameters.min(), *cuts], [*cuts, diameters.max()], strict=True))
        }
    return results


# --- model cards -------------------------------------------------------------------------------

# nuclei-2d (fluorescence) on nuclei-he-2d's validation images, for its card: measured by
# python scripts/train_pretrained.py --evaluate-only nuclei-he-2d --model src/segtune/pretrained/nuclei-2d
HE_BASELINE = "matched F1@0.5 0.001 with the automatic diameter, 0.007 with the true one (brightfield: 0.0 and 0.0)"

CARD_TEXT = {
    "nuclei-2d": {
        "intended": "2D fluorescence images of cell nuclei (Hoechst/DAPI, nuclear GFP, H2B-GFP), 8- or 16-bit, dim or "
        "bright, nuclei of any size: the image is zoomed so nuclei are about {d:g} px across "
        "(`--diameter PX`, estimated automatically when not given). One channel (pick it with `--channel`).",
        "output": "3 classes (background / interior / boundary); `--instances` gives a watershed seeded at peaks of "
        "the interior-weighted distance to the background, a third of a diameter apart (config "
        "`split_instances`), so touching nuclei are separated.",
        "data": "The {n_dsb} fluorescence images of the training part of the fixed Data Science Bowl 2018 split "
        "(`scripts/dsb2018_split.json`: BBBC038 stage 1 with corrected instance masks, many labs, "
        "microscopes and magnifications; `../shared/data/nuclei_dsb2018`), 10 of the 14 NIH3T3 Hoechst "
        "images of Coelho et al. (2009) (all but {held}; binary masks) and {n_syn} synthetic images from "
        "`segtune.core.synthetic` (Hoechst/GFP/H2B-like, 8/16-bit, touching and overlapping, debris, "
        "out-of-focus blobs, nuclei of 6-90 px), every image zoomed so its median nucleus is {d:g} px "
        "(zoom augmentation +-25 % on top). The three-class targets come from the instance labels, so "
        "the boundary class learns from real touching nuclei (DSB) as well as synthetic ones. Trained "
        "further from the previous nuclei-2d (NIH3T3 + synthetic only) rather than from scratch.",
        "limits": "Fluorescence only: stained tissue (H&E) and brightfield nuclei are outside what it was trained on "
        "(0.001 matched F1 on the DSB stained validation images; `nuclei-he-2d` is the model for those). "
        "A small network (depth 3, 16 base channels) for fast CPU prediction, and saturated at that size: 100 "
        "more minutes of training from this model (peak lr 5e-4, cosine to 1e-5, 14 epochs) kept the training "
        "loss at 0.43-0.45 and scored DSB validation 0.906 but NIH3T3 0.805, so it was not shipped. This "
        "stage's recipe run for 50 epochs on a quiet machine instead of 4 on a loaded one predicted better "
        "(DSB validation 0.911 / AP 0.659, NIH3T3 0.838) but fine-tuned worse: one NIH3T3 image for 2 minutes "
        "lost it the dim nuclei of another image (README, *Fine-tuning*), so it was installed and taken back. A wider, "
        "deeper network trained from scratch on the same data for 115 minutes on the 2 shared CPU cores "
        "(`--depth 4 --base-channels 24 --minutes 115`, 53 epochs of a cosine schedule; the validation "
        "matched F1 inside the run rose 0.883 -> 0.915 from epoch 8 to 42 and 0.918 at 53) "
        "scored DSB validation 0.910 / AP 0.655 with the automatic diameter (0.906 / 0.650 with the true "
        "one) but NIH3T3 0.811 and synthetic 20 px nuclei 0.644, so it was not shipped either: it needs a "
        "longer run (a GPU). Fine-tuning "
        "on a few corrected images of your own data (`segtune train --from nuclei-2d`, about 2 minutes) is the "
        "expected next step. The automatic diameter comes from an Otsu threshold of the image and can be "
        "wrong on images dominated by bright debris: give `--diameter` then.",
        "validation": "`dsb2018_validation_...` are the 78 fluorescence images of the split's validation part, each at "
        "its own scale as a user has it (automatic diameter, and the true one). The best epoch was "
        "chosen on the validation loss of every third of those images, and nothing else was chosen "
        "on them; the other numbers (NIH3T3 held-out images, synthetic nuclei) were not used to "
        "choose anything. The NIH3T3 masks are binary: touching nuclei are one object there, which "
        "the distance-peak split is scored down for (`..._unsplit` shows the trade-off). "
        "The previous nuclei-2d (trained on NIH3T3 + synthetic only) scored, on the same 78 DSB images "
        "with the automatic diameter, matched F1@0.5 0.814 and AP@0.5:0.95 0.525 (this one 0.905 and "
        "0.649), and 0.877 on the NIH3T3 held-out images (this one 0.825: it splits touching nuclei "
        "that those binary masks join). CPU speed (same network size as before; `python "
        "benchmarks/interactive.py`, 2 shared cores at load 6-10): 0.38 s for a 1024 x 1024 image with "
        "~60 px nuclei and 1.30 s for 2048 x 2048, about 0.3-0.4 s per megapixel, reading, diameter "
        "estimate, network and instances included.",
    },
    "membranes-2d": {
        "intended": "2D serial-section transmission EM of neural tissue like the ISBI 2012 challenge data "
        "(Drosophila ventral nerve cord, 4 x 4 nm pixels, 512 x 512), 8-bit; used at the native pixel "
        "size (no diameter zoom).",
        "output": (
            "1 channel: probability of cell interior; the mask (`segtune predict`) is interior = 1, membrane = 0."
        ),
        "data": "ISBI 2012 training images 0-14 (`../shared/data/membranes_isbi2012`); images 15-19 were held out.",
        "limits": "One data set from one microscope: other EM modalities (SBEM, FIB-SEM), other tissues or pixel sizes "
        "need fine-tuning. Thin, faint membranes and mitochondria/vesicle boundaries are the typical "
        "errors. Pixel-level output; for cell instances label the connected interior regions. More context per "
        "patch did not help on the 2 shared CPU cores: 256 x 256 patches, batch 2, depth 5 for 60 minutes "
        "(`--patch 256 --batch-size 2 --depth 5 --minutes 60`, 418 epochs, best inner val_f1 0.9517) scored "
        "0.9449 on images 15-19, below this model's, so it was not shipped. Nor did a loss that weighs the hard pixels "
        "(thin membranes) more: focal+dice instead of bce+dice, otherwise this recipe, 45 minutes "
        "(`--loss focal+dice --minutes 45`, 538 epochs, best inner val_f1 0.9516) scored 0.9497. These gaps are larger "
        "than the seed's: this recipe with `--seed 1` scored 0.9528 (not shipped: choosing between seeds on images "
        "15-19 would be choosing on the test images).",
    },
    "nuclei-3d": {
        "intended": "3D fluorescence stacks of nuclei (Z, Y, X), nuclei zoomed in Y and X to about {d:g} px across "
        "(`--diameter`, estimated when not given); Z steps 0.6-2.5 times the XY pixel size (nuclei up to ~1.7x "
        "taller than wide in voxels, as an isotropic stack becomes once Y and X are zoomed).",
        "output": "3 classes (background / interior / boundary) per voxel; `--instances` gives a 3D watershed seeded "
        "at distance peaks (config `split_instances`).",
        "data": "Trained further from the previous (synthetic-only) nuclei-3d on 48 synthetic 32 x 96 x 96 stacks "
        "from `segtune.core.synthetic` (ellipsoids of {lo:g}-{hi:g} px, Z anisotropy 1-2.5, or 0.6-1 in a third "
        "of them; touching/overlapping, elastic shapes, texture, uneven brightness, noise, 8/16-bit) and one "
        "real stack: the part X >= 50 of QCANet's 8-cell mouse embryo (`../shared/data/nuclei3d_qcanet`, 51 x "
        "120 x 72, 5 nuclei, zoomed in Y and X to {d:g} px nuclei; drawn as 12 of the 60 stacks). The part "
        "X < 50 (3 nuclei, none crossing X = 50) was held out. The best epoch was chosen on the loss of 6 "
        "synthetic stacks of other seeds, never on the real stack.",
        "limits": "One real embryo (8 cells) in training: other embryo stages, dense tissue, strong depth "
        "attenuation or very anisotropic sampling (Z step > 3x XY) may need fine-tuning on a few corrected "
        "stacks. Z is not rescaled by `--diameter`; resample very anisotropic stacks first. The real held-out "
        "number rests on 3 nuclei: a check, not an estimate of accuracy.",
        "validation": "`stardist_synthetic3d_sample_...` is the 31 x 61 x 57 stack of 51 densely packed, strongly "
        "Z-blurred synthetic nuclei that the StarDist package ships (another generator than ours): the "
        "gap between its automatic- and true-diameter rows is the automatic estimate's error on such "
        "a crowded, tiny stack (`..._diameter_px`: estimated, then true). `qcanet_held_out_...` is the "
        "QCANet stack's part X < 50 (3 real nuclei not trained on); `qcanet_whole_...` the whole stack "
        "(8 nuclei, 5 of them in training). The previous, synthetic-only nuclei-3d measured the same way: "
        "synthetic 0.7238; QCANet held-out part 0.50 (true diameter 0.67), whole stack 0.55 (0.52); StarDist's "
        "stack 0.62 (0.79).",
    },
    "nuclei-he-2d": {
        "intended": "2D brightfield images of nuclei darker than their background: hematoxylin-stained (H&E) tissue "
        "sections and brightfield cytology, 8-bit colour or grey (`--channel RGB` reads a colour image as its grey "
        "mean, as training did). The image is zoomed so nuclei are about {d:g} px across (`--diameter PX`; "
        "estimated automatically on the inverted image when not given, config `dark_objects`).",
        "output": "3 classes (background / interior / boundary); `--instances` gives a watershed seeded at distance "
        "peaks a third of a diameter apart (config `split_instances`), as nuclei-2d does.",
        "data": "The {n_stained} stained-tissue and {n_bright} brightfield images of the training part of the fixed "
        "Data Science Bowl 2018 split (`scripts/dsb2018_split.json`; `../shared/data/nuclei_dsb2018`, instance "
        "labels, CC0), read as the grey mean of their colour channels and zoomed so each image's median nucleus "
        "is {d:g} px (zoom augmentation +-25 % on top). Trained further from nuclei-2d (fluorescence) rather "
        "than from scratch: the network learns dark nuclei on a bright background from its fluorescence "
        "shapes.",
        "limits": "Little data from few sources: the DSB stained images are one kind of 256 x 320 crop of "
        "hematoxylin-stained tissue (purple nuclei on pale pink-violet), the brightfield ones 1024 x 1024 "
        "cytology images of one kind (squamous cells with small dark nuclei). H&E from other labs, scanners "
        "and stains (strong eosin, IHC/DAB, dense tumour tissue) is outside what it saw: fine-tune it on a few "
        "corrected images (`segtune train --from nuclei-he-2d`). Not for fluorescence (use nuclei-2d). The "
        "small network of nuclei-2d (depth 3, 16 base channels), trained for {minutes:g} minutes on 2 CPU "
        "cores: matched F1 0.70 on the stained validation images, so expect to correct about a third of the "
        "nuclei before fine-tuning. Brightfield "
        "cytology is weak: on its 3 validation images the automatic diameter measures the cells rather than "
        "their nuclei (matched F1 0.14); given the true diameter, 0.49. Give `--diameter` there.",
        "validation": "`dsb2018_stained_validation_...` and `dsb2018_brightfield_validation_...` are the split's "
        "validation images of those kinds (15 and 3), each at its own scale as a user has it (automatic "
        "diameter, and the true one). The best epoch was chosen on the validation loss of those same 18 "
        "images (zoomed to {d:g} px nuclei), and nothing else was chosen on them; there is no other "
        "stained data in this project to measure on, so these numbers are optimistic by that selection. "
        "nuclei-2d (fluorescence) on the same 15 stained images: {baseline}. CPU speed: the network of "
        "nuclei-2d (same size), so its figure holds: about 0.3-0.4 s per megapixel on 2 shared cores "
        "(`python benchmarks/interactive.py`), reading, diameter estimate, network and instances included.",
    },
}


def _elastic_text(augmentation: dict[str, Any]) -> str:
    if not augmentation.get("elastic_probability"):
        return ""
    return (
        f", elastic deformation in {augmentation['elastic_probability']:.0%} of patches: control points "
        f"{augmentation['elastic_spacing']:g} px apart moved {augmentation['elastic_magnitude']:g} px (s.d.)"
    )


def _replay_lines(name: str, folder: Path) -> list[str]:
    """The card's words on the replay set fine-tuning mixes in (none for a model without one)."""
    if not (folder / "replay.npz").exists():
        return []
    with np.load(folder / "replay.npz", allow_pickle=False) as replay:
        n, side = replay["labels"].shape[0], replay["labels"].shape[1]
    source = (
        "NIH3T3 and DSB 2018 training images, one crop per image"
        if name == "nuclei-2d"
        else "the ISBI training images, two crops per image"
    )
    return [
        "## Fine-tuning",
        "",
        f"`replay.npz` holds {n} crops of {side} x {side} px from {source} (never the held-out or validation "
        "images), at the size and normalisation the model sees. Fine-tuning this model (`segtune train --from "
        f"{name} --replay 0.5`) draws that share of its patches from them, meant to make a model taught one "
        "corrected image keep what it knew; off by default, as it did not make one-image fine-tuning lose "
        "less in this project's measurements (README, *Fine-tuning*). Made by `python "
        "scripts/train_pretrained.py --write-replay`.",
        "",
    ]


STOP_WORDS = {
    "time_budget": "stopped by its time budget",
    "completed": "all epochs run",
    "early_stopping": "stopped early: no better epoch for a while",
    "cancelled": "cancelled",
}


def _stop_words(reason: str | None) -> str:
    """How the card says why a run stopped (records edited by hand say it in words already)."""
    return STOP_WORDS.get(reason or "", reason or "stop reason not recorded")


def _selection_words(validation: list[str]) -> str:
    """The images the best epoch was chosen on: given apart (train(validation=...), named
    "validation N" in the record) or split off the training images inside the trainer."""
    if validation and all(v.startswith("validation ") for v in validation):
        return f"{len(validation)} images kept apart from the training images"
    return f"{len(validation)} images of the training pool held out inside the trainer"


def write_card(name: str, config: dict[str, Any]) -> Path:
    """MODEL_CARD.md from the config's training record and the measured validation numbers."""
    from segtune.core.models.store import atomic_write_text

    folder = PRETRAINED / name
    text = CARD_TEXT[name]
    d = config.get("object_diameter") or 0
    train_split = json.loads(DSB_SPLIT_FILE.read_text())["train"]
    values = {
        "d": d,
        "held": ", ".join(NIH3T3_HELD_OUT),
        "lo": round(d * 0.7, 1),
        "hi": round(d * 1.5, 1),
        "n_syn": SYNTHETIC_2D_IMAGES,
        "n_dsb": len(train_split["fluorescence"]),
        "n_stained": len(train_split["stained"]),
        "n_bright": len(train_split["brightfield"]),
        "minutes": round(config.get("training", {}).get("wall_seconds", 0) / 60),
        "baseline": HE_BASELINE,
    }
    if name == "nuclei-3d":
        values.update(lo=round(d * 0.75, 1), hi=round(d * 1.4, 1))
    training = config.get("training", {})
    settings = training.get("settings", {})
    arch = config["architecture"]
    weights = folder / "weights.safetensors"
    size_mb = weights.stat().st_size / 1e6 if weights.exists() else float("nan")
    validation = config.get("validation", {})
    patch = settings.get("patch")
    patch = " x ".join(str(n) for n in patch) if isinstance(patch, list) else f"{patch} x {patch}"
    best = {
        k: round(v, 4) if isinstance(v, float) else v
        for k, v in config.get("metrics", {}).items()
        if k in ("epoch", "val_f1", "val_matched_f1", "val_loss")
    }
    rows = "\n".join(f"| `{k}` | {json.dumps(v)} |" for k, v in validation.items())
    lines = [
        f"# {name}",
        "",
        config.get("description", ""),
        "",
        "## Intended data",
        "",
        text["intended"].format(**values),
        "",
        "## Output",
        "",
        text["output"],
        "",
        "## Model",
        "",
        f"{arch['spatial_dims']}D U-Net, depth {arch['depth']}, {arch['base_channels']} base channels, {arch['norm']} "
        f"norm; `{config['head']}` head; input normalised to percentiles {config['normalization']['low']}-"
        f"{config['normalization']['high']}; trained on {patch} patches; weights stored in float16 "
        f"({size_mb:.1f} MB), loaded as float32 (largest probability change from the rounding: "
        f"{config.get('fp16_check', {}).get('max_probability_difference', 'not measured')}).",
        "",
        "## Training data",
        "",
        text["data"].format(**values),
        "",
        "## Training",
        "",
        f"Command: `{training.get('command', 'python scripts/train_pretrained.py ' + name)}` "
        f"({training.get('note', 'from scratch')}; "
        f"CPU, seed {settings.get('seed')}). "
        f"Loss `{settings.get('loss')}`, AdamW lr {settings.get('learning_rate')} with a cosine schedule over a "
        f"{settings.get('max_minutes')}-minute budget, batch {settings.get('batch_size')}, augmentation "
        f"(flips, rotations, zoom +-{settings.get('augmentation', {}).get('zoom')}, brightness/contrast, blur, noise"
        f"{_elastic_text(settings.get('augmentation', {}))}). "
        f"Wall time on the project's shared 2-core CPU: {training.get('wall_seconds', float('nan')) / 60:.1f} min "
        f"({training.get('epochs_run')} epochs, {_stop_words(training.get('stop_reason'))}). "
        f"Model selection used {_selection_words(training.get('data', {}).get('validation', []))}; its best epoch: "
        f"{json.dumps(best)}.",
        "",
        "## Validation on data it was not trained on",
        "",
        f"Measured on the shipped (float16) weights by `python scripts/train_pretrained.py --evaluate-only {name}` "
        "(matched F1 = instances paired one-to-one at IoU >= 0.5; pixel F1 of the foreground/interior).",
        "",
        "| measure | value |",
        "| --- | --- |",
        rows,
        "",
        *([text["validation"].format(**values), ""] if "validation" in text else []),
        *_replay_lines(name, folder),
        "## Known limits",
        "",
        text["limits"].format(**values),
        "",
    ]
    return atomic_write_text(folder / "MODEL_CARD.md", "\n".join(lines))


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=["all"], help=f"models to train: {', '.join(MODELS)} or all")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared real data folder")
    parser.add_argument("--minutes", type=float, default=None, help="training budget per model (default: per-model)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=None, help="U-Net depth of a new model (default: per model)")
    parser.add_argument(
        "--base-channels", type=int, default=None, help="U-Net width of a new model (default: per model)"
    )
    parser.add_argument(
        "--start", default=None, help="train further from this model folder or bundled name instead of from scratch"
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="peak learning rate (default: per model; lower when training further with --start)",
    )
    parser.add_argument("--patch", type=int, default=None, help="training patch side in pixels (default: per model)")
    parser.add_argument("--batch-size", type=int, default=None, help="patches per step (default: per model)")
    parser.add_argument("--loss", default=None, help="training loss, e.g. focal+dice (default: per model)")
    parser.add_argument(
        "--leave-out",
        default=None,
        metavar="HxW",
        help="nuclei-2d: train and choose the best epoch without the DSB images of this size (one lab), "
        "to make a source the model never saw (benchmarks/finetune_gain.py --start RUN); never installed",
    )
    parser.add_argument("--work", type=Path, default=None, help=f"the run's folder (default {WORK}/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted run in --work")
    parser.add_argument(
        "--no-install", action="store_true", help="train and validate, but leave the bundled model as it is"
    )
    parser.add_argument(
        "--install",
        type=Path,
        default=None,
        metavar="RUN",
        help="make the model a --no-install run trained in RUN the bundled one (fp16 weights, validation, card)",
    )
    parser.add_argument(
        "--write-replay",
        action="store_true",
        help="(re)write the shipped models' replay sets (replay.npz, mixed into fine-tuning), do not train",
    )
    parser.add_argument("--evaluate-only", action="store_true", help="validate the shipped models, do not train")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="with --evaluate-only: validate this model folder instead of the bundled one",
    )
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="with --evaluate-only: record the numbers in config.json and MODEL_CARD.md",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    names = list(MODELS) if "all" in args.names else args.names
    for name in names:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if args.leave_out is not None and (names != ["nuclei-2d"] or not args.no_install):
        parser.error("--leave-out: only for nuclei-2d with --no-install (a model that skipped a lab is not shipped)")
    if args.loss is not None:
        from segtune.core.train.losses import parse_loss

        try:
            parse_loss(args.loss)
        except ValueError as e:
            parser.error(f"--loss: {e}")
    for name in names:
        if args.write_replay:
            print(name, write_replay(name, args.data, PRETRAINED / name), flush=True)
            continue
        if args.install:
            from segtune.core.models.store import load_model

            model, config = load_model(args.install, device="cpu")
            training = config.get("training", {})
            # a run stopped by hand (kill) never wrote its bundled config: make it here
            config = bundled_config(
                name,
                config,
                training.get("wall_seconds")
                or training.get("seconds")
                or sum(float(r.get("seconds") or 0) for r in _log_rows(args.install)),
            )
            folder = write_model(name, model, config, args.data)
            config["validation"] = validate(name, args.data)
            folder = write_model(name, model, config, args.data)
            write_card(name, config)
            print(
                f"{name}: installed from {args.install}; validation {json.dumps(config['validation'])}; -> {folder}",
                flush=True,
            )
            continue
        if args.evaluate_only:
            from segtune.core.models.store import atomic_write_text, read_config

            validation = validate(name, args.data, *((str(args.model), None) if args.model else ()))
            print(name, json.dumps(validation, indent=1), flush=True)
            if args.update_cards:
                config = read_config(PRETRAINED / name)
                config["validation"] = validation
                atomic_write_text(PRETRAINED / name / "config.json", json.dumps(config, indent=2) + "\n")
                write_card(name, config)
            continue
        minutes = args.minutes or BUDGET_MINUTES[name]
        model, config, seconds = train_one(
            name,
            args.data,
            minutes=minutes,
            seed=args.seed,
            device=args.device,
            depth=args.depth,
            base_channels=args.base_channels,
            start=args.start,
            work=args.work,
            resume=args.resume,
            learning_rate=args.learning_rate,
            patch=args.patch,
            batch_size=args.batch_size,
            loss=args.loss,
            leave_out=args.leave_out,
        )
        if args.no_install:
            work = args.work or WORK / name
            save_model_config(work, config)
            print(
                f"{name}: wall time {seconds / 60:.1f} min; trained model in {work}; validate it with "
                f"--evaluate-only --model {work}",
                flush=True,
            )
            continue
        folder = write_model(name, model, config, args.data)
        # the numbers are those of the shipped (fp16) weights
        config["validation"] = validate(name, args.data)
        folder = write_model(name, model, config, args.data)
        write_card(name, config)
        print(
            f"{name}: wall time {seconds / 60:.1f} min; validation {json.dumps(config['validation'])}; -> {folder}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
