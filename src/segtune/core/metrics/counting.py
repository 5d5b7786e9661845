"""Counting objects per plane and time point."""

from __future__ import annotations

from typing import Any

import numpy as np

from segtune.core.labels import as_labels, connected_components, label_axes

__all__ = ["count_objects"]


def count_objects(
    labels: Any,
    *,
    axes: str | None = None,
    per_plane: bool = True,
    typical_size: float | None = None,
) -> list[dict[str, Any]]:
    """Count objects per plane (or per volume) and per time point, two ways.

    ``components`` is the number of connected components of the foreground (full
    connectivity). ``estimate`` is the area-based count ``foreground / typical_size``, which
    counts a clump of touching objects as several: ``typical_size`` is the median size of the
    connected components over the whole input (every plane and time point pooled) unless given.
    ``labels`` is the number of distinct non-zero ids (equal to ``components`` for a binary
    mask of separate objects; the object count of an instance image).

    Parameters
    ----------
    labels
        Binary or instance labels with axes ``axes``.
    axes
        ``"YX"``, ``"ZYX"``, ``"TYX"`` or ``"TZYX"``; by default ``YX``, ``ZYX`` or ``TZYX``
        from the number of dimensions.
    per_plane
        Count each YX plane on its own (2D components, sizes in pixels). False counts each ZYX
        volume as one (3D components, sizes in voxels); it makes no difference without Z.
    typical_size
        Typical object area (2D) or volume (3D) in pixels for the estimate.

    Returns
    -------
    list of dict
        One row per plane / volume: ``{"t": int or None, "z": int or None, "components": int,
        "labels": int, "foreground": int (pixels), "typical_size": float, "estimate": float}``.
        ``estimate`` is 0.0 when no typical size can be found (no objects anywhere).

    Examples
    --------
    >>> mask = np.zeros((10, 10), bool); mask[1:3, 1:3] = True; mask[5:9, 5:7] = True
    >>> row = count_objects(mask)[0]
    >>> row["components"], row["typical_size"], row["estimate"]
    (2, 6.0, 2.0)
    """
    array = as_labels(labels, "labels")
    axes = label_axes(array, axes)
    if typical_size is not None and not typical_size > 0:
        raise ValueError(f"`typical_size` must be positive, got {typical_size}")
    if "T" not in axes:
        array = array[np.newaxis]
    if "Z" not in axes:
        array = array[:, np.newaxis]
    has_t, has_z = "T" in axes, "Z" in axes

    units: list[tuple[int | None, int | None, np.ndarray]] = []
    for t in range(array.shape[0]):
        if per_plane or not has_z:
            for z in range(array.shape[1]):
                units.append((t if has_t else None, z if has_z else None, array[t, z]))
        else:
            units.append((t if has_t else None, None, array[t]))

    rows, sizes = [], []
    for t, z, unit in units:
        components, n = connected_components(unit)
        ids = np.unique(unit)
        area = np.bincount(components.ravel())[1:]
        sizes.append(area)
        rows.append(
            {
                "t": t,
                "z": z,
                "components": n,
                "labels": int(np.count_nonzero(ids)),
                "foreground": int(area.sum()),
            }
        )
    typical = float(typical_size) if typical_size is not None else None
    if typical is None:
        pooled = np.concatenate(sizes)
        typical = float(np.median(pooled)) if pooled.size else 0.0
    for row in rows:
        row["typical_size"] = typical
        row["estimate"] = row["foreground"] / typical if typical > 0 else 0.0
    return rows
