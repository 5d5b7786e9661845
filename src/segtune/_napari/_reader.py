"""napari reader: CZI, TIFF, OME-TIFF, PNG and OME-Zarr through ``segtune.core.io.open_image``.

Layers stay lazy (dask), one image layer per channel (one RGB layer per colour channel),
scaled in micrometres from the file's pixel sizes, with the file's axis names (t, z, y, x) and
named after the file's channels. A label image opens as a Labels layer: one segtune wrote (its
TIFF Software tag says so), a one-channel image of 32- or 64-bit integers (what napari's own
writer, StarDist and Cellpose save), or a one-channel integer image named like a mask
(``*_labels*``, ``*mask*``, ``man_seg*``) or lying in a folder called ``labels`` or ``masks``. A file that
cannot be read raises ``ImageReadError`` naming the file, which napari shows as an error
notification. An OME-Zarr labels image (``image-label``) opens as a Labels layer, and an
OME-Zarr image brings the labels of its ``labels/`` group with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from typing import Any

import numpy as np

from segtune.core.io import (
    LABELS_SOFTWARE,
    SAMPLE_NAMES,
    SUPPORTED_EXTENSIONS,
    ImageData,
    open_image,
)
from segtune.core.omezarr import is_ome_zarr

LayerData = tuple[Any, dict[str, Any], str]
READER_EXTENSIONS = tuple(e for e in SUPPORTED_EXTENSIONS if e not in (".jpg", ".jpeg")) + (".jpg", ".jpeg")


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """Return :func:`read_image` when segtune can read ``path``, else None (napari asks others)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(str(p).lower().endswith(READER_EXTENSIONS) or is_ome_zarr(p) for p in paths):
        return None
    return read_image


def read_image(path: str | Sequence[str]) -> list[LayerData]:
    """Open each file and return its image layers."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        image = open_image(p)
        if image.metadata.get("is_labels") or is_label_image(image):
            layers.extend(labels_layers(image))
            continue
        layers.extend(image_layers(image))
        if image.metadata.get("format") == "ome-zarr":
            for folder in _ngff_labels(p):
                layers.extend(labels_layers(open_image(folder)))
    return layers


def _ngff_labels(path: str | os.PathLike) -> list[str]:
    """The labels images an OME-Zarr image lists in its ``labels/`` group."""
    import zarr

    folder = os.path.join(os.fspath(path), "labels")
    if not os.path.isdir(folder):
        return []
    attrs = dict(zarr.open_group(folder, mode="r").attrs)
    names = dict(attrs.get("ome", attrs)).get("labels", [])
    return [os.path.join(folder, n) for n in names if os.path.isdir(os.path.join(folder, n))]


# names other tools give their masks (Cell Tracking Challenge ground truth is man_seg*.tif)
LABEL_NAME_PATTERNS = ("*_labels*", "*mask*", "man_seg*")
LABEL_FOLDERS = ("labels", "masks")


def is_label_image(image: ImageData) -> bool:
    """Whether a file holds labels: one integer channel, and written by segtune or named like a mask."""
    if image.sizes()["C"] != 1 or not (np.issubdtype(image.dtype, np.integer) or image.dtype == bool):
        return False
    if image.metadata.get("software") == LABELS_SOFTWARE:
        return True
    if image.dtype.itemsize >= 4:
        return True  # no camera writes 32/64-bit integers; napari, StarDist, Cellpose labels are such
    name = image.path.name.lower()
    return (
        any(fnmatch(name, pattern) for pattern in LABEL_NAME_PATTERNS)
        or image.path.parent.name.lower() in LABEL_FOLDERS
    )


def _placement(image: ImageData, keep_channels: bool = True) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The index dropping singleton T and Z, and the scale / units / axis labels / metadata
    keywords every layer of ``image`` shares (the channel axis, when kept, is not among them)."""
    sizes = image.sizes()
    pz, py, px = (s if s is not None else 1.0 for s in image.physical_pixel_sizes)
    index: list[Any] = []
    scale: list[float] = []
    axis_labels: list[str] = []
    for axis, step in (("T", 1.0), ("C", None), ("Z", pz), ("Y", py), ("X", px)):
        if axis in "TZ" and sizes[axis] == 1 or axis == "C" and not keep_channels:
            index.append(0)
            continue
        index.append(slice(None))
        if step is not None:
            scale.append(float(step))
            axis_labels.append(axis.lower())
    meta: dict[str, Any] = {
        "scale": scale,
        "units": "um" if image.physical_pixel_sizes.Y is not None else "pixel",
        "axis_labels": axis_labels,
        "metadata": {
            "segtune_path": str(image.path),
            "segtune_scene": image.scene,
            "physical_pixel_sizes": tuple(image.physical_pixel_sizes),
        },
    }
    return tuple(index), meta


def labels_layers(image: ImageData) -> list[LayerData]:
    """One Labels layer for a one-channel integer image, read into memory so it can be painted."""
    index, meta = _placement(image, keep_channels=False)
    meta["name"] = image.path.name
    data = image.data[index]
    # OME-Zarr labels can be larger than memory: they stay lazy (and read-only) there
    return [(data if image.metadata.get("format") == "ome-zarr" else np.asarray(data), meta, "labels")]


def image_layers(image: ImageData) -> list[LayerData]:
    """Layer data for an opened image: TCZYX with singleton T and Z dropped, channels split
    (each RGB(A) colour channel one RGB layer)."""
    samples = int(image.metadata.get("samples", 1))
    if samples in SAMPLE_NAMES and image.sizes()["C"] % samples == 0:
        return rgb_layers(image, samples)
    index, meta = _placement(image)
    data = image.data[index]
    sizes = image.sizes()
    n_channels = sizes["C"]
    meta["contrast_limits"] = _contrast_limits(image)
    stem = image.path.name
    if n_channels == 1:
        meta["name"] = f"{stem} [{image.channel_names[0]}]" if image.channel_names[0] else stem
        meta["contrast_limits"] = meta["contrast_limits"][0]
        return [(data[:, 0] if sizes["T"] > 1 else data[0], meta, "image")]
    channel_axis = 1 if sizes["T"] > 1 else 0
    meta["channel_axis"] = channel_axis
    meta["name"] = [f"{stem} [{c}]" for c in image.channel_names]
    meta["colormap"] = _channel_colormaps(image.channel_names)
    meta["blending"] = "additive"
    return [(data, meta, "image")]


def rgb_layers(image: ImageData, samples: int) -> list[LayerData]:
    """One RGB layer per colour channel (CZI Bright, Pol_0 ... taken with a colour camera);
    the first is shown, the others wait in the layer list (colour images hide each other)."""
    index, base = _placement(image)
    data = image.data[index]
    channel_axis = 1 if image.sizes()["T"] > 1 else 0
    limits = _contrast_limits(image)
    layers: list[LayerData] = []
    for first in range(0, image.sizes()["C"], samples):
        group = slice(first, first + samples)
        name = image.channel_names[first]
        for suffix in SAMPLE_NAMES[samples]:
            name = name.removesuffix(f" ({suffix})")
        if image.channel_names[group] == list(SAMPLE_NAMES[samples]):
            name = "RGB"
        meta = {**base, "name": f"{image.path.name} [{name}]", "rgb": True, "visible": first == 0}
        meta["metadata"] = {**base["metadata"], "segtune_channel": name}
        if image.dtype != np.uint8:
            colour = limits[group][:3]
            meta["contrast_limits"] = [min(lo for lo, _ in colour), max(hi for _, hi in colour)]
        rgb = data[(slice(None),) * channel_axis + (group,)]
        layers.append((np.moveaxis(rgb, channel_axis, -1), meta, "image"))
    return layers


def _contrast_limits(image: ImageData) -> list[list[float]]:
    """Contrast from the middle plane of each channel, so opening a big file reads one plane each."""
    sizes = image.sizes()
    limits = []
    for c in range(sizes["C"]):
        values = image.plane(t=0, c=c, z=sizes["Z"] // 2)
        lo, hi = np.percentile(values, [0.1, 99.9]) if values.size else (0.0, 1.0)
        limits.append([float(lo), float(hi if hi > lo else lo + 1)])
    return limits


_COLORMAPS = {
    "dapi": "blue",
    "hoechst": "blue",
    "gfp": "green",
    "egfp": "green",
    "led470": "green",
    "led555": "magenta",
    "red": "red",
    "green": "green",
    "blue": "blue",
}


def _channel_colormaps(names: Sequence[str]) -> list[str]:
    defaults = ["green", "magenta", "cyan", "yellow", "red", "blue"]
    return [_COLORMAPS.get(n.lower(), defaults[i % len(defaults)]) for i, n in enumerate(names)]
