"""Reading label images, and writing them safely as TIFF (OME pixel sizes, no silent overwrite)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segtune.core.files import atomic_write, check_output, ome_metadata
from segtune.core.io.image import (
    LABELS_SOFTWARE,
    TIFF_EXTENSIONS,
    ImageReadError,
    PhysicalPixelSizes,
)

__all__ = ["output_name", "read_labels", "write_labels"]


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image into memory, squeezed to its spatial (and time) axes.

    A label file written by :func:`write_labels` reads back identical. Raises
    :class:`ImageReadError` like :func:`open_image`.
    """
    from segtune.core.io import open_image  # the package front door (it imports this module)

    image = open_image(path)
    data = image.data
    if data.shape[1] != 1:
        raise ImageReadError(path, f"a label image must have one channel, this one has {data.shape[1]}")
    return np.asarray(data[:, 0].compute()).squeeze()


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    pixel_sizes: PhysicalPixelSizes | Sequence[float | None] | None = None,
    overwrite: bool = False,
    *,
    axes: str | None = None,
    dtype: np.dtype | type | None = None,
) -> Path:
    """Write a label image as OME-TIFF, atomically, never replacing a file unless asked.

    Parameters
    ----------
    path
        Destination ``.tif``/``.tiff``/``.ome.tif``.
    labels
        Integer array with spatial axes last: YX, ZYX or TZYX (``axes`` overrides the guess).
        Stored as uint8 when it fits, else uint16, else uint32.
    pixel_sizes
        (Z, Y, X) in micrometres, entries may be None.
    overwrite
        Replace an existing file. Without it an existing file raises :class:`FileExistsError`.
    axes
        The axes of ``labels`` (``"YX"``, ``"ZYX"``, ``"TZYX"``, ...); guessed from its rank.
    dtype
        Store in this unsigned integer type (e.g. uint16 for instance labels, whatever their
        count); by default the smallest of uint8/16/32 that holds the largest label.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False (also when another writer creates it first).
    OutputError
        ``path`` is a folder, or the disk refused (read-only, permission, full); an ``OSError``.
    ValueError
        ``labels`` is empty, not an integer or boolean array, or has an unsupported number of axes.
    """
    import tifffile

    path = Path(path)
    if not path.name.lower().endswith(TIFF_EXTENSIONS):
        raise ValueError(f"label file {path} must end in .tif, .tiff or .ome.tif")
    check_output(path, overwrite)
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"labels are empty (shape {labels.shape}); there is nothing to write to {path}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be an integer or boolean array, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"labels must not be negative (minimum is {labels.min()})")
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}.get(labels.ndim)
        if axes is None:
            raise ValueError(f"labels must have 2 to 5 axes (YX ... TCZYX), got shape {labels.shape}")
    if len(axes) != labels.ndim:
        raise ValueError(f"axes {axes!r} do not match labels of shape {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if dtype is None:
        dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    dtype = np.dtype(dtype)
    if dtype.kind != "u" or top > np.iinfo(dtype).max:
        raise ValueError(f"labels up to {top} cannot be stored as {dtype}; use an unsigned type that holds them")
    labels = labels.astype(dtype, copy=False)

    metadata = ome_metadata(axes, pixel_sizes)
    return atomic_write(
        path,
        lambda temporary: tifffile.imwrite(
            temporary, labels, ome=True, metadata=metadata, compression="zlib", software=LABELS_SOFTWARE
        ),
        overwrite=overwrite,
    )


def output_name(input_path: str | os.PathLike, suffix: str = "_labels", extension: str = ".tif") -> str:
    """``cells.ome.tif`` -> ``cells_labels.tif``: the name outputs take after their input."""
    name = Path(input_path).name
    stem = re.sub(r"(\.ome)?\.(tiff?|czi|png|jpe?g|zarr)$", "", name, flags=re.IGNORECASE)
    return f"{stem}{suffix}{extension}"
