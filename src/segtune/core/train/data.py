"""Training data: pairing images with labels, normalising and rescaling them, targets per head, splits.

Images and labels arrive either as arrays in memory (what the napari widget passes) or as
files any :func:`segtune.core.io.open_image` can read. Each pair becomes a :class:`Sample`:
a ``(C, Z, Y, X)`` float32 image normalised by percentiles, ``(Z, Y, X)`` integer labels and a
``(Z, Y, X)`` validity mask (False where a pixel is to be ignored by the loss). A 2D image
has ``Z = 1``. Targets for the network are made from the labels per patch, after
augmentation (:func:`make_targets`):

binary
    foreground ``labels > 0``.
three_class
    0 background, 1 interior, 2 boundary (the inner rim of each object, from
    ``skimage.segmentation.find_boundaries``), so that touching objects can be told apart.
    Binary masks are split into objects by connected components first.
semantic
    the label value is the class index (0..n-1).
multilabel
    n non-exclusive classes: bit k of the label value says the pixel belongs to class k
    (nuclei 1, Golgi 2, both 3); the target is ``(n, *spatial)`` of 0/1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segtune.core.models.heads import SEGMENTATION_HEADS
from segtune.core.normalize import DEFAULT_PERCENTILES

logger = logging.getLogger(__name__)

__all__ = [
    "HEADS",
    "Sample",
    "load_pairs",
    "make_sample",
    "make_targets",
    "object_diameter",
    "split_samples",
]

HEADS = SEGMENTATION_HEADS  # the heads that train on labels


@dataclass
class Sample:
    """One training image: ``image`` (C, Z, Y, X) float32, ``labels`` and ``valid`` (Z, Y, X)."""

    image: np.ndarray
    labels: np.ndarray
    valid: np.ndarray
    name: str = ""

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        return tuple(self.labels.shape)  # type: ignore[return-value]

    @property
    def foreground_fraction(self) -> float:
        valid = self.valid
        total = int(valid.sum())
        return float(np.count_nonzero((self.labels > 0) & valid) / total) if total else 0.0


def _split_channels(image: np.ndarray, labels_shape: tuple[int, ...], name: str) -> np.ndarray:
    """``image`` as (C, *labels_shape): channels first or last, or no channel axis at all."""
    if image.shape == labels_shape:
        return image[None]
    if image.ndim == len(labels_shape) + 1:
        if image.shape[1:] == labels_shape:
            return image
        if image.shape[:-1] == labels_shape:
            return np.moveaxis(image, -1, 0)
    raise ValueError(
        f"{name}: the image (shape {image.shape}) and its labels (shape {labels_shape}) do not match; "
        f"the image must have the labels' shape, optionally with one channel axis first or last"
    )


def make_sample(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    ignore_value: int | None = None,
    normalization: tuple[float, float] = DEFAULT_PERCENTILES,
    clip: bool = False,
    scale: float = 1.0,
    name: str = "",
) -> Sample:
    """Turn one image and its labels (arrays) into a normalised, rescaled :class:`Sample`.

    Parameters
    ----------
    image
        The image: the labels' shape, optionally with a channel axis first or last (an RGB
        napari layer is ``(Y, X, 3)``).
    labels
        ``(Y, X)`` or ``(Z, Y, X)`` integer labels: a binary mask, instance ids or class indices.
    mask
        Optional array of the labels' shape: pixels where it is 0/False are ignored by the loss.
    ignore_value
        A label value meaning "ignore this pixel" (e.g. 255 from pseudo-labelling); such
        pixels become background with ``valid = False``.
    normalization
        Percentiles (low, high) mapped to 0 and 1, per channel, over the whole image.
    clip
        Clip the normalised image to [0, 1] (the 5-98 contrast stretch clips).
    scale
        Resize factor for Y and X (e.g. 0.25 for nuclei four times larger than the network needs).
    name
        What to call this pair in error messages.
    """
    from segtune.core.normalize import percentile_normalize
    from segtune.core.resize import resize_yx

    labels = np.asarray(labels)
    image = np.asarray(image)
    if labels.ndim not in (2, 3):
        raise ValueError(f"{name}: labels must be 2D (Y, X) or 3D (Z, Y, X), got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(
                f"{name}: labels must be integers (a mask, instance ids or class indices), got dtype {labels.dtype}"
            )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name}: labels must not be negative (minimum {labels.min()})")
    image = _split_channels(image, labels.shape, name)
    valid = np.ones(labels.shape, dtype=bool)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(
                f"{name}: the ignore mask (shape {mask.shape}) does not match the labels (shape {labels.shape})"
            )
        valid &= mask.astype(bool)
    if ignore_value is not None:
        ignored = labels == ignore_value
        valid &= ~ignored
        labels = np.where(ignored, 0, labels)
    normalized = np.stack(
        [percentile_normalize(channel, normalization[0], normalization[1], clip=clip) for channel in image]
    ).astype(np.float32)
    if labels.ndim == 2:
        normalized, labels, valid = normalized[:, None], labels[None], valid[None]
    if scale != 1.0:
        # prediction's resize rule (core.resize): the model trains on what it will see
        normalized = resize_yx(normalized, scale, order=1)
        labels = resize_yx(labels, scale, order=0)
        valid = resize_yx(valid, scale, order=0)
    return Sample(np.ascontiguousarray(normalized), np.ascontiguousarray(labels), np.ascontiguousarray(valid), name)


def instances_from_labels(labels: np.ndarray) -> np.ndarray:
    """Instance ids from a binary mask (connected components, full connectivity) or instance labels.

    Each Z plane of a ``(1, Y, X)`` array is treated as the 2D image it is.
    """
    from segtune.core.metrics import to_instances

    if labels.ndim == 3 and labels.shape[0] == 1:
        return to_instances(labels[0])[0][None]
    return to_instances(labels)[0]


def make_targets(labels: np.ndarray, head: str, *, n_classes: int | None = None, planar: bool = False) -> np.ndarray:
    """The training target for ``head`` from (instance, binary or class) ``labels``.

    Parameters
    ----------
    labels
        Integer labels of any spatial shape.
    head
        ``"binary"`` (uint8 0/1), ``"three_class"`` (uint8 0 background / 1 interior / 2 boundary)
        or ``"semantic"`` (int64 class indices, checked against ``n_classes``).
    n_classes
        Number of classes of a semantic head.
    planar
        Compute three-class boundaries per plane (a 2D network trained on planes of a stack).

    Examples
    --------
    >>> labels = np.zeros((6, 6), int); labels[1:5, 1:3] = 1; labels[1:5, 3:5] = 2
    >>> make_targets(labels, "three_class")[2]
    array([0, 2, 2, 2, 2, 0], dtype=uint8)
    """
    if head == "binary":
        return (labels > 0).astype(np.uint8)
    if head == "three_class":
        from skimage.segmentation import find_boundaries

        if planar and labels.ndim == 3:
            return np.stack([make_targets(plane, head) for plane in labels])
        instances = instances_from_labels(labels)
        boundary = find_boundaries(instances, mode="inner") & (instances > 0)
        target = (instances > 0).astype(np.uint8)
        target[boundary] = 2
        return target
    if head == "semantic":
        if n_classes is not None and labels.size and labels.max() >= n_classes:
            raise ValueError(f"label value {labels.max()} is not a class of a {n_classes}-class semantic head")
        return labels.astype(np.int64)
    if head == "multilabel":
        if n_classes is None:
            raise ValueError("a multilabel head needs n_classes")
        if labels.size and int(labels.max()) >= 2**n_classes:
            raise ValueError(f"label value {labels.max()} has bits beyond the {n_classes} classes of a multilabel head")
        flags = labels.astype(np.int64)
        return np.stack([(flags >> k) & 1 for k in range(n_classes)]).astype(np.uint8)
    raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")


def object_diameter(samples: Sequence[Sample], scale: float = 1.0) -> float | None:
    """Median equivalent-circle diameter of the labelled objects, in original pixels (YX plane)."""
    areas: list[np.ndarray] = []
    for sample in samples:
        for plane in sample.labels:
            instances = instances_from_labels(plane)
            counts = np.bincount(instances.ravel())[1:]
            areas.append(counts[counts > 0])
    if not areas or not sum(len(a) for a in areas):
        return None
    diameter = float(np.median(2 * np.sqrt(np.concatenate(areas) / np.pi)))
    return diameter / scale


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Split into training and validation samples: by image, or by region when there is one image.

    With several images, ``round(val_fraction * n)`` of them (at least one, and at most
    ``n - 1``) chosen at random by ``seed`` validate. With a single image, a strip along one of
    its edges validates and the rest trains: the last ``val_fraction`` along the longer of Y and
    X, widened where objects are sparse (up to 40 % of the image) until it holds at least
    ``val_fraction`` of the objects (by centre), so that the held-out score measures something.
    Where that strip cannot hold them (the objects lie in one part of the image), the strip
    along the other edges that can is taken (first the longer axis's start, then the shorter
    axis's end and start), else the one holding the most objects; the part that trains always
    keeps an object.
    ``val_fraction = 0`` gives no validation set.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    samples = list(samples)
    if val_fraction == 0 or not samples:
        return samples, []
    if len(samples) == 1:
        sample = samples[0]
        axis, start, stop = _held_out_strip(sample.labels, val_fraction)
        if stop - start < 1:
            return samples, []
        n = sample.labels.shape[axis]
        held = [slice(None)] * 3
        held[axis] = slice(start, stop)
        take = [slice(None)] * 3
        take[axis] = slice(stop, n) if start == 0 else slice(0, start)

        def part(index: list[slice], suffix: str) -> Sample:
            return Sample(
                np.ascontiguousarray(sample.image[(slice(None), *index)]),
                np.ascontiguousarray(sample.labels[tuple(index)]),
                np.ascontiguousarray(sample.valid[tuple(index)]),
                f"{sample.name}[{suffix}]",
            )

        return [part(take, "train region")], [part(held, "validation region")]
    n_val = min(max(1, int(round(val_fraction * len(samples)))), len(samples) - 1)
    order = np.random.default_rng(seed).permutation(len(samples))
    val_index = set(order[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in val_index]
    val = [s for i, s in enumerate(samples) if i in val_index]
    return train, val


def _held_out_strip(labels: np.ndarray, fraction: float, widest: float = 0.4) -> tuple[int, int, int]:
    """``(axis, start, stop)`` of the held-out strip of one ``(Z, Y, X)`` image (see
    :func:`split_samples`): no wider than ``widest`` of the axis unless ``fraction`` is."""
    import math

    instances = np.concatenate([instances_from_labels(plane[None])[0].ravel() for plane in labels])
    counts = np.bincount(instances)
    present = np.flatnonzero(counts[1:] > 0) + 1
    longer = 1 if labels.shape[1] >= labels.shape[2] else 2
    best, first = None, None
    for axis in (longer, 3 - longer):
        n = labels.shape[axis]
        if n < 2:
            continue
        coordinate = np.broadcast_to(
            np.arange(n).reshape([-1 if a == axis else 1 for a in range(3)]), labels.shape
        ).ravel()
        centres = np.sort(np.bincount(instances, weights=coordinate, minlength=len(counts))[present] / counts[present])
        plain, most = n - int(round(n * (1 - fraction))), n - int(round(n * (1 - widest)))
        if not len(centres):  # nothing to hold: the plain strip
            return axis, n - min(max(1, plain), n - 1), n
        want = max(1, math.ceil(fraction * len(centres)))
        for far_end in (True, False):
            # the narrowest strip along this edge that holds the centres of ``want`` objects
            needed = n - math.floor(centres[-want]) if far_end else math.floor(centres[want - 1]) + 1
            width = min(max(1, plain, min(needed, most)), n - 1)
            held = int(np.count_nonzero(centres >= n - width if far_end else centres < width))
            strip = (axis, n - width, n) if far_end else (axis, 0, width)
            first = first or strip
            if len(centres) - held < 1:  # the training part keeps an object to learn from
                continue
            if held >= want:
                return strip
            if best is None or held > best[0]:
                best = (held, strip)
    return best[1] if best else first or (longer, 0, 0)  # every strip would take all: the first one


def _read_image_array(path: Path, in_channels: int | None = None) -> np.ndarray:
    """An image file as a numpy array with its singleton T/C/Z axes dropped: (C?, Z?, Y, X); for a
    model taking ``in_channels``, a colour image as prediction reads it (the grey mean of an RGB
    image's colours for a one-channel model)."""
    from segtune.core.io import open_image
    from segtune.core.predict.inputs import colour_channel

    image = open_image(path)
    data = image.data  # TCZYX
    if in_channels is not None:
        data, _, _ = colour_channel(data, list(image.channel_names), None, in_channels)
    if data.shape[0] > 1:
        logger.warning("%s has %d time points; training uses the first", path, data.shape[0])
    data = np.asarray(data[0].compute())  # CZYX
    if data.shape[1] == 1:
        data = data[:, 0]  # CYX
    if data.shape[0] == 1:
        data = data[0]
    return data


def load_pairs(
    image_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    in_channels: int | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Read image and label files into arrays, pairing them in the order given.

    ``in_channels``, the input channels of the model to be trained further, lets an image that is
    one colour and nothing else (an RGB PNG or TIFF) reach a one-channel model as the grey mean
    of its colours, as prediction gives it to that model.

    Returns
    -------
    images, labels, names
        Lists of arrays ready for :func:`make_sample` and the image file names.

    Raises
    ------
    ValueError
        Different numbers of images and labels, or an image whose shape does not match its labels.
    segtune.core.io.ImageReadError
        A file cannot be read.
    """
    from segtune.core.io import read_labels
    from segtune.core.metrics import as_labels

    if len(image_paths) != len(label_paths):
        raise ValueError(
            f"{len(image_paths)} image file(s) but {len(label_paths)} label file(s); "
            "give one label file per image, in the same order"
        )
    if not image_paths:
        raise ValueError("no training images given")
    images, labels, names = [], [], []
    for image_path, label_path in zip(image_paths, label_paths, strict=True):
        image = _read_image_array(Path(image_path), in_channels)
        label = read_labels(label_path)
        try:
            as_labels(label, "labels")
        except ValueError as e:
            raise ValueError(f"{label_path}: {e}") from None
        if label.ndim == 3 and label.shape[0] == 1:
            label = label[0]
        try:
            _split_channels(image, label.shape, str(image_path))
        except ValueError:
            raise ValueError(
                f"image {image_path} (shape {image.shape}) and labels {label_path} (shape {label.shape}) do not match"
            ) from None
        images.append(image)
        labels.append(label)
        names.append(str(image_path))
    return images, labels, names
