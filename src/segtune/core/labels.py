"""The one labels toolkit: cleaning, editing and counting instance label images, 2D and 3D.

(One module, ~650 lines, on purpose: it is the single home of every labels operation that
prediction, metrics, measure, the Correct tab and `segtune clean` share; splitting it would
scatter that one vocabulary again.)

Every function takes an integer label image (0 background, objects by id) and returns a new one;
the input is never changed. Cleanup operations keep the ids of the objects they keep (so an
object the user is looking at keeps its colour in napari); :func:`relabel_sequential` renumbers
them 1..n when wanted. ``planewise=True`` applies an operation to each YX plane of a stack on
its own (objects of a 2D-per-plane segmentation), otherwise a 3D array is treated as one volume.

The same operations back the widget's Correct tab and ``segtune clean``. The checks and
conversions every consumer of labels shares live here too: :func:`as_labels` (a valid label
array or a message naming the argument), :func:`is_binary` (a mask, or instances?),
:func:`connected_components` (full connectivity by default: 8 neighbours in 2D, 26 in 3D;
``connectivity=1`` for face neighbours only, as :mod:`segtune.core.postprocess` labels) and
:func:`to_instances` (objects 1..n from a mask or an instance image).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "as_labels",
    "connected_components",
    "AREA_SHAPES",
    "delete_objects",
    "dilate",
    "erode",
    "fill_holes",
    "full_structure",
    "is_binary",
    "label_axes",
    "label_at",
    "mask_from_shapes",
    "merge_objects",
    "neighbourhood",
    "object_count",
    "object_sizes",
    "planes_of",
    "relabel_sequential",
    "remove_border",
    "remove_sizes",
    "remove_small",
    "smooth",
    "split_object",
    "split_objects",
    "to_instances",
    "stack_planes",
]


# --- checks and conversions shared by every consumer of labels --------------------------------


def as_labels(array: Any, name: str) -> np.ndarray:
    """``array`` as a non-negative integer (or bool) numpy array, or a ValueError naming ``name``."""
    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise ValueError(f"`{name}` must not hold negative labels (its minimum is {array.min()})")
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not np.all(np.isfinite(array)):
            raise ValueError(f"`{name}` holds NaN or infinite values; labels must be whole numbers")
        fractional = array != np.round(array)
        if np.any(fractional):
            example = float(array[fractional].flat[0])
            raise ValueError(
                f"`{name}` has non-integer values (e.g. {example:.4g}, dtype {array.dtype}); it looks "
                f"like probabilities or an image: threshold it first (e.g. `{name} > 0.5`) or label it"
            )
        if array.size and array.min() < 0:
            raise ValueError(f"`{name}` must not hold negative labels (its minimum is {array.min():g})")
        top = float(array.max()) if array.size else 0.0
        return array.astype(np.uint32 if top < 2**32 else np.uint64)
    raise ValueError(f"`{name}` must be a label image of integers or booleans, got dtype {array.dtype}")


# the layouts a label image can have: planes or volumes, possibly over time
LABEL_AXES = ("YX", "ZYX", "TYX", "TZYX")


def label_axes(labels: np.ndarray, axes: str | None) -> str:
    """The axes of ``labels`` (one of :data:`LABEL_AXES`): ``axes`` checked against its shape,
    or guessed from its rank (2: YX, 3: ZYX, 4: TZYX)."""
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(labels.ndim)
        if axes is None:
            raise ValueError(f"`labels` must be YX, ZYX or TZYX (or pass `axes`), got shape {labels.shape}")
    axes = axes.upper()
    if axes not in LABEL_AXES:
        raise ValueError(f"`axes` must be one of {LABEL_AXES}, got {axes!r}")
    if len(axes) != labels.ndim:
        raise ValueError(f"`axes` {axes!r} do not match `labels` of shape {labels.shape}")
    return axes


def full_structure(ndim: int) -> np.ndarray:
    """Full connectivity in ``ndim`` dimensions (pixels touching at a corner are neighbours)."""
    return np.ones((3,) * ndim, dtype=bool)


def neighbourhood(ndim: int, connectivity: int | None = None) -> np.ndarray:
    """The pixels that count as neighbours: ``connectivity`` 1 joins face neighbours only (4 in
    2D, 6 in 3D), ``ndim`` (the default, None) every neighbour (8 / 26)."""
    if connectivity is None:
        return full_structure(ndim)
    if not 1 <= int(connectivity) <= ndim:
        raise ValueError(f"connectivity must be between 1 and {ndim} for {ndim}D data, got {connectivity}")
    return ndi.generate_binary_structure(ndim, int(connectivity))


def connected_components(mask: Any, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Label the connected components of ``mask > 0``, with full connectivity unless told.

    Parameters
    ----------
    mask
        Binary or label array of any dimension (every non-zero pixel is foreground).
    connectivity
        See :func:`neighbourhood`: 1 for face neighbours only, None (default) for all.

    Returns
    -------
    labels : numpy.ndarray
        int32 array, components numbered 1..n.
    n : int
        Number of components.

    Examples
    --------
    >>> labels, n = connected_components(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]]))
    >>> n                                     # diagonal neighbours are one object
    1
    """
    mask = np.asarray(mask)
    structure = neighbourhood(mask.ndim, connectivity)
    labels, n = ndi.label(mask > 0 if mask.dtype != bool else mask, structure=structure)
    return labels, int(n)


def is_binary(labels: np.ndarray) -> bool:
    """A mask: bool, or every non-zero pixel holds the same mask value (1, 255 or the dtype's top).

    One object with another id (an instance image with a single object left) stays an instance.
    """
    if labels.dtype == bool:
        return True
    top = labels.max()
    if top == 0:
        return True
    mask_values = {1, 255}
    if np.issubdtype(labels.dtype, np.integer):
        mask_values.add(int(np.iinfo(labels.dtype).max))
    if int(top) not in mask_values:
        return False
    foreground = labels[labels > 0]
    return bool(foreground.min() == top)


def _relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber the non-zero ids of ``labels`` to 1..n keeping their order; 0 stays 0."""
    top = int(labels.max())
    if top <= 4 * labels.size + 1024:  # a look-up table is O(pixels), no sort
        present = np.zeros(top + 1, dtype=bool)
        present[labels.ravel()] = True
        present[0] = False
        lut = np.cumsum(present, dtype=np.int64)
        n = int(lut[-1])
        if n == top:  # already 1..n: nothing to renumber
            return (labels if labels.dtype != np.uint64 else labels.astype(np.int64)), n
        dtype = np.int32 if n < 2**31 else np.int64
        return lut.astype(dtype)[labels], n
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    n = int(ids.size - (1 if ids[0] == 0 else 0))
    return inverse.reshape(labels.shape).astype(np.int64), n


def to_instances(labels: Any, name: str = "labels") -> tuple[np.ndarray, int]:
    """Instance labels 1..n from a binary mask (connected components) or an instance image.

    Parameters
    ----------
    labels
        A binary mask (bool, or all non-zero pixels 1, all 255, or all the dtype's largest
        value) or an instance image (non-zero ids, not necessarily consecutive).
    name
        What to call the argument in error messages.

    Returns
    -------
    instances : numpy.ndarray
        Integer array, objects numbered 1..n consecutively, background 0.
    n : int
        Number of objects.
    """
    labels = as_labels(labels, name)
    if is_binary(labels):
        return connected_components(labels)
    return _relabel_consecutive(labels)


# --- validation and the planewise loop ---------------------------------------------------------


def _validate(labels: Any, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {labels.dtype}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D (Y, X) or 3D (Z, Y, X), got shape {labels.shape}")
    return labels


def _check_radius(radius: float) -> float:
    if not radius >= 0:
        raise ValueError(f"radius must be 0 or more pixels, got {radius}")
    return float(radius)


def _per_plane(func: Callable[[np.ndarray], np.ndarray], labels: np.ndarray, planewise: bool) -> np.ndarray:
    """``func`` on the whole array, or on each YX plane of a 3D array when ``planewise``."""
    if not planewise or labels.ndim == 2:
        return func(labels)
    return np.stack([func(plane) for plane in labels])


def _ball(radius: float, ndim: int) -> np.ndarray:
    """Pixels within ``radius`` of the centre (a disc or a ball), for morphology."""
    r = int(np.floor(radius))
    grid = np.mgrid[(slice(-r, r + 1),) * ndim]
    return np.sum(grid.astype(float) ** 2, axis=0) <= radius**2


def _crops(labels: np.ndarray, margin: int = 0) -> Iterable[tuple[int, tuple[slice, ...]]]:
    """(id, bounding box grown by ``margin`` within the array) for each object."""
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            yield (
                index,
                tuple(
                    slice(max(s.start - margin, 0), min(s.stop + margin, n))
                    for s, n in zip(box, labels.shape, strict=True)
                ),
            )


# --- counting ----------------------------------------------------------------------------------


def object_count(labels: Any) -> int:
    """The number of distinct non-zero ids.

    Examples
    --------
    >>> object_count(np.array([[0, 3, 3], [7, 0, 1]]))
    3
    """
    labels = np.asarray(labels)
    values = np.unique(labels)
    return int(np.count_nonzero(values))


def object_sizes(labels: Any, pixel_size: Sequence[float] | None = None) -> dict[int, float]:
    """Each object's area (2D) or volume (3D): pixels, or physical units given ``pixel_size``.

    Parameters
    ----------
    labels
        Integer labels.
    pixel_size
        The size of a pixel along each axis of ``labels`` (e.g. micrometres for Y, X); None
        counts pixels.

    Returns
    -------
    dict
        id -> size, for every id present (0 excluded), in increasing order of id.
    """
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels != 0], return_counts=True)
    unit = _pixel_measure(pixel_size, labels.ndim)
    return {int(i): float(c) * unit for i, c in zip(ids, counts, strict=True)}


def _pixel_measure(pixel_size: Sequence[float] | None, ndim: int) -> float:
    if pixel_size is None:
        return 1.0
    sizes = [float(s) for s in pixel_size]
    if len(sizes) != ndim or any(not s > 0 for s in sizes):
        raise ValueError(f"pixel_size must give {ndim} positive sizes (one per axis), got {tuple(pixel_size)}")
    return float(np.prod(sizes))


def label_at(labels: Any, position: Sequence[float]) -> int:
    """The id at ``position`` (data coordinates, rounded), 0 outside the array."""
    labels = np.asarray(labels)
    index = tuple(int(round(float(p))) for p in position)
    if len(index) != labels.ndim or any(not 0 <= i < n for i, n in zip(index, labels.shape, strict=True)):
        return 0
    return int(labels[index])


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 1..n keeping their order (0 stays background); int32 result.

    Examples
    --------
    >>> relabel_sequential(np.array([[0, 5, 5], [9, 0, 2]]))
    array([[0, 2, 2],
           [3, 0, 1]], dtype=int32)
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return labels.astype(np.int32)
    present = np.unique(labels)
    present = present[present != 0]
    if present.size and present[0] == 1 and present[-1] == present.size and labels.dtype == np.int32:
        return labels
    lookup = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[labels]


# --- cleanup -----------------------------------------------------------------------------------


def fill_holes(labels: Any, *, planewise: bool = False) -> np.ndarray:
    """Fill background holes enclosed by a single object; ids are kept.

    Examples
    --------
    >>> ring = np.zeros((5, 5), int); ring[1:4, 1:4] = 2; ring[2, 2] = 0
    >>> int(fill_holes(ring)[2, 2])
    2
    """

    def fill(array: np.ndarray) -> np.ndarray:
        array = np.array(array, copy=True)
        for index, box in _crops(array, margin=1):
            # the one pixel of margin keeps a hole touching the box edge from looking like outside
            crop = array[box]
            filled = ndi.binary_fill_holes(crop == index)
            crop[filled & (crop == 0)] = index
        return array

    return _per_plane(fill, _validate(labels), planewise)


def remove_sizes(
    labels: Any,
    min_size: float = 0,
    max_size: float | None = None,
    *,
    pixel_size: Sequence[float] | None = None,
    planewise: bool = False,
) -> np.ndarray:
    """Remove objects smaller than ``min_size`` or larger than ``max_size``; the others keep their ids.

    Sizes are pixels (areas in 2D or per plane, voxels in 3D), or physical units (e.g. um^2,
    um^3) when ``pixel_size`` gives the size of a pixel along each axis the objects are measured
    in (Y, X for 2D or ``planewise``; Z, Y, X for 3D).
    """
    labels = _validate(labels)
    if min_size < 0 or (max_size is not None and max_size < min_size):
        raise ValueError(f"sizes must satisfy 0 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
    unit = _pixel_measure(pixel_size, 2 if planewise or labels.ndim == 2 else 3)

    def remove(array: np.ndarray) -> np.ndarray:
        if array.size == 0 or not array.any():
            return array.copy()
        ids, inverse = np.unique(array, return_inverse=True)
        sizes = np.bincount(inverse.ravel()) * unit
        drop = sizes < min_size
        if max_size is not None:
            drop |= sizes > max_size
        drop[ids == 0] = False
        return np.where(drop[inverse.reshape(array.shape)], 0, array).astype(array.dtype)

    return _per_plane(remove, labels, planewise)


def remove_small(
    labels: Any, min_size: float, *, pixel_size: Sequence[float] | None = None, planewise: bool = False
) -> np.ndarray:
    """Remove objects smaller than ``min_size`` pixels (or physical units, see :func:`remove_sizes`).

    Examples
    --------
    >>> a = np.array([[1, 1, 0, 2], [1, 1, 0, 0]])
    >>> remove_small(a, 2)
    array([[1, 1, 0, 0],
           [1, 1, 0, 0]])
    """
    return remove_sizes(labels, min_size, pixel_size=pixel_size, planewise=planewise)


def remove_border(labels: Any, *, planewise: bool = False) -> np.ndarray:
    """Remove objects touching the edge of the image (of each plane when ``planewise``; of the
    volume, its first and last planes included, otherwise)."""
    from skimage.segmentation import clear_border

    return _per_plane(lambda array: clear_border(array), _validate(labels), planewise)


def delete_objects(labels: Any, ids: Iterable[int]) -> np.ndarray:
    """Set the objects ``ids`` to background."""
    labels = _validate(labels)
    return np.where(np.isin(labels, [int(i) for i in ids if int(i) != 0]), 0, labels).astype(labels.dtype)


def merge_objects(labels: Any, ids: Iterable[int]) -> np.ndarray:
    """Give the objects ``ids`` one id: the first of them (background in ``ids`` is ignored)."""
    labels = _validate(labels)
    ids = [int(i) for i in ids if int(i) != 0]
    if len(ids) < 2:
        return labels.copy()
    return np.where(np.isin(labels, ids[1:]), ids[0], labels).astype(labels.dtype)


def split_object(
    labels: Any,
    label: int,
    *,
    min_distance: float | None = None,
    sampling: Sequence[float] | None = None,
    next_label: int | None = None,
) -> np.ndarray:
    """Split object ``label`` at the peaks of its distance to the background (a watershed).

    The largest piece keeps ``label``; the others get new ids from ``next_label`` (default: one
    more than the largest id). An object with one peak stays whole.

    Parameters
    ----------
    labels
        Integer labels, 2D or 3D.
    label
        The id of the object to split.
    min_distance
        Smallest distance between two peaks, in pixels. Default: half the object's largest
        inscribed radius, which splits two touching round objects but not one oval one.
    sampling
        Pixel spacing per axis (anisotropic stacks).
    next_label
        The first id for new pieces (for a plane cut out of a larger stack, pass the stack's).
    """
    labels = _validate(labels)
    out = labels.copy()
    boxes = ndi.find_objects((labels == int(label)).astype(np.uint8)) if label else []
    if not boxes or boxes[0] is None:
        return out
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(boxes[0], labels.shape, strict=True))
    pieces = _split_mask(labels[box] == int(label), min_distance, sampling)
    count = int(pieces.max())
    if count < 2:
        return out
    sizes = np.bincount(pieces.ravel())[1:]
    order = np.argsort(-sizes, kind="stable") + 1  # piece numbers, largest first
    new_ids = {int(order[0]): int(label)}
    start = int(labels.max()) + 1 if next_label is None else int(next_label)
    new_ids.update({int(piece): start + i for i, piece in enumerate(order[1:])})
    if max(new_ids.values()) > np.iinfo(out.dtype).max:
        out = out.astype(np.int32 if max(new_ids.values()) < 2**31 else np.int64)
    crop = out[box]
    for piece, new_id in new_ids.items():
        crop[pieces == piece] = new_id
    return out


def split_objects(
    labels: Any, *, min_distance: float | None = None, planewise: bool = False, next_label: int | None = None
) -> np.ndarray:
    """Split every object at its distance peaks (see :func:`split_object`); new pieces get new ids
    from ``next_label`` (default: one more than the largest id)."""
    labels = _validate(labels)
    first = int(labels.max()) + 1 if next_label is None else int(next_label)

    def split_all(array: np.ndarray, first: int) -> np.ndarray:
        out = array
        next_label = first
        for index, _ in list(_crops(array)):
            out = split_object(out, index, min_distance=min_distance, next_label=next_label)
            next_label = max(next_label, int(out.max()) + 1)
        return out

    if not planewise or labels.ndim == 2:
        return split_all(labels, first)
    planes = []
    next_label = first
    for plane in labels:
        plane = split_all(plane, next_label)
        next_label = max(next_label, int(plane.max()) + 1)
        planes.append(plane)
    dtype = np.result_type(*(p.dtype for p in planes))
    return np.stack([p.astype(dtype) for p in planes])


def _split_mask(mask: np.ndarray, min_distance: float | None, sampling: Sequence[float] | None) -> np.ndarray:
    from segtune.core.postprocess import split_touching

    # peaks of the hole-filled object: the rim of a hole would otherwise have peaks of its own
    filled = ndi.binary_fill_holes(mask)
    if min_distance is None:
        radius = float(ndi.distance_transform_edt(filled).max())
        min_distance = max(1.0, radius / 2)
    # diagonal neighbours join: a split must not leave stray corner pixels as objects of their own
    pieces = split_touching(
        filled, min_distance=max(1, int(round(min_distance))), connectivity=mask.ndim, sampling=sampling
    )
    pieces[~mask] = 0
    return relabel_sequential(pieces)


# --- outlines ------------------------------------------------------------------------------------


def dilate(labels: Any, radius: float, *, planewise: bool = False) -> np.ndarray:
    """Grow every object by ``radius`` pixels into the background; where two grow into the same
    pixels, the nearer object wins, so neighbours touch but never merge."""
    from skimage.segmentation import expand_labels

    radius = _check_radius(radius)
    return _per_plane(lambda array: expand_labels(array, distance=radius), _validate(labels), planewise)


def erode(labels: Any, radius: float, *, planewise: bool = False) -> np.ndarray:
    """Shrink every object by ``radius`` pixels, from the background and from its neighbours alike
    (the image edge does not erode). An object thinner than twice ``radius`` disappears."""
    radius = _check_radius(radius)

    def shrink(array: np.ndarray) -> np.ndarray:
        if radius < 1:
            return array.copy()
        footprint = _ball(radius, array.ndim)
        # a pixel stays when every pixel within the radius has its id
        same = (ndi.minimum_filter(array, footprint=footprint, mode="nearest") == array) & (
            ndi.maximum_filter(array, footprint=footprint, mode="nearest") == array
        )
        return np.where(same, array, 0).astype(array.dtype)

    return _per_plane(shrink, _validate(labels), planewise)


def smooth(labels: Any, radius: float, *, planewise: bool = False) -> np.ndarray:
    """Smooth outlines: each object's mask is blurred (a Gaussian of ``radius`` pixels) and cut at
    one half, which trims spurs and sharp corners and fills notches. Pixels are added only from the
    background, so an object never takes pixels of a neighbour; an object the blur would erase
    (thinner than about ``radius``) is kept as it was."""
    radius = _check_radius(radius)

    def smooth_all(array: np.ndarray) -> np.ndarray:
        if radius <= 0:
            return array.copy()
        margin = int(np.ceil(3 * radius)) + 1
        out = array.copy()
        for index, box in _crops(array, margin=margin):
            crop = array[box]
            mask = crop == index
            # "nearest" at the image edge: an object touching it is not worn away there
            smoothed = ndi.gaussian_filter(mask.astype(np.float32), sigma=radius, mode="nearest") > 0.5
            if not smoothed.any():
                continue
            target = out[box]
            target[mask & ~smoothed] = 0
            target[smoothed & ~mask & (crop == 0) & (target == 0)] = index
        return out

    return _per_plane(smooth_all, _validate(labels), planewise)


# --- plane by plane, and masks from drawn outlines ----------------------------------------------


def planes_of(data: Any) -> tuple[list[Any], tuple[int, ...]]:
    """The YX planes of a ``(…, Y, X)`` array, in order, and the shape of the leading axes.

    Examples
    --------
    >>> planes, leading = planes_of(np.zeros((2, 3, 4, 5)))
    >>> len(planes), leading, planes[0].shape
    (6, (2, 3), (4, 5))
    """
    leading = tuple(int(s) for s in data.shape[:-2])
    planes = [data[index] for index in np.ndindex(*leading)] if leading else [data]
    return planes, leading


def stack_planes(planes: Sequence[Any], leading: Sequence[int] = (), *, renumber: bool = False) -> np.ndarray:
    """Per-plane results (from :func:`planes_of`) back into one ``(*leading, Y, X)`` array.

    With ``renumber`` the ids of each plane run on from the previous planes' largest id (uint32),
    so that objects labelled plane by plane never share an id across the stack. Without leading
    axes the one plane is returned as it is.

    Examples
    --------
    >>> stack_planes([np.array([[1, 0]]), np.array([[0, 1]])], (2,), renumber=True)[:, 0]
    array([[1, 0],
           [0, 2]], dtype=uint32)
    """
    if not leading:
        return planes[0]
    offset = 0
    numbered = []
    for plane in planes:
        plane = np.asarray(plane)
        if renumber:
            top = int(plane.max())
            plane = np.where(plane > 0, plane.astype(np.int64) + offset, 0).astype(np.uint32)
            offset += top
        numbered.append(plane)
    return np.stack(numbered).reshape(*leading, *numbered[0].shape)


AREA_SHAPES = ("rectangle", "polygon", "ellipse")


def mask_from_shapes(shapes: Iterable[tuple[str, Any]], shape: Sequence[int]) -> np.ndarray:
    """The pixels of a ``shape`` (Y, X) image inside any of ``shapes``.

    ``shapes`` are ``(kind, vertices)`` pairs: kind one of :data:`AREA_SHAPES` (an ellipse by the
    corners of its bounding box, as napari stores it), vertices an ``(N, 2)`` array of (row,
    column) coordinates with pixel centres at integers (as napari and ``skimage.draw`` place them).

    Examples
    --------
    >>> mask_from_shapes([("rectangle", [[1, 1], [1, 2], [2, 2], [2, 1]])], (4, 4)).astype(int)
    array([[0, 0, 0, 0],
           [0, 1, 1, 0],
           [0, 1, 1, 0],
           [0, 0, 0, 0]])
    """
    from skimage.draw import ellipse, polygon2mask

    shape = tuple(int(s) for s in shape)
    mask = np.zeros(shape, dtype=bool)
    for kind, vertices in shapes:
        if kind not in AREA_SHAPES:
            raise ValueError(f"a shape must be one of {', '.join(AREA_SHAPES)}, got {kind!r}")
        data = np.asarray(vertices, dtype=float)
        if kind == "ellipse":
            (y0, x0), (y1, x1) = data.min(axis=0), data.max(axis=0)
            rr, cc = ellipse((y0 + y1) / 2 - 0.5, (x0 + x1) / 2 - 0.5, (y1 - y0) / 2, (x1 - x0) / 2, shape=shape)
            mask[rr, cc] = True
        else:
            mask |= polygon2mask(shape, data)
    return mask
