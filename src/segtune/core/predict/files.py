"""One image file in, its label file out: what ``segtune predict`` does with each input, and what
each task of :func:`segtune.core.parallel_predict.predict_files` does on a worker.

Both call :func:`predict_file`, so a file predicted on a cluster is written exactly as the
single-process command writes it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.predict.frontend import predict
from segtune.core.progress import CancelToken, ProgressCallback


@dataclass
class PredictedFile:
    """What :func:`predict_file` did with one input.

    Attributes
    ----------
    output
        The label file written.
    objects
        Objects in it: instances by their numbers, a mask's connected components plane by
        plane (None where they were not counted).
    diameter
        The object diameter the image was zoomed for (None: not zoomed).
    min_size
        The smallest object kept, in pixels (voxels).
    grey
        The image's colours were averaged to the one channel the model takes (an RGB image, no
        channel chosen).
    """

    output: Path
    objects: int | None
    diameter: float | None
    min_size: int
    grey: bool = False


def predict_file(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    model: Any,
    scene: int | str | None = None,
    overwrite: bool = False,
    label_dtype: type | np.dtype = np.uint8,
    blockwise: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> PredictedFile:
    """Predict one image file and write its labels as an OME-TIFF with the input's pixel sizes.

    Parameters
    ----------
    input_path, output_path
        The image (anything :func:`segtune.core.io.open_image` reads) and the ``.tif`` to write
        (atomically, with the user's normal permissions).
    model
        A model name or folder, or a ``(module, config)`` pair.
    scene
        Scene (CZI) or series (TIFF) to read.
    overwrite
        Replace ``output_path`` if it exists (else :class:`FileExistsError`).
    label_dtype
        The narrowest unsigned type to store the labels in; a wider one is used when a label does
        not fit. The default (uint8) gives the smallest type that holds them; ``segtune predict``
        asks uint16 for instance labels.
    blockwise
        Predict each plane block by block into a tiled TIFF (uint32 instances, uint8 masks), memory
        bounded whatever the image size (:mod:`segtune.core.predict.blockwise`); automatic for
        planes over 4096 x 4096 with a 2D model.
    progress, cancel
        See :mod:`segtune.core.progress`, as for :func:`segtune.core.predict.predict`.
    **options
        Keywords of :func:`segtune.core.predict.predict` (``channel``, ``threshold``,
        ``instances``, ``objects``, ``tiling``, ``device``, ``diameter``, ...).

    Returns
    -------
    PredictedFile
        The file written (``(T, Z, Y, X)`` labels without length-1 T and Z), its object count,
        the diameter used and the smallest object kept.

    Raises
    ------
    segtune.core.io.ImageReadError
        The input cannot be read.
    ValueError
        The model's head gives no labels (an image-to-image model), or bad options.
    FileExistsError
        ``output_path`` exists and ``overwrite`` is False.
    """
    from segtune.core.io import open_image, write_labels
    from segtune.core.predict import blockwise as blocks
    from segtune.core.predict.inputs import plain_colour, resolve_model

    image = open_image(input_path, scene=scene)
    model = resolve_model(model, options.pop("config", None), options.get("device", "auto"))
    in_channels = int((model[1].get("architecture", {}) or {}).get("in_channels", 1))
    grey = options.get("channel") is None and in_channels == 1 and plain_colour(image.channel_names, 1)
    if blockwise or blocks.eligible(model, image):
        written, count, diameter, min_size = blocks.predict_to_tiff(
            model, image, output_path, overwrite=overwrite, progress=progress, cancel=cancel, **options
        )
        return PredictedFile(written, count, diameter, min_size, grey)
    result = predict(model, image, progress=progress, cancel=cancel, **options)
    if result.labels is None:
        raise ValueError(f"the model's head {result.head!r} gives no labels to write")
    labels, axes = squeeze_labels(np.asarray(result.labels))
    dtype = storage_dtype(int(labels.max(initial=0)), label_dtype)
    written = write_labels(output_path, labels, image.physical_pixel_sizes, overwrite=overwrite, axes=axes, dtype=dtype)
    instances = bool(options.get("instances"))
    return PredictedFile(written, count_objects(labels, instances), result.diameter, result.min_size, grey)


def squeeze_labels(labels: np.ndarray) -> tuple[np.ndarray, str]:
    """``(T, Z, Y, X)`` labels without the length-1 T and Z axes, and the axes left (``"YX"`` ... ``"TZYX"``)."""
    keep = [i for i, n in enumerate(labels.shape) if i >= 2 or n > 1]
    return labels.reshape([labels.shape[i] for i in keep]), "".join("TZYX"[i] for i in keep)


def storage_dtype(top: int, narrowest: type | np.dtype = np.uint8) -> np.dtype:
    """The unsigned type labels up to ``top`` are stored in: ``narrowest``, or uint16 or uint32
    when they do not fit in it."""
    for dtype in (np.dtype(narrowest), np.dtype(np.uint16)):
        if dtype.itemsize >= np.dtype(narrowest).itemsize and top <= np.iinfo(dtype).max:
            return dtype
    return np.dtype(np.uint32)  # (the writer refuses labels that do not fit even there)


def count_objects(labels: np.ndarray, instances: bool) -> int:
    """Instances are counted by their numbers; a mask by its connected components, plane by plane."""
    from segtune.core.labels import connected_components

    if instances:
        return int(np.count_nonzero(np.unique(labels)))
    planes = labels.reshape((-1, *labels.shape[-2:]))
    return int(sum(connected_components(plane, connectivity=1)[1] for plane in planes))
