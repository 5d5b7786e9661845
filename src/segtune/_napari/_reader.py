"""napari reader: CZI, TIFF, OME-TIFF, PNG and OME-Zarr through ``segtune.core.io.open_image``.

Layers stay lazy (dask), one image layer per channel, scaled in micrometres from the file's
pixel sizes and named after the file's channels. An OME-Zarr labels image (``image-label``)
opens as a Labels layer, and an OME-Zarr image brings the labels of its ``labels/`` group with it. A file that cannot be read raises
``ImageReadError`` naming the file, which napari shows as an error notification.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segtune.core.io import SUPPORTED_EXTENSIONS, ImageData, open_image
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
        if image.metadata.get("is_labels"):
            layers.append(labels_layer(image))
            continue
        layers.extend(image_layers(image))
        if image.metadata.get("format") == "ome-zarr":
            layers.extend(labels_layer(open_image(folder)) for folder in _ngff_labels(p))
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


def labels_layer(image: ImageData) -> LayerData:
    """A Labels layer for a labels image (one channel), lazy, at the image's scale."""
    data = image.data[:, 0]
    index = tuple(0 if n == 1 and axis in "TZ" else slice(None) for axis, n in zip("TZ", data.shape[:2], strict=True))
    pz, py, px = (s if s is not None else 1.0 for s in image.physical_pixel_sizes)
    scale = [float(s) for s, keep in zip((1.0, pz), index, strict=True) if keep != 0] + [float(py), float(px)]
    meta = {
        "name": image.path.name,
        "scale": scale,
        "units": "um" if image.physical_pixel_sizes.Y is not None else "pixel",
        "metadata": {"segtune_path": str(image.path), "physical_pixel_sizes": tuple(image.physical_pixel_sizes)},
    }
    return (data[index], meta, "labels")


def image_layers(image: ImageData) -> list[LayerData]:
    """Layer data for an opened image: TCZYX with singleton T and Z dropped, channels split."""
    data = image.data
    sizes = image.sizes()
    pz, py, px = (s if s is not None else 1.0 for s in image.physical_pixel_sizes)
    index: list[Any] = []
    scale: list[float] = []
    axis_labels: list[str] = []
    for axis, step in (("T", 1.0), ("C", None), ("Z", pz), ("Y", py), ("X", px)):
        if axis in "TZ" and sizes[axis] == 1:
            index.append(0)
            continue
        index.append(slice(None))
        if step is not None:
            scale.append(float(step))
            axis_labels.append(axis.lower())
    data = data[tuple(index)]
    n_channels = sizes["C"]
    meta: dict[str, Any] = {
        "scale": scale,
        "units": "um" if image.physical_pixel_sizes.Y is not None else "pixel",
        "metadata": {
            "segtune_path": str(image.path),
            "segtune_scene": image.scene,
            "physical_pixel_sizes": tuple(image.physical_pixel_sizes),
        },
        "contrast_limits": _contrast_limits(image),
    }
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


def _contrast_limits(image: ImageData) -> list[list[float]]:
    """Contrast from the middle plane of each channel, so opening a big file reads one plane each."""
    sizes = image.sizes()
    limits = []
    for c in range(sizes["C"]):
        values = image.plane(t=0, c=c, z=sizes["Z"] // 2)
        lo, hi = np.percentile(values, [0.1, 99.9]) if values.size else (0.0, 1.0)
        limits.append([float(lo), float(hi if hi > lo else lo + 1)])
    return limits


_COLORMAPS = {"dapi": "blue", "hoechst": "blue", "gfp": "green", "egfp": "green", "led470": "green", "led555": "magenta", "red": "red", "green": "green", "blue": "blue"}


def _channel_colormaps(names: Sequence[str]) -> list[str]:
    defaults = ["green", "magenta", "cyan", "yellow", "red", "blue"]
    return [_COLORMAPS.get(n.lower(), defaults[i % len(defaults)]) for i, n in enumerate(names)]
