"""What every reader returns (:class:`ImageData`, :class:`ImageReadError`), and the helpers the readers share:
scenes, colour samples, guarded reads."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

__all__ = [
    "DIMS",
    "ImageData",
    "ImageReadError",
    "LABELS_SOFTWARE",
    "PLAIN_EXTENSIONS",
    "PhysicalPixelSizes",
    "SAMPLE_NAMES",
    "SUPPORTED_EXTENSIONS",
    "TIFF_EXTENSIONS",
    "default_channel_names",
    "guarded_array",
    "pick_scene",
    "positive_or_none",
    "sample_group",
    "sample_names",
    "samples_to_channels",
]


DIMS = "TCZYX"
TIFF_EXTENSIONS = (".ome.tif", ".ome.tiff", ".tif", ".tiff")
PLAIN_EXTENSIONS = (".png", ".jpg", ".jpeg")
SUPPORTED_EXTENSIONS = (".czi", *TIFF_EXTENSIONS, *PLAIN_EXTENSIONS)
# the Software tag of every label TIFF segtune writes: how the napari reader knows them as labels
LABELS_SOFTWARE = "segtune"


class ImageReadError(Exception):
    """A file could not be read as an image. The message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read {self.path}: {reason}")


class PhysicalPixelSizes(NamedTuple):
    """Pixel sizes in micrometres along Z, Y, X; None where the file does not say."""

    Z: float | None = None
    Y: float | None = None
    X: float | None = None


@dataclass
class ImageData:
    """An opened image: a lazy TCZYX array and what the file says about it.

    Attributes
    ----------
    data
        dask array with dims ``TCZYX`` (RGB samples are channels). Nothing is read from disk
        until part of it is computed.
    physical_pixel_sizes
        (Z, Y, X) in micrometres, None where unknown.
    channel_names
        One name per channel. RGB samples of a named channel are ``"name (red)"``,
        ``"name (green)"``, ``"name (blue)"`` (see :func:`sample_group`).
    scenes
        Names of the scenes (CZI scenes, TIFF series) in the file; ``scene`` is the one opened.
    """

    path: Path
    data: da.Array
    physical_pixel_sizes: PhysicalPixelSizes
    channel_names: list[str]
    scenes: list[str]
    scene: str
    metadata: dict[str, Any] = field(default_factory=dict)
    """What else the file says: ``samples`` (3 or 4 when each channel is an RGB(A) colour image,
    its samples consecutive channels), ``axes`` (a TIFF's own axes), ``software`` (a TIFF's
    Software tag: ``"segtune"`` for label files segtune wrote)."""

    dims = DIMS

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.data.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def sizes(self) -> dict[str, int]:
        """``{"T": 3, "C": 2, "Z": 5, "Y": 170, "X": 240}``."""
        return dict(zip(DIMS, self.shape, strict=True))

    def plane(self, t: int = 0, c: int = 0, z: int = 0) -> np.ndarray:
        """Read one YX plane into memory."""
        return np.asarray(self.data[t, c, z].compute())


def pick_scene(path: Path, scenes: Sequence[str], scene: int | str | None) -> int:
    if scene is None:
        return 0
    if isinstance(scene, (int, np.integer)):
        if not 0 <= int(scene) < len(scenes):
            raise ImageReadError(
                path, f"scene {scene} does not exist; the file has {len(scenes)} scene(s): {list(scenes)}"
            )
        return int(scene)
    if scene in scenes:
        return list(scenes).index(scene)
    raise ImageReadError(path, f"scene {scene!r} does not exist; the file has scenes {list(scenes)}")


class _GuardedReads:
    """An array-like whose reads turn any decoder error into :class:`ImageReadError`.

    Files that open fine can still hold corrupt data (a tile whose compressed bytes are
    damaged, a CZI subblock that does not decode); the error appears only when those pixels
    are read, deep inside a dask computation. Wrapping the source of every dask block here
    makes that error name the file, the block and the reason wherever the array is computed.
    """

    def __init__(self, path: Path, source: Any, axes: str) -> None:
        self.path, self.source = path, source
        self.shape = tuple(int(n) for n in source.shape)
        self.dtype = np.dtype(source.dtype)
        self.ndim = len(self.shape)
        self.axes = list(axes) if len(axes) == self.ndim else [f"axis {i}" for i in range(self.ndim)]
        # dask names the blocks by this token: the file's state and the reader's array
        stat = path.stat()
        source_token = source.name if isinstance(source, da.Array) else uuid.uuid4().hex
        self._token = (str(path), stat.st_size, stat.st_mtime_ns, source_token)

    def __dask_tokenize__(self) -> Any:
        return self._token

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            block = self.source[index]
            if isinstance(block, da.Array):  # one block of the reader's own dask array, read here
                block = block.compute(scheduler="synchronous")
            return np.asarray(block)
        except (ImageReadError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as e:
            reason = f"{type(e).__name__}: {e}".strip().rstrip(":")
            raise ImageReadError(self.path, f"the pixel data is corrupt at {self._where(index)} ({reason})") from e

    def _where(self, index: Any) -> str:
        index = index if isinstance(index, tuple) else (index,)
        parts = []
        for axis, size, item in zip(self.axes, self.shape, index, strict=False):
            if isinstance(item, slice):
                start, stop, _ = item.indices(size)
                parts.append(f"{axis} {start}" if stop - start == 1 else f"{axis} {start}-{stop - 1}")
            else:
                parts.append(f"{axis} {item}")
        return ", ".join(parts) or "the first block"


def guarded_array(path: Path, source: Any, axes: str) -> da.Array:
    """``source`` (a zarr or dask array) as a dask array with the same chunks whose reads are guarded."""
    chunks = source.chunks if isinstance(source, da.Array) else getattr(source, "chunks", "auto")
    return da.from_array(_GuardedReads(path, source, axes), chunks=chunks, asarray=True, fancy=False)


SAMPLE_NAMES = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}


def sample_names(names: list[str], samples: int, n_channels: int) -> list[str]:
    """Channel names once RGB(A) samples are channels: ``Bright`` -> ``Bright (red)``, ... .

    A single colour channel without a name of its own (bioio calls it ``Channel:0:0``) is
    plain ``red``, ``green``, ``blue``.
    """
    suffixes = SAMPLE_NAMES.get(samples) or tuple(f"sample {i}" for i in range(samples))
    if len(names) * samples != n_channels:
        names = default_channel_names(n_channels // samples)
    if len(names) == 1 and re.fullmatch(r"Channel[: ]?\d+(:\d+)*", names[0]):
        return list(suffixes)
    return [f"{name} ({suffix})" for name in names for suffix in suffixes]


def sample_group(names: Sequence[str], name: str) -> list[int]:
    """The channels holding the RGB(A) samples of channel ``name`` (``Bright`` -> the indices of
    ``Bright (red)``, ``Bright (green)``, ``Bright (blue)``; ``RGB`` -> ``red``, ``green``,
    ``blue``); empty when there are none."""
    if name.lower() == "rgb" and list(names[:3]) == list(SAMPLE_NAMES[3]):
        return [0, 1, 2]  # a single colour channel without a name of its own
    suffixes = {f"{name} ({s})" for group in SAMPLE_NAMES.values() for s in group}
    return [i for i, n in enumerate(names) if n in suffixes]


def samples_to_channels(data: da.Array, dims: str) -> tuple[da.Array, str]:
    """Fold an ``S`` (samples) axis into ``C``: an RGB image with C=1 becomes C=3."""
    s_axis, c_axis = dims.index("S"), dims.index("C")
    data = da.moveaxis(data, s_axis, c_axis + 1)
    order = [d for d in dims if d != "S"]
    shape = list(data.shape)
    shape[c_axis] = shape[c_axis] * shape[c_axis + 1]
    del shape[c_axis + 1]
    return data.reshape(shape), "".join(order)


def default_channel_names(n: int) -> list[str]:
    return [f"Channel {i}" for i in range(n)]


def positive_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None
