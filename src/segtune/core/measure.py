"""Per-object measurements (position, size, shape, intensity) in physical units, as a table.

:func:`measure` turns a label image into one row per object: centroid in pixels and in
micrometres, area (2D objects) or volume (3D objects), equivalent diameter, bounding box, and
mean / maximum / integrated intensity of every channel of an image. Stacks are measured per time
point, and either as 3D objects or plane by plane. :func:`save_table` writes the table to CSV
without ever leaving a half-written file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from segtune.core.labels import as_labels, connected_components, is_binary, label_axes

logger = logging.getLogger(__name__)

__all__ = ["class_instances", "measure", "pair_objects", "save_table"]


def _channel_axis(axes: str) -> int:
    """Where the channel axis of the image sits for labels with ``axes`` (as C sits in TCZYX)."""
    return 1 if axes.startswith("T") else 0


def _column_names(channel_names: Sequence[str] | None, n: int) -> list[str]:
    if channel_names is None:
        channel_names = [f"ch{i}" for i in range(n)]
    channel_names = [str(c) for c in channel_names]
    if len(channel_names) != n:
        raise ValueError(f"{len(channel_names)} `channel_names` {channel_names} for an image with {n} channel(s)")
    out: list[str] = []
    for i, name in enumerate(channel_names):
        safe = re.sub(r"\W+", "_", name).strip("_") or f"ch{i}"
        while safe in out:
            safe = f"{safe}_{i}"
        out.append(safe)
    return out


def _sizes(pixel_sizes: Any) -> tuple[float | None, float | None, float | None]:
    if pixel_sizes is None:
        return (None, None, None)
    values = tuple(pixel_sizes)
    if len(values) != 3:
        raise ValueError(f"`pixel_sizes` must be (Z, Y, X) with None where unknown, got {pixel_sizes!r}")
    out = []
    for axis, value in zip("ZYX", values, strict=True):
        if value is None:
            out.append(None)
            continue
        value = float(value)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"pixel size along {axis} must be positive, got {value}")
        out.append(value)
    return out[0], out[1], out[2]


def _columns(spatial: str, time: bool, plane: bool, names: list[str]) -> list[str]:
    columns = ["label"]
    if time:
        columns.append("t")
    if plane:
        columns.append("z")
    axes = spatial.lower()
    columns += [f"centroid_{a}_px" for a in axes]
    columns += [f"centroid_{a}" for a in axes]
    columns += ["volume" if len(spatial) == 3 else "area", "equivalent_diameter", "unit", "n_pixels"]
    columns += [f"bbox_min_{a}" for a in axes] + [f"bbox_max_{a}" for a in axes]
    for name in names:
        columns += [f"mean_intensity_{name}", f"max_intensity_{name}", f"integrated_intensity_{name}"]
    return columns


def _measure_unit(
    labels: np.ndarray,
    image: np.ndarray | None,
    spatial: str,
    sizes: tuple[float, ...] | None,
    names: list[str],
) -> dict[str, np.ndarray]:
    """Measure the objects of one 2D plane or 3D volume; ``image`` is (C, *spatial) or None."""
    from skimage.measure import regionprops_table

    ndim = len(spatial)
    axes = spatial.lower()
    props = regionprops_table(labels, properties=("label", "area", "centroid", "bbox"))
    ids = np.asarray(props["label"], dtype=np.int64)
    n_pixels = np.asarray(props["area"], dtype=np.int64)
    scale = np.ones(ndim) if sizes is None else np.asarray(sizes, dtype=float)
    out: dict[str, np.ndarray] = {"label": ids}
    for i, a in enumerate(axes):
        out[f"centroid_{a}_px"] = np.asarray(props[f"centroid-{i}"], dtype=float)
    for i, a in enumerate(axes):
        out[f"centroid_{a}"] = out[f"centroid_{a}_px"] * scale[i]
    size = n_pixels * float(np.prod(scale))
    if ndim == 3:
        out["volume"] = size
        out["equivalent_diameter"] = np.cbrt(6.0 * size / np.pi)
    else:
        out["area"] = size
        out["equivalent_diameter"] = 2.0 * np.sqrt(size / np.pi)
    out["unit"] = np.full(ids.size, "px" if sizes is None else "um", dtype=object)
    out["n_pixels"] = n_pixels
    for i, a in enumerate(axes):
        out[f"bbox_min_{a}"] = np.asarray(props[f"bbox-{i}"], dtype=np.int64)
    for i, a in enumerate(axes):
        out[f"bbox_max_{a}"] = np.asarray(props[f"bbox-{i + ndim}"], dtype=np.int64)
    if image is not None:
        for channel, name in zip(image, names, strict=True):
            if ids.size:
                total = np.asarray(ndimage.sum_labels(channel.astype(np.float64), labels, ids), dtype=float)
                top = np.asarray(ndimage.maximum(channel, labels, ids), dtype=float)
            else:
                total = top = np.zeros(0)
            out[f"mean_intensity_{name}"] = total / np.maximum(n_pixels, 1)
            out[f"max_intensity_{name}"] = top
            out[f"integrated_intensity_{name}"] = total
    return out


def measure(
    labels: Any,
    image: Any = None,
    pixel_sizes: Any = None,
    channel_names: Sequence[str] | None = None,
    per_plane: bool = False,
    *,
    axes: str | None = None,
) -> pd.DataFrame:
    """Measure every object of a label image; one row per object (per time point / plane).

    Parameters
    ----------
    labels
        Instance labels (each non-zero id one object, ids kept) or a binary mask (bool, or
        every non-zero pixel 1, or every one 255: its objects are the connected components,
        8- / 26-connected, numbered 1..n in scan order in each plane / volume measured).
    image
        Optional intensities. Either the shape of ``labels`` (one channel) or with a channel
        axis where C sits in TCZYX: ``CYX`` for YX labels, ``CZYX`` for ZYX, ``TCYX`` for TYX,
        ``TCZYX`` for TZYX. numpy or dask (read one time point at a time).
    pixel_sizes
        (Z, Y, X) in micrometres, None where unknown (e.g. ``ImageData.physical_pixel_sizes``).
        Physical columns are in micrometres when every size the objects need is known (Y and X
        for 2D objects, Z too for 3D objects); otherwise they are in pixels and ``unit`` says
        ``"px"``.
    channel_names
        One name per channel for the intensity columns (made safe for column names: runs of
        characters other than letters, digits and ``_`` become ``_``); ``ch0, ch1, ...`` if None.
    per_plane
        For labels with a Z axis: measure each YX plane on its own as 2D objects (for labels
        predicted plane by plane, where the same id in two planes is two objects) and add a
        ``z`` column. The default measures 3D objects.
    axes
        Axes of ``labels``: ``"YX"``, ``"ZYX"``, ``"TYX"`` or ``"TZYX"``; from the number of
        dimensions (YX, ZYX, TZYX) if None.

    Returns
    -------
    pandas.DataFrame
        Columns, for 2D objects (3D objects add ``z`` versions of each axis column and have
        ``volume`` in place of ``area``):

        - ``label``; ``t`` (time index, for stacks with T); ``z`` (plane, with ``per_plane``)
        - ``centroid_y_px``, ``centroid_x_px``: centroid in pixels (within the plane / volume)
        - ``centroid_y``, ``centroid_x``: the same in ``unit``
        - ``area`` (``unit``\\ :sup:`2`) or ``volume`` (``unit``\\ :sup:`3`)
        - ``equivalent_diameter``: of the disc (sphere) of that area (volume), in ``unit``
        - ``unit``: ``"um"`` or ``"px"``; ``n_pixels``: pixel (voxel) count
        - ``bbox_min_y``, ``bbox_min_x``, ``bbox_max_y``, ``bbox_max_x``: pixel bounding box,
          max exclusive (``labels[min_y:max_y, min_x:max_x]`` holds the object)
        - per channel ``NAME``: ``mean_intensity_NAME``, ``max_intensity_NAME``,
          ``integrated_intensity_NAME`` (sum of the pixel values; raw values, not area-weighted)

    Raises
    ------
    ValueError
        ``labels`` is not an integer/bool array, ``axes`` does not fit it, ``image`` has a
        shape that fits neither layout, or ``channel_names`` has the wrong length.

    Examples
    --------
    >>> labels = np.zeros((10, 10), np.uint16); labels[2:6, 2:6] = 7
    >>> table = measure(labels, pixel_sizes=(None, 0.5, 0.5))
    >>> table[["label", "area", "unit", "centroid_y_px", "centroid_y"]].values.tolist()
    [[7, 4.0, 'um', 3.5, 1.75]]
    """
    labels = as_labels(labels, "labels")
    axes = label_axes(labels, axes)
    has_t, has_z = axes.startswith("T"), "Z" in axes
    per_plane = bool(per_plane and has_z)
    binary = labels.size > 0 and is_binary(labels)

    # image to (T, C, *spatial-of-labels-without-T)
    c_axis = _channel_axis(axes)
    if image is not None:
        shape = tuple(int(s) for s in image.shape)
        if shape == labels.shape:
            image = image[(slice(None),) * c_axis + (np.newaxis,)]
        elif not (len(shape) == labels.ndim + 1 and shape[:c_axis] + shape[c_axis + 1 :] == labels.shape):
            layout = axes[:c_axis] + "C" + axes[c_axis:]
            raise ValueError(
                f"`image` shape {shape} fits neither `labels` shape {labels.shape} nor the layout "
                f"{layout} with a channel axis"
            )
        if not has_t:
            image = image[np.newaxis]
        n_channels = int(image.shape[1])
        names = _column_names(channel_names, n_channels)
    else:
        names = []
    stack = labels if has_t else labels[np.newaxis]

    z, y, x = _sizes(pixel_sizes)
    spatial_3d = "ZYX" if has_z and not per_plane else "YX"
    needed = (z, y, x) if spatial_3d == "ZYX" else (y, x)
    sizes = None if any(s is None for s in needed) else tuple(float(s) for s in needed)  # type: ignore[arg-type]
    if sizes is None and pixel_sizes is not None:
        logger.info("pixel sizes %s do not give every %s size: measuring in pixels", pixel_sizes, spatial_3d)

    columns = _columns(spatial_3d, has_t, per_plane, names)
    parts: list[pd.DataFrame] = []
    for t in range(stack.shape[0]):
        volume = stack[t]
        intensities = None if image is None else np.asarray(image[t])
        planes = range(volume.shape[0]) if per_plane else [None]
        for plane in planes:
            unit = volume if plane is None else volume[plane]
            unit_image = None
            if intensities is not None:
                unit_image = intensities if plane is None else intensities[:, plane]
            if binary:
                unit = connected_components(unit)[0]
            result = _measure_unit(unit, unit_image, spatial_3d, sizes, names)
            n = result["label"].size
            if has_t:
                result["t"] = np.full(n, t, dtype=np.int64)
            if plane is not None:
                result["z"] = np.full(n, plane, dtype=np.int64)
            parts.append(pd.DataFrame({c: result[c] for c in columns}))
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)


def class_instances(
    flags: Any,
    n_classes: int,
    *,
    min_size: int = 0,
    split: Sequence[int] = (),
    min_distance: int = 4,
    sampling: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """The objects of each class of a multilabel mask, as one instance-label image per class.

    Parameters
    ----------
    flags
        Class flags (bit k set where class k is present), as a multilabel model predicts them
        (``segtune predict`` with a multilabel head) and as multilabel training reads them.
    n_classes
        Number of classes (bits) to read.
    min_size
        Objects with fewer pixels are dropped.
    split, min_distance, sampling
        Classes whose touching objects are split by a distance-transform watershed (seeds at
        least ``min_distance`` pixels apart, ``sampling`` the pixel spacing per axis), e.g. the
        nuclei, which a mask joins where they touch.

    Returns
    -------
    list of numpy.ndarray
        ``n_classes`` int32 label images: the connected components (8- / 26-connected) of each class.
    """
    from segtune.core.postprocess import filter_sizes, label_components, split_touching

    flags = np.asarray(flags).astype(np.int64)
    out = []
    for k in range(int(n_classes)):
        mask = (flags >> k) & 1
        labels = (
            split_touching(mask, min_distance=min_distance, sampling=sampling) if k in split else label_components(mask)
        )
        if min_size > 0:
            labels = filter_sizes(labels, min_size)
        out.append(labels.astype(np.int32))
    return out


def pair_objects(
    labels: Any, partners: Any, pixel_sizes: Any = None, *, max_distance: float | None = None
) -> pd.DataFrame:
    """Pair each object with at most one partner object (e.g. each nucleus with its Golgi), one to one.

    The distance of a partner to an object is from the partner's centroid to the object's
    nearest surface pixel (a Golgi sits beside its own nucleus even when a larger neighbour's
    centre is nearer); pairs minimise the total distance (Hungarian assignment), and a partner
    farther than ``max_distance`` from an object's surface is not paired with it. Vectors run
    from centroid to centroid.

    Parameters
    ----------
    labels, partners
        Instance labels of the same shape (2D or 3D), e.g. nuclei and Golgi.
    pixel_sizes
        (Z, Y, X) in micrometres (None where unknown): vectors and distances are in micrometres
        when every size needed is known, else in pixels.
    max_distance
        Longest partner-centroid-to-surface distance of a pair, in the unit of the vectors (None: no limit).

    Returns
    -------
    pandas.DataFrame
        One row per object of ``labels``: ``label``, ``partner`` (its partner's id, 0 if
        unpaired), ``vector_z`` (3D), ``vector_y``, ``vector_x`` (partner centroid minus object
        centroid; NaN if unpaired), ``pair_distance`` and ``pair_unit`` (``"um"`` or ``"px"``).

    Examples
    --------
    >>> nuclei = np.zeros((9, 9), int); nuclei[1:4, 1:4] = 1; nuclei[5:8, 5:8] = 2
    >>> golgi = np.zeros((9, 9), int); golgi[2, 5] = 7
    >>> pair_objects(nuclei, golgi)[["label", "partner"]].values.tolist()
    [[1, 7], [2, 0]]
    """
    from scipy.optimize import linear_sum_assignment

    labels, partners = np.asarray(labels), np.asarray(partners)
    if labels.shape != partners.shape:
        raise ValueError(f"`partners` (shape {partners.shape}) must have the shape of `labels` (shape {labels.shape})")
    if labels.ndim not in (2, 3):
        raise ValueError(f"labels must be 2D or 3D instance labels, got shape {labels.shape}")
    sizes = _sizes(pixel_sizes)[-labels.ndim :]
    unit = "um" if all(v is not None for v in sizes) else "px"
    factor = np.array([v if unit == "um" else 1.0 for v in sizes])

    def centroids(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.unique(array[array > 0])
        if not ids.size:
            return ids, np.zeros((0, array.ndim))
        return ids, np.array(ndimage.center_of_mass(np.ones(array.shape), array, ids)).reshape(len(ids), -1) * factor

    ids, centres = centroids(labels)
    partner_ids, partner_centres = centroids(partners)
    vectors = np.full((len(ids), labels.ndim), np.nan)
    matched = np.zeros(len(ids), np.int64)
    if len(ids) and len(partner_ids):
        distance = _surface_distances(labels, ids, partner_centres, factor)
        limit = np.inf if max_distance is None else float(max_distance)
        rows, cols = linear_sum_assignment(np.where(distance <= limit, distance, 1e12))
        for r, c in zip(rows, cols, strict=True):
            if distance[r, c] <= limit:
                matched[r] = partner_ids[c]
                vectors[r] = partner_centres[c] - centres[r]
    columns = {"label": ids.astype(np.int64), "partner": matched}
    for axis, values in zip("zyx"[-labels.ndim :], vectors.T, strict=True):
        columns[f"vector_{axis}"] = values
    columns["pair_distance"] = np.linalg.norm(vectors, axis=1)
    columns["pair_unit"] = [unit] * len(ids)
    return pd.DataFrame(columns)


def _surface_distances(labels: np.ndarray, ids: np.ndarray, points: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """``(len(ids), len(points))``: distance from each point to the nearest surface pixel of each object."""
    from skimage.segmentation import find_boundaries

    surface = find_boundaries(labels, mode="inner") & (labels > 0)
    coords = np.argwhere(surface)
    owner = labels[surface]
    order = np.argsort(owner, kind="stable")
    coords, owner = coords[order] * factor, owner[order]
    starts = np.searchsorted(owner, ids)
    out = np.empty((len(ids), len(points)))
    for j in range(0, len(points), 64):  # bounded memory: 64 points against every surface pixel
        block = np.linalg.norm(coords[:, None] - points[None, j : j + 64], axis=-1)
        out[:, j : j + 64] = np.minimum.reduceat(block, starts, axis=0)
    return out


def save_table(df: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a table to CSV atomically (a temporary file renamed into place).

    Parameters
    ----------
    df
        The table, e.g. from :func:`measure`.
    path
        Destination; ``.csv`` (comma-separated) or ``.tsv`` (tab-separated).
    overwrite
        Replace an existing file; otherwise an existing file raises FileExistsError.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".tsv"):
        raise ValueError(f"table file {path} must end in .csv or .tsv")
    from segtune.core.files import atomic_write

    sep = "\t" if suffix == ".tsv" else ","
    return atomic_write(path, lambda temporary: df.to_csv(temporary, index=False, sep=sep), overwrite=overwrite)
