"""napari writer: a Labels layer to OME-TIFF with its pixel sizes (from the layer's scale)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segtune.core.io import write_labels


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer; returns the written path.

    napari's save dialog has already asked before replacing an existing file, so an
    existing file is replaced here.
    """
    labels = np.asarray(data)
    return [str(write_labels(path, labels, pixel_sizes_from_scale(meta.get("scale"), labels.ndim), overwrite=True))]


def pixel_sizes_from_scale(scale: Any, ndim: int) -> tuple[float | None, float | None, float | None]:
    """(Z, Y, X) pixel sizes from a layer's scale; None where the layer has no physical scale.

    A layer whose scale is all ones was never given pixel sizes, so none are written.
    """
    if scale is None:
        return (None, None, None)
    scale = [float(s) for s in scale][-min(ndim, 3) :]
    if all(s == 1.0 for s in scale):
        return (None, None, None)
    padded = [None] * (3 - len(scale)) + scale
    return (padded[0], padded[1], padded[2])
