"""Windows in and out: reading padded windows of an input (:class:`Source`), writing kept regions
(:class:`Sink`), the output array (numpy, or zarr when it would not fit), and the memory budget."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.core.predict._common import format_bytes, warn


def _reflect_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map padded coordinates to source coordinates (reflect without repeating the edge, or edge)."""
    if mode == "edge" or size == 1:
        return np.clip(index, 0, size - 1)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


class Source:
    """Reads windows of an array-like with shape ``(*items, C, *spatial)``, padding beyond its ends.

    Parameters
    ----------
    read
        ``read(item, box)``: the ``(C, *box)`` block of item ``item`` (e.g. ``(t, z)``), inside the array.
    shape
        The spatial shape.
    pad_mode
        ``"reflect"``, ``"edge"`` (see :func:`far_end_pad_mode`) or ``"constant"`` (zeros in the model input).
    transform
        Applied to each window read (the normaliser) to give the model's input.
    """

    def __init__(
        self,
        read: Callable[[tuple[int, ...], tuple[slice, ...]], np.ndarray],
        shape: tuple[int, ...],
        pad_mode: str,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.read_box = read
        self.shape = shape
        self.pad_mode = pad_mode  # "reflect", "edge" or "constant" (zeros)
        self.transform = transform

    def window(self, item: tuple[int, ...], window: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(raw, model_input)`` float32 arrays ``(C, *window)``."""
        inside = []
        maps = []
        outside = []
        for w, size in zip(window, self.shape, strict=True):
            index = np.arange(w.start, w.stop)
            if w.start >= 0 and w.stop <= size:
                inside.append(slice(w.start, w.stop))
                maps.append(None)
                outside.append(None)
                continue
            if self.pad_mode == "constant":
                mapped = np.clip(index, 0, size - 1)
                outside.append((index < 0) | (index >= size))
            else:
                mapped = _reflect_index(index, size, self.pad_mode)
                outside.append(None)
            lo, hi = int(mapped.min()), int(mapped.max()) + 1
            inside.append(slice(lo, hi))
            maps.append(mapped - lo)
        data = np.asarray(self.read_box(item, tuple(inside)))
        for axis, mapped in enumerate(maps):
            if mapped is not None:
                data = np.take(data, mapped, axis=axis + 1)
        raw = data.astype(np.float32, copy=False)
        model_input = raw if self.transform is None else self.transform(raw)
        if any(o is not None for o in outside):
            model_input = model_input.copy() if model_input is raw else model_input
            for axis, mask in enumerate(outside):
                if mask is not None:
                    where = [slice(None)] * model_input.ndim
                    where[axis + 1] = mask
                    model_input[tuple(where)] = 0.0
        return raw, model_input


def far_end_pad_mode(shape: tuple[int, ...], padded: tuple[int, ...]) -> str:
    """How exact tiling pads an image at its far end up to the model's grid: by reflection, as
    segtune's U-Net pads internally, unless an axis is thinner than its padding (then edge)."""
    return "reflect" if all(p - s < s for p, s in zip(padded, shape, strict=True)) else "edge"


def array_reader(image: Any) -> Callable[[tuple[int, ...], tuple[slice, ...]], np.ndarray]:
    """A :class:`Source` reader for an array of shape ``(*items, C, *spatial)``."""

    def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
        return compute(image[(*item, slice(None), *box)])

    return read


def as_array(image: Any) -> Any:
    """A torch tensor as numpy; numpy, dask and zarr as they are (read lazily, window by window)."""
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    if hasattr(image, "shape") and hasattr(image, "__getitem__") and hasattr(image, "dtype"):
        return image  # numpy, dask, zarr: read lazily window by window
    return np.asarray(image)


def _available_memory(device: torch.device) -> float:
    from segtune.core.device import available_memory

    return available_memory(device)


def parse_bytes(value: float | int | str) -> float:
    """``2e9``, ``"2GB"``, ``"1.5 GiB"``, ``"512M"`` -> bytes."""
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory_limit must be positive, got {value}")
        return float(value)
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b?)\s*", str(value).lower())
    if not match:
        raise ValueError(f"memory_limit {value!r} is not a size like 2GB, 1.5GiB or 512MB")
    number, unit, binary = match.groups()
    base = 1024 if binary.startswith("i") else 1000
    return float(number) * base ** " kmgt".index(unit or " ")


def memory_budget(device: torch.device, memory_limit: float | str | None) -> float:
    """Bytes one forward pass may use: ``memory_limit`` (see :func:`parse_bytes`) when given, else
    70 % of the free memory on a GPU, half the free RAM on a CPU (at least 64 MB)."""
    if memory_limit is not None:
        return parse_bytes(memory_limit)
    available = _available_memory(device)
    fraction = 0.7 if device.type == "cuda" else 0.5
    return max(available * fraction, 64e6)


class Sink:
    """Where kept regions go: a numpy array (or memmap) or a zarr array, indexed by item."""

    def __init__(self, array: Any, prefix: Callable[[tuple[int, ...]], tuple]) -> None:
        self.array = array
        self.prefix = prefix
        self.is_zarr = is_zarr(array)

    def write(self, item: tuple[int, ...], region: tuple[slice, ...], block: np.ndarray) -> None:
        self.array[(*self.prefix(item), *region)] = block


def is_zarr(array: Any) -> bool:
    """Whether ``array`` is a zarr array (whose writes go to storage chunk by chunk)."""
    return type(array).__module__.split(".")[0] == "zarr"


def open_output(
    out: Any,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    overwrite: bool,
) -> Any:
    """A numpy array, an existing array checked for shape, or a new zarr array at a path."""
    if out is None:
        needed = 4.0 * math.prod(shape)
        if needed <= 0.5 * _available_memory(torch.device("cpu")):
            return np.empty(shape, dtype=np.float32)
        folder = tempfile.mkdtemp(prefix="segtune-predict-")
        warn(f"the output ({format_bytes(needed)}) would not fit in memory; writing it to the zarr store {folder}")
        out = Path(folder) / "prediction.zarr"
    if isinstance(out, (str, os.PathLike)):
        import zarr

        path = Path(out)
        if path.exists() and not overwrite:
            raise FileExistsError(f"output {path} already exists; pass overwrite=True to replace it")
        array = zarr.open_array(
            str(path), mode="w", shape=shape, chunks=chunks, dtype="float32", fill_value=float("nan")
        )
        return array
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)} but the prediction has shape {tuple(shape)}")
    if not np.issubdtype(np.dtype(out.dtype), np.floating):
        raise ValueError(f"out must be a floating-point array, got dtype {out.dtype}")
    return out


def compute(block: Any) -> np.ndarray:
    """A block of a numpy, dask or zarr array as a numpy array (computing a dask block)."""
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)
