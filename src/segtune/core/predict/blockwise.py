"""Instance labels of planes too large for memory: block by block, with one numbering.

A plane is cut into square blocks; each block is segmented inside a window that adds a halo of
context on every side. An object is kept by exactly one block, the one whose core holds the
first pixel of the object's bounding box (its top-left corner), and only when the object does
not touch a window edge that the halo cut (the image's own edges do not count). With a halo
wider than any object, every object is whole in the window of the block that keeps it, so the
result is what one pass over the whole plane gives, up to the numbering: numbers run on across
blocks and planes.

Only a band of block rows is held in memory: a row of blocks is final once it is processed
(objects kept there reach at most a halo into the next row, never back), so it is handed on as
soon as the next row starts. :func:`predict_to_tiff` streams those bands into a tiled TIFF.
Peak memory is one window's prediction plus one band, whatever the size of the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from segtune.core.progress import CancelToken, ProgressCallback, Reporter

# planes with more pixels than this are predicted block by block by the command line (8k x 8k
# and larger; a 4096 x 4096 plane still fits the in-memory path comfortably)
LARGE_PLANE_PIXELS = 4096 * 4096
DEFAULT_BLOCK = 1024  # pixels: also the output TIFF's tile size (a multiple of 16)
MIN_HALO = 128  # pixels of context around a block, at least (objects wider than the halo are lost)
HALO_DIAMETERS = 4  # ... and this many object diameters

Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def halo_for(diameter: float | None) -> int:
    """Context around each block: four object diameters, at least 128 px, a multiple of 16."""
    halo = max(MIN_HALO, HALO_DIAMETERS * float(diameter or 0))
    return int(math.ceil(halo / 16) * 16)


def blocks(shape: tuple[int, int], block: int) -> list[list[Box]]:
    """The plane's blocks, row by row: ``(y0, y1, x0, x1)`` cores of ``block`` pixels (less at the edges)."""
    if block < 16:
        raise ValueError(f"block must be at least 16 pixels, got {block}")
    n_y, n_x = shape
    return [
        [(y, min(y + block, n_y), x, min(x + block, n_x)) for x in range(0, n_x, block)] for y in range(0, n_y, block)
    ]


def kept_objects(
    window: np.ndarray, core: Box, window_box: Box, shape: tuple[int, int]
) -> list[tuple[int, tuple[slice, slice]]]:
    """The objects of a block's ``window`` labels that the block keeps, as (label, bounding box in the window).

    ``core`` and ``window_box`` are in plane coordinates; ``shape`` is the plane's. Kept: the
    bounding box starts inside the core, and touches no window edge that is not the plane's edge.
    """
    wy0, wy1, wx0, wx1 = window_box
    cy0, cy1, cx0, cx1 = core
    cut_top, cut_left = wy0 > 0, wx0 > 0
    cut_bottom, cut_right = wy1 < shape[0], wx1 < shape[1]
    kept = []
    for index, box in enumerate(ndimage.find_objects(window)):
        if box is None:
            continue
        ys, xs = box
        if not (cy0 <= wy0 + ys.start < cy1 and cx0 <= wx0 + xs.start < cx1):
            continue
        if (cut_top and ys.start == 0) or (cut_left and xs.start == 0):
            continue
        if (cut_bottom and ys.stop == window.shape[0]) or (cut_right and xs.stop == window.shape[1]):
            continue
        kept.append((index + 1, box))
    return kept


@dataclass
class Counter:
    """The next free label number (shared across blocks and planes) and the objects placed."""

    next_label: int = 1
    objects: int = 0


def label_plane(
    segment: Callable[[Box], np.ndarray],
    shape: tuple[int, int],
    *,
    block: int,
    halo: int,
    counter: Counter | None = None,
    dtype: Any = np.uint32,
    step: Callable[[], None] | None = None,
) -> Iterator[np.ndarray]:
    """Label a plane block by block; yields its rows of blocks, top to bottom, as they are final.

    Parameters
    ----------
    segment
        ``segment((y0, y1, x0, x1))`` returns the instance labels (any numbering, 0 background)
        of that window of the plane.
    shape
        The plane's (Y, X).
    block, halo
        Block size and context around it, in pixels. Objects wider or taller than ``halo`` may be
        lost (no block sees them whole).
    counter
        Where numbering continues (a new one starts at 1).
    step
        Called after each block (progress, cancel checks).

    Yields
    ------
    numpy.ndarray
        ``(rows, X)`` arrays of ``dtype``: rows ``0..block``, ``block..2*block``, ... of the plane.
    """
    counter = counter if counter is not None else Counter()
    n_y, n_x = shape
    limit = np.iinfo(dtype).max
    rows = blocks(shape, block)
    band = np.zeros((min(block + halo, n_y), n_x), dtype=dtype)  # rows band_y0 .. band_y0 + len(band)
    band_y0 = 0
    for row in rows:
        for core in row:
            cy0, cy1, cx0, cx1 = core
            window_box = (max(cy0 - halo, 0), min(cy1 + halo, n_y), max(cx0 - halo, 0), min(cx1 + halo, n_x))
            window = np.asarray(segment(window_box))
            if window.shape != (window_box[1] - window_box[0], window_box[3] - window_box[2]):
                raise ValueError(f"segment returned shape {window.shape} for window {window_box}")
            wy0, _, wx0, _ = window_box
            for label, (ys, xs) in kept_objects(window, core, window_box, shape):
                mine = window[ys, xs] == label
                y0, x0 = wy0 + ys.start - band_y0, wx0 + xs.start
                target = band[y0 : y0 + mine.shape[0], x0 : x0 + mine.shape[1]]
                free = mine & (target == 0)  # an object found twice (near a block edge) keeps its first copy
                if not free.any():
                    continue
                if counter.next_label > limit:
                    raise ValueError(f"more than {limit} objects: they do not fit {np.dtype(dtype).name} labels")
                target[free] = counter.next_label
                counter.next_label += 1
                counter.objects += 1
            if step is not None:
                step()
        row_y0, row_y1 = row[0][0], row[0][1]  # band_y0 == row_y0 here
        yield band[: row_y1 - row_y0].copy()
        # slide the band to the next row, carrying the objects that reach into it
        rest = band[row_y1 - row_y0 :]
        band_y0 = row_y1
        band = np.zeros((min(block + halo, n_y - band_y0), n_x), dtype=dtype)
        band[: len(rest)] = rest


def eligible(model: Any, image: Any) -> bool:
    """Whether ``image`` goes block by block: a 2D ``(module, config)`` model and planes of more
    than :data:`LARGE_PLANE_PIXELS`."""
    config = model[1] if isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], Mapping) else None
    if config is None or int((config.get("architecture", {}) or {}).get("spatial_dims", 2)) != 2:
        return False
    shape = getattr(image, "shape", None)
    return shape is not None and len(shape) >= 2 and int(shape[-1]) * int(shape[-2]) > LARGE_PLANE_PIXELS


class Blockwise:
    """One image's block-by-block prediction, its settings fixed for the whole image.

    The normalisation limits (percentiles of the whole image, sampled) and the object diameter
    (estimated from the middle ``2048 x 2048`` of the first plane) are measured once, so every
    window is predicted as it would be inside the whole; the smallest object kept follows that
    diameter. Iterate :meth:`bands` to get the labels, row of blocks by row of blocks.
    """

    def __init__(
        self,
        model: Any,
        image: Any,
        *,
        config: Mapping[str, Any] | None = None,
        axes: str | None = None,
        block: int = DEFAULT_BLOCK,
        diameter: float | str | None = "auto",
        channel: int | str | Sequence[int | str] | None = None,
        channel_names: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        **options: Any,
    ) -> None:
        import dask.array as da

        from segtune.core.predict.frontend import whole_image_settings
        from segtune.core.predict.inputs import as_tczyx, colour_channel, resolve_model

        if block < 16 or block % 16:
            raise ValueError(f"block must be a positive multiple of 16 pixels, got {block}")
        self.model, config = resolve_model(model, config, options.get("device", "auto"))
        if int((config.get("architecture", {}) or {}).get("spatial_dims", 2)) != 2:
            raise ValueError("block-by-block prediction takes a 2D model; a 3D model predicts volumes whole")
        self.data, self.names, _ = as_tczyx(image, None if hasattr(image, "dims") else axes, channel_names)
        # a colour channel a one-channel model sees as grey: the mean is taken window by window
        lazy = (
            da.from_array(self.data, chunks=(1, -1, 1, block, block))
            if isinstance(self.data, np.ndarray)
            else self.data
        )
        in_channels = int((config.get("architecture", {}) or {}).get("in_channels", 1))
        grey, names, channel = colour_channel(lazy, self.names, channel, in_channels)
        if names != self.names:
            self.data, self.names = grey, names
        self.channel, self.block, self.cancel = channel, block, cancel
        diameter = _estimate_diameter(self.data, self.names, channel, config, diameter)
        self.config, self.diameter = whole_image_settings(
            (self.model, config),
            self.data,
            config=config,
            axes="TCZYX",
            channel=channel,
            channel_names=self.names,
            diameter=diameter,
        )
        self.halo = halo_for(self.diameter or config.get("object_diameter"))
        self.options = {**options, "instances": True}  # objects are kept or left whole: the windows need instances
        n_t, _, n_z, n_y, n_x = (int(s) for s in self.data.shape)
        self.shape = (n_t, n_z, n_y, n_x)
        self.total = n_t * n_z * sum(len(row) for row in blocks((n_y, n_x), block))
        self.counter = Counter()
        self.min_size: int | None = None
        self._done = 0
        self._reporter = Reporter(progress, cancel, stage="predict")
        self._reporter.step(0, total=self.total, message=f"{self.total} blocks of {block} px (halo {self.halo} px)")

    def _segment(self, t: int, z: int) -> Callable[[Box], np.ndarray]:
        from segtune.core.predict.frontend import predict

        def segment(box: Box) -> np.ndarray:
            y0, y1, x0, x1 = box
            window = np.asarray(self.data[t, :, z, y0:y1, x0:x1])
            result = predict(
                (self.model, self.config),
                window,
                axes="CYX",
                channel=self.channel,
                channel_names=self.names,
                diameter=self.diameter,
                cancel=self.cancel,
                **self.options,
            )
            self.min_size = result.min_size
            return np.asarray(result.labels)[0, 0]

        return segment

    def _step(self) -> None:
        self._done += 1
        self._reporter.step(self._done, total=self.total, message="blocks")

    def bands(self) -> Iterator[tuple[int, int, int, np.ndarray]]:
        """``(t, z, y0, labels)``: each plane's rows of blocks, top to bottom, as they are final (uint32)."""
        n_t, n_z, n_y, n_x = self.shape
        for t in range(n_t):
            for z in range(n_z):
                y0 = 0
                for band in label_plane(
                    self._segment(t, z),
                    (n_y, n_x),
                    block=self.block,
                    halo=self.halo,
                    counter=self.counter,
                    step=self._step,
                ):
                    yield t, z, y0, band
                    y0 += len(band)

    @property
    def used_diameter(self) -> float | None:
        """The diameter the image was zoomed for (None: not zoomed)."""
        return self.diameter or None


def predict_to_tiff(
    model: Any,
    image: Any,
    path: str | os.PathLike,
    *,
    pixel_sizes: Any = None,
    overwrite: bool = False,
    instances: bool = True,
    **options: Any,
) -> tuple[Path, int, float | None, int]:
    """Labels of a (large) image with a 2D model, written block by block to a tiled TIFF.

    Parameters
    ----------
    model, image
        As for :func:`segtune.core.predict.predict`; an ``ImageData`` from ``open_image`` is read
        window by window, never whole.
    path
        The ``.tif`` to write (uint32 instance labels, or a uint8 0/1 mask without ``instances``;
        tiles of ``block`` pixels, zlib, OME pixel sizes); written atomically, never replacing a
        file unless ``overwrite``. A cancel or an error leaves nothing behind.
    pixel_sizes
        (Z, Y, X) micrometres for the file; by default the image's own.
    options
        :class:`Blockwise`'s (``block``, ``diameter``, ``channel``, ``axes``, ``progress``,
        ``cancel``) and further :func:`segtune.core.predict.predict` options (``threshold``,
        ``objects``, ``tiling``, ``device``, ...).

    Returns
    -------
    (path, objects, diameter, min_size)
        The written file, the number of objects, the diameter used (None: not zoomed) and the
        smallest object kept.
    """
    import tifffile

    from segtune.core.files import atomic_write, check_output, ome_metadata
    from segtune.core.io import LABELS_SOFTWARE

    path = check_output(path, overwrite)
    if pixel_sizes is None and hasattr(image, "physical_pixel_sizes"):
        pixel_sizes = image.physical_pixel_sizes
    job = Blockwise(model, image, **options)
    n_t, n_z, n_y, n_x = job.shape
    block = job.block
    dtype = np.dtype(np.uint32 if instances else np.uint8)

    def tiles() -> Iterator[np.ndarray]:
        padded = np.zeros((block, math.ceil(n_x / block) * block), dtype=dtype)
        for _, _, _, band in job.bands():
            padded[:] = 0
            padded[: band.shape[0], :n_x] = band if instances else band > 0
            for x in range(0, n_x, block):
                yield padded[:, x : x + block]

    axes = ("T" if n_t > 1 else "") + ("Z" if n_z > 1 else "") + "YX"
    shape = tuple(n for n, keep in ((n_t, n_t > 1), (n_z, n_z > 1)) if keep) + (n_y, n_x)
    metadata = ome_metadata(axes, pixel_sizes)
    atomic_write(
        path,
        lambda temporary: tifffile.imwrite(
            temporary,
            tiles(),
            shape=shape,
            dtype=dtype,
            tile=(block, block),
            ome=True,
            metadata=metadata,
            compression="zlib",
            software=LABELS_SOFTWARE,
            bigtiff=n_t * n_z * n_y * n_x * dtype.itemsize > 2**31,
        ),
        overwrite=overwrite,
    )
    return path, job.counter.objects, job.used_diameter, int(job.min_size or 0)


def predict_into(
    model: Any, image: Any, out: Any, *, instances: bool = True, **options: Any
) -> tuple[int, float | None, int]:
    """Labels of a (large) image with a 2D model, written block by block into ``out``.

    ``out`` is any array that takes slice assignment, e.g. a zarr array on disk (a napari Labels
    layer can show and edit it), of shape ``(T, Z, Y, X)`` or with length-1 T and Z left out (the
    planes in the order T, then Z); see :func:`predict_to_tiff` for ``options``. Returns (objects,
    diameter used, smallest object kept).
    """
    job = Blockwise(model, image, **options)
    n_t, n_z, n_y, n_x = job.shape
    leading = tuple(int(n) for n in out.shape[:-2])
    if tuple(out.shape[-2:]) != (n_y, n_x) or int(np.prod(leading, dtype=np.int64)) != n_t * n_z:
        raise ValueError(f"out has shape {tuple(out.shape)}, the image's labels need {job.shape} (T, Z, Y, X)")
    for t, z, y0, band in job.bands():
        plane = np.unravel_index(t * n_z + z, leading) if leading else ()
        out[(*plane, slice(y0, y0 + len(band)))] = band if instances else band > 0
    return job.counter.objects, job.used_diameter, int(job.min_size or 0)


def _estimate_diameter(data: Any, names: list[str], channel: Any, config: Mapping[str, Any], diameter: Any) -> Any:
    """The automatic diameter from the middle 2048 x 2048 of the first plane (not the whole plane)."""
    from segtune.core import diameter as sizing
    from segtune.core.predict.frontend import diameter_sample
    from segtune.core.predict.inputs import select_channels

    in_channels = int((config.get("architecture", {}) or {}).get("in_channels", 1))
    chosen = select_channels(channel, names, int(data.shape[1]), in_channels)
    sample = diameter_sample(data, chosen, config, diameter, side=2048)
    if sample is None:  # no estimate asked for: whole_image_settings takes the diameter as it is
        return diameter
    used, _ = sizing.resolve_diameter(diameter, config, sample)
    return used if used is not None else 0
