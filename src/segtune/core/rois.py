"""2D label images to ImageJ / Fiji ROIs: each object's outline along its pixel edges, as a ROI zip.

The outline of an object is traced along the edges of its pixels (the polygon Fiji's wand tool
makes, ROI type *traced*), so filling the polygon gives back exactly the object's pixels: a
pixel belongs to the object when its centre lies inside the polygon. Holes are filled (an ROI
has one outline); an object made of several pieces gives one ROI per 8-connected piece, named
``label_0007``, ``label_0007-2`` ... Writing needs the ``roifile`` package (part of the
``napari`` extra).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from segtune.core.files import atomic_write, check_output
from segtune.core.labels import as_labels, connected_components, is_binary

logger = logging.getLogger(__name__)

__all__ = ["label_outlines", "polygon_mask", "read_imagej_rois", "write_imagej_rois"]

# moves along pixel edges, as (drow, dcol); index order is clockwise on screen (y down)
_RIGHT, _DOWN, _LEFT, _UP = (0, 1), (1, 0), (0, -1), (-1, 0)
_DIRECTIONS = (_RIGHT, _DOWN, _LEFT, _UP)


def _boundary_edges(mask: np.ndarray) -> dict[tuple[int, int], list[int]]:
    """Directed pixel-edge segments around ``mask`` (object on the walker's right), by start corner."""
    padded = np.pad(mask, 1)
    inner = padded[1:-1, 1:-1]
    outgoing: dict[tuple[int, int], list[int]] = {}
    # (neighbour offset, start corner offset, direction index)
    sides = (((-1, 0), (0, 0), 0), ((0, 1), (0, 1), 1), ((1, 0), (1, 1), 2), ((0, -1), (1, 0), 3))
    for (dr, dc), (sr, sc), direction in sides:
        neighbour = padded[1 + dr : padded.shape[0] - 1 + dr, 1 + dc : padded.shape[1] - 1 + dc]
        rows, cols = np.nonzero(inner & ~neighbour)
        for r, c in zip((rows + sr).tolist(), (cols + sc).tolist(), strict=True):
            outgoing.setdefault((r, c), []).append(direction)
    return outgoing


def _trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines (corner coordinates, row/col) of a 2D bool mask; 8-connected pieces join."""
    outgoing = _boundary_edges(mask)
    loops = []
    while outgoing:
        start = min(outgoing)  # the top-left corner: on an outer outline, never a pinch point
        vertex, direction = start, outgoing[start][0]
        corners = []
        while True:
            options = outgoing[vertex]
            # where two pieces touch at a corner, turning left keeps them one object (8-connectivity)
            for turn in (3, 0, 1):
                candidate = (direction + turn) % 4
                if candidate in options:
                    direction = candidate
                    break
            options.remove(direction)
            if not options:
                del outgoing[vertex]
            corners.append((vertex, direction))
            dr, dc = _DIRECTIONS[direction]
            vertex = (vertex[0] + dr, vertex[1] + dc)
            # the start (top-left corner) never joins two pieces, so reaching it closes the loop
            if vertex == start:
                break
        # keep only the corners where the direction changes
        points = [v for i, (v, d) in enumerate(corners) if d != corners[i - 1][1]]
        loops.append(np.asarray(points, dtype=np.int64))
    return loops


def label_outlines(labels: Any) -> list[tuple[int, np.ndarray]]:
    """The outline of every object of a 2D label image.

    Parameters
    ----------
    labels
        2D instance labels, or a binary mask (its connected components are the objects).

    Returns
    -------
    list of (label, polygon)
        ``polygon`` is an (n, 2) int array of pixel-corner coordinates as (x, y) = (column,
        row), clockwise on screen, without repeating the first point. Sorted by label; an
        object in several pieces appears once per piece.
    """
    array = as_labels(labels, "labels")
    if array.ndim != 2:
        raise ValueError(f"ImageJ ROIs are made from 2D labels, got shape {array.shape}; export each plane")
    if array.size and is_binary(array):
        array = connected_components(array)[0]
    outlines: list[tuple[int, np.ndarray]] = []
    for index, box in enumerate(ndi.find_objects(array)):
        if box is None:
            continue
        label = index + 1
        mask = ndi.binary_fill_holes(array[box] == label)
        for loop in _trace_loops(mask):
            points = loop + np.array([box[0].start, box[1].start])
            outlines.append((label, points[:, ::-1].copy()))
    return outlines


def polygon_mask(polygon: Any, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centres lie inside ``polygon`` ((x, y) corner coordinates): the inverse of tracing."""
    from skimage.draw import polygon2mask

    points = np.asarray(polygon, dtype=np.float64)[:, ::-1] - 0.5  # pixel centres sit at integers
    return polygon2mask(shape, points)


def write_imagej_rois(path: str | os.PathLike, labels: Any, *, overwrite: bool = False) -> Path:
    """Write one ImageJ ROI per object of a 2D label image into a ``.zip`` (Fiji's ROI Manager opens it).

    Parameters
    ----------
    path
        Destination ``.zip``.
    labels
        2D instance labels or binary mask.
    overwrite
        Replace an existing file; otherwise an existing file raises FileExistsError.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    ValueError
        ``labels`` is not 2D, or there are no objects.
    ImportError
        ``roifile`` is not installed.
    """
    try:
        from roifile import ROI_TYPE, ImagejRoi, roiwrite
    except ImportError as e:  # pragma: no cover - roifile comes with the napari extra
        raise ImportError("writing ImageJ ROIs needs the roifile package: pip install roifile") from e

    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ValueError(f"ROI file {path} must end in .zip")
    check_output(path, overwrite)
    outlines = label_outlines(labels)
    if not outlines:
        raise ValueError("the labels hold no objects: there are no ROIs to write")
    rois = []
    seen: dict[int, int] = {}
    for label, polygon in outlines:
        seen[label] = seen.get(label, 0) + 1
        name = f"label_{label:04d}" + (f"-{seen[label]}" if seen[label] > 1 else "")
        roi = ImagejRoi.frompoints(polygon, name=name)
        roi.roitype = ROI_TYPE.TRACED
        # a traced outline's bounds run to the last corner (its pixels end there)
        roi.right = int(polygon[:, 0].max())
        roi.bottom = int(polygon[:, 1].max())
        rois.append(roi)
    return atomic_write(path, lambda temporary: roiwrite(temporary, rois, mode="w"), overwrite=overwrite)


def read_imagej_rois(path: str | os.PathLike, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise the ROIs of a file written by :func:`write_imagej_rois` back into instance labels.

    The label of each ROI comes from its name (``label_0007`` -> 7); used to check a round trip.
    """
    from roifile import roiread

    rois = roiread(str(path))
    rois = rois if isinstance(rois, list) else [rois]
    out = np.zeros(shape, dtype=np.uint32)
    for roi in rois:
        label = int(roi.name.split("_")[1].split("-")[0])
        out[polygon_mask(roi.coordinates(), shape)] = label
    return out
