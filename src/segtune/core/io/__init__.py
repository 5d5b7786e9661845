"""Reading microscopy images lazily as TCZYX dask arrays, and writing label images safely.

CZI goes through bioio + bioio-czi (mosaics are stitched), TIFF and OME-TIFF through tifffile's
zarr store (nothing is read until a chunk is computed), PNG/JPEG through imageio. Every reader
returns the same :class:`ImageData`; every failure to read is an :class:`ImageReadError` that
names the file and says what is wrong.

The package: :mod:`.image` (what every reader returns, shared helpers), :mod:`.czi`,
:mod:`.tiff` (with pixel sizes from OME-XML or resolution tags), :mod:`.plain` (PNG/JPEG),
:mod:`.label_files` (reading and writing label images). Every public name is importable from
``segtune.core.io``.
"""

from __future__ import annotations

import os
from pathlib import Path

from segtune.core.io.czi import open_czi
from segtune.core.io.image import (
    DIMS,
    LABELS_SOFTWARE,
    PLAIN_EXTENSIONS,
    SAMPLE_NAMES,
    SUPPORTED_EXTENSIONS,
    TIFF_EXTENSIONS,
    ImageData,
    ImageReadError,
    PhysicalPixelSizes,
    guarded_array,
    pick_scene,
    sample_group,
)
from segtune.core.io.label_files import output_name, read_labels, write_labels
from segtune.core.io.plain import open_plain
from segtune.core.io.tiff import open_tiff

__all__ = [
    "DIMS",
    "LABELS_SOFTWARE",
    "PLAIN_EXTENSIONS",
    "SAMPLE_NAMES",
    "SUPPORTED_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "ImageData",
    "ImageReadError",
    "PhysicalPixelSizes",
    "guarded_array",
    "open_image",
    "output_name",
    "pick_scene",
    "read_labels",
    "sample_group",
    "write_labels",
]


def open_image(path: str | os.PathLike, scene: int | str | None = None) -> ImageData:
    """Open an image file lazily as a TCZYX dask array with its metadata.

    Parameters
    ----------
    path
        A ``.czi``, ``.tif``/``.tiff``/``.ome.tif`` or ``.png``/``.jpg`` file, or an OME-Zarr
        folder (NGFF v0.4/v0.5; its full-resolution level, through ome-zarr-py).
    scene
        Scene (CZI) or series (TIFF) to open, by index or name; the first when None.

    Returns
    -------
    ImageData

    Raises
    ------
    ImageReadError
        The file is missing, has an unsupported extension, is truncated or corrupt, or has
        no such scene. The message names the file.

    Examples
    --------
    >>> img = open_image("cells.czi")                    # doctest: +SKIP
    >>> img.sizes(), img.physical_pixel_sizes            # doctest: +SKIP
    ({'T': 3, 'C': 2, 'Z': 5, 'Y': 170, 'X': 240}, PhysicalPixelSizes(Z=0.32, Y=0.09, X=0.09))
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    from segtune.core import omezarr

    if omezarr.is_ome_zarr(path):
        try:
            return omezarr.open_ome_zarr(path, scene)
        except ImageReadError:
            raise
        except Exception as e:
            raise ImageReadError(path, f"not a readable OME-Zarr ({type(e).__name__}: {e})") from e
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    kind = _kind(path)
    if kind is None:
        raise ImageReadError(
            path,
            f"unsupported extension {''.join(path.suffixes) or '(none)'!r}; "
            f"segtune reads {', '.join(SUPPORTED_EXTENSIONS)}",
        )
    if path.stat().st_size == 0:
        raise ImageReadError(path, "the file is empty")
    reader = {"czi": open_czi, "tiff": open_tiff, "plain": open_plain}[kind]
    try:
        return reader(path, scene)
    except ImageReadError:
        raise
    except Exception as e:  # every reader library has its own exceptions; name the file
        raise ImageReadError(path, f"{type(e).__name__}: {e}".strip()) from e


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".czi"):
        return "czi"
    if name.endswith(TIFF_EXTENSIONS):
        return "tiff"
    if name.endswith(PLAIN_EXTENSIONS):
        return "plain"
    return None
