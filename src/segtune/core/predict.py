"""Sliding-window inference: seam-free exact tiling (or MONAI-style Gaussian blending) in memory or streamed to zarr.

Exact tiling
------------
A convolutional network with ``p`` poolings by two and a finite receptive field is, away from
the borders of its input, equivariant to shifts by multiples of ``2**p`` and blind to anything
farther than its receptive field. So a tile whose origin lies on that grid and that reaches at
least one receptive-field radius (the *halo*) beyond the region we keep from it gives, in that
region, exactly what one forward pass over the whole image gives. At the image border a tile
simply ends where the image ends, as the whole-image pass does.

The model is a callable this module knows nothing about, so both numbers are measured once per
model (:func:`probe_model`): the halo by perturbing a slab of a random input and seeing how far
the output changes, the grid by checking which shifts of the input shift the output exactly.

"One untiled forward pass" is defined as: pad the image at its far end (reflection, or edge
replication for images thinner than the padding) to a multiple of the grid, run the model once,
crop. For sizes that are already multiples this is just ``model(image)``; it is also what
:class:`segtune.core.models.unet.UNet` does internally for other sizes.

Tile size comes from the memory the device has free (or ``memory_limit``); the planner picks,
per axis, the number of tiles that minimises the pixels computed, so an image that fits is one
tile and the overhead of halos is paid only where memory forces several.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import os
import re
import sys
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain, product
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.core.device import select_device
from segtune.core.progress import CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = [
    "BLENDS",
    "ModelGeometry",
    "PRECISIONS",
    "PredictionResult",
    "TilePlan",
    "parse_bytes",
    "plan_tiles",
    "predict",
    "predict_raw",
    "probe_model",
    "whole_image_settings",
]

BLENDS = ("exact", "gaussian")
PRECISIONS = ("float32", "bfloat16", "float16")
_SHIFTS = (1, 2, 4, 8, 16, 32, 64)
_RELATIVE_SUPPORT = 1e-6  # an output change below this fraction of the output's scale is "no change"
# shifts on the grid give bitwise-equal outputs on a CPU; off the grid, differences of 1e-4 of
# the output's scale were seen on small random U-Nets, so the line sits well below that
_SHIFT_TOLERANCE = 1e-6


# --- model geometry --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelGeometry:
    """What tiling needs to know about a model, per spatial axis.

    Attributes
    ----------
    divisor
        Tile origins and sizes are multiples of this (the shift-equivariance grid, ``2**poolings``).
    halo
        Context needed on each side of a kept region (receptive-field radius, rounded up to the grid).
    local
        False when the output depends on the whole input (instance/group normalisation, global
        pooling, attention): then no tiling is exact and only an image that fits one tile is.
    bytes_per_pixel
        Estimated working memory of one forward pass per input pixel.
    out_channels
        Channels the model outputs.
    """

    divisor: tuple[int, ...]
    halo: tuple[int, ...]
    local: bool = True
    bytes_per_pixel: float = 1024.0
    out_channels: int | None = None


_GEOMETRY_CACHE: weakref.WeakKeyDictionary[Any, dict[tuple, ModelGeometry]] = weakref.WeakKeyDictionary()


def probe_model(
    model: Callable[[torch.Tensor], torch.Tensor],
    *,
    spatial_dims: int,
    in_channels: int,
    device: str | torch.device = "auto",
    halo: int | Sequence[int] | None = None,
    divisor: int | Sequence[int] | None = None,
) -> ModelGeometry:
    """Measure a model's shift-equivariance grid, receptive-field halo and memory per pixel.

    The model is run (in float32, under ``torch.inference_mode``) on a few small elongated random
    inputs, one spatial axis at a time: a slab in the middle is replaced and the spread of the
    change in the output gives the halo; windows of one random input shifted by 1, 2, 4, ... 64
    pixels give the grid (the smallest shift that shifts the output exactly). Results are cached
    per model object, and per architecture for models that describe theirs (segtune's U-Net);
    ``halo`` and ``divisor`` given here are used instead of measuring.

    Parameters
    ----------
    model
        A torch module or any callable mapping ``(N, C, *spatial)`` to ``(N, K, *spatial)``.
    spatial_dims
        2 or 3.
    in_channels
        Channels the model takes.
    device
        Where to run the probe (``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``).
    halo, divisor
        Known values (an int for all axes or one per axis) to skip measuring them.

    Returns
    -------
    ModelGeometry

    Raises
    ------
    ValueError
        If the model's output does not keep the input's spatial shape or it fails on every
        probe size.

    Examples
    --------
    >>> from segtune.core.models.unet import UNet
    >>> net = UNet(spatial_dims=2, depth=3, base_channels=4)
    >>> geometry = probe_model(net, spatial_dims=2, in_channels=1, device="cpu")
    >>> geometry.divisor, geometry.halo
    ((8, 8), (48, 48))
    """
    _check_spatial_dims(spatial_dims)
    torch_device = select_device(device)
    runner = _Runner(model, torch_device, "float32", spatial_dims)
    return _geometry(runner, model, spatial_dims, int(in_channels), halo, divisor)


def _geometry(
    runner: _Runner, model: Any, spatial_dims: int, in_channels: int, halo: Any, divisor: Any
) -> ModelGeometry:
    key = (spatial_dims, in_channels, runner.device.type)
    cached = _cache_get(model, key)
    with _exact_float32(runner.device):
        cached = _geometry_uncached(runner, model, spatial_dims, in_channels, halo, divisor, key, cached)
    if halo is not None or divisor is not None:
        d = cached.divisor if divisor is None else _per_axis(divisor, spatial_dims, "divisor", minimum=1)
        h = cached.halo if halo is None else _per_axis(halo, spatial_dims, "halo", minimum=0)
        cached = replace(cached, divisor=d, halo=tuple(_ceil_to(x, di) for x, di in zip(h, d, strict=True)), local=True)
    return cached


@contextlib.contextmanager
def _exact_float32(device: torch.device) -> Iterator[None]:
    """Probe in true float32: TF32 convolutions on CUDA would blur the bitwise comparisons."""
    if device.type != "cuda":
        yield
        return
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


def _geometry_uncached(
    runner: _Runner, model: Any, spatial_dims: int, in_channels: int, halo: Any, divisor: Any, key: tuple,
    cached: ModelGeometry | None,
) -> ModelGeometry:
    if cached is None and halo is not None and divisor is not None:
        # both known: one small pass tells the output channels and the memory per pixel
        d = _per_axis(divisor, spatial_dims, "divisor", minimum=1)
        x = np.zeros((1, in_channels, *(_ceil_to(32, di) for di in d)), dtype=np.float32)
        y, bpp = runner.run_measured(x)
        cached = ModelGeometry(d, d, True, bpp, int(y.shape[1]))
    elif cached is None:
        cached = _measure_geometry(runner, spatial_dims, in_channels, hint=getattr(model, "size_multiple", None))
        _cache_put(model, key, cached)
    return cached


# geometry depends on the architecture, not the weights: models that describe theirs (segtune's
# U-Net) share one measurement between instances, e.g. each time a model folder is loaded
_ARCHITECTURE_CACHE: dict[tuple, ModelGeometry] = {}


def _architecture_key(model: Any, key: tuple) -> tuple | None:
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, Mapping):
        return None
    try:
        return (type(model).__qualname__, json.dumps(architecture, sort_keys=True), *key)
    except (TypeError, ValueError):
        return None


def _cache_get(model: Any, key: tuple) -> ModelGeometry | None:
    by_architecture = _architecture_key(model, key)
    if by_architecture is not None and by_architecture in _ARCHITECTURE_CACHE:
        return _ARCHITECTURE_CACHE[by_architecture]
    try:
        return _GEOMETRY_CACHE.get(model, {}).get(key)
    except TypeError:  # not weak-referenceable or not hashable: no cache
        return None


def _cache_put(model: Any, key: tuple, geometry: ModelGeometry) -> None:
    by_architecture = _architecture_key(model, key)
    if by_architecture is not None:
        _ARCHITECTURE_CACHE[by_architecture] = geometry
    with contextlib.suppress(TypeError):
        _GEOMETRY_CACHE.setdefault(model, {})[key] = geometry


def _measure_geometry(runner: _Runner, spatial_dims: int, in_channels: int, hint: Any) -> ModelGeometry:
    rng = np.random.default_rng(20240531)
    thin = 16
    divisors, halos, local = [], [], True
    bytes_per_pixel, out_channels = 0.0, 1
    hint = int(hint) if isinstance(hint, int) and hint in _SHIFTS else None
    for axis in range(spatial_dims):
        spread, grid, thin, out_channels, bpp = _probe_axis(runner, spatial_dims, in_channels, axis, thin, rng, hint)
        if grid is not None and hint is not None and grid != hint:
            spread, grid, thin, out_channels, bpp = _probe_axis(runner, spatial_dims, in_channels, axis, thin, rng, None)
        bytes_per_pixel = max(bytes_per_pixel, bpp)
        if spread is None or grid is None:
            local = False
            spread = 64 if spread is None else spread
            grid = _accepted_grid(runner, spatial_dims, in_channels, axis, thin)
        divisors.append(grid)
        halos.append(_ceil_to(spread, grid))
    geometry = ModelGeometry(tuple(divisors), tuple(halos), local, bytes_per_pixel, out_channels)
    logger.info("probed model: %s", geometry)
    if not local:
        _warn(
            "the model's output depends on the whole input (e.g. instance or group normalisation) or is not "
            "shift-equivariant; tiled prediction cannot equal one untiled pass unless the image fits in one tile"
        )
    return geometry


def _accepted_grid(runner: _Runner, spatial_dims: int, in_channels: int, axis: int, thin: int) -> int:
    """The smallest power of two the model's input size along ``axis`` must be a multiple of.

    For a model with no shift-equivariance grid (which is run in one piece) this decides how much
    padding it needs: none at all when it takes any size (it may pad inside, as segtune's U-Net does).
    """
    for grid in (1, *_SHIFTS):
        shape = [thin] * spatial_dims
        shape[axis] = 64 + grid
        try:
            y = runner.run(np.zeros((1, in_channels, *shape), dtype=np.float32))
        except Exception as e:
            if _is_oom(e):
                raise
            continue
        if tuple(y.shape[2:]) == tuple(shape):
            return grid
    return _SHIFTS[-1]


def _probe_axis(
    runner: _Runner,
    spatial_dims: int,
    in_channels: int,
    axis: int,
    thin: int,
    rng: np.random.Generator,
    hint: int | None,
) -> tuple[int | None, int | None, int, int, float]:
    """Measure along one axis, in one forward pass of a small batch of elongated inputs.

    Sample 0 is random, sample 1 the same with a slab in the middle replaced: how far the output
    changes is the spread (None when the change reaches everywhere). Samples 2... are windows of
    one longer random input shifted by 1, 2, 4 ... 64 pixels: the smallest shift that shifts the
    output exactly is the grid (None when none does). Returns ``(spread, grid, thin, K, bytes
    per pixel)``; ``thin`` (the other axes' size) grows when the model rejects a size.
    """
    length = 256 if spatial_dims == 2 else 128
    longest = 4096 if spatial_dims == 2 else 512
    slab = 64
    shifts = list(_SHIFTS) if hint is None else sorted({max(1, hint // 2), hint})
    last_error: Exception | None = None
    out_channels, bpp = 1, 1024.0
    while length <= longest:
        shape = [thin] * spatial_dims
        shape[axis] = length + _SHIFTS[-1]
        base = rng.standard_normal((1, in_channels, *shape), dtype=np.float32)

        def window(array: np.ndarray, start: int, stop: int) -> np.ndarray:
            where = [slice(None)] * array.ndim
            where[2 + axis] = slice(start, stop)
            return array[tuple(where)]

        x = window(base, 0, length)
        perturbed = x.copy()
        start = length // 2 - slab // 2
        middle = window(perturbed, start, start + slab)
        middle[...] = rng.standard_normal(middle.shape, dtype=np.float32) * 3 + 1
        batch = np.concatenate([x, perturbed, *(window(base, s, s + length) for s in shifts)])
        try:
            y, bpp = runner.run_measured(batch)
        except Exception as e:  # a size the model rejects: widen the thin axes and try again
            if _is_oom(e) or thin >= 256:
                raise ValueError(f"the model failed on a probe input of shape {tuple(batch.shape)}: {e}") from e
            last_error = e
            thin *= 2
            continue
        _check_output(y, (batch.shape[0], *x.shape[2:]))
        out_channels = int(y.shape[1])
        scale = max(float(np.abs(y).max()), 1e-30)
        diff = np.abs(y[0] - y[1])
        profile = diff.max(axis=tuple(i for i in range(diff.ndim) if i != axis + 1))
        changed = np.flatnonzero(profile > _RELATIVE_SUPPORT * scale)
        if changed.size == 0:
            spread = 0
        elif changed[0] == 0 or changed[-1] == length - 1:
            length *= 2  # the change reaches the probe's ends: the field is wider than the probe
            continue
        else:
            spread = max(start - int(changed[0]), int(changed[-1]) - (start + slab - 1), 0)
        if length - 2 * spread - _SHIFTS[-1] < 16:
            length *= 2  # too little interior left to compare shifted outputs
            continue
        grid = None
        for index, s in enumerate(shifts, start=2):
            lo, hi = spread + 1, length - spread - s - 1
            a = np.take(y[index], np.arange(lo, hi), axis=axis + 1)
            b = np.take(y[0], np.arange(lo + s, hi + s), axis=axis + 1)
            if float(np.abs(a - b).max()) <= _SHIFT_TOLERANCE * scale:
                grid = s
                break
        return spread, grid, thin, out_channels, bpp
    if last_error is not None and length == (256 if spatial_dims == 2 else 128):
        raise ValueError(f"the model failed on every probe input (last error: {last_error})") from last_error
    return None, None, thin, out_channels, bpp


# --- running the model -----------------------------------------------------------------------


class _Runner:
    """The model prepared for inference on one device: an eval-mode copy, BN folded, fast layout."""

    def __init__(self, model: Callable, device: torch.device, precision: str, spatial_dims: int) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.original = model
        self.spatial_dims = spatial_dims
        self.precision = precision
        self.batch_limit = 1 << 30  # lowered when a batch runs out of memory
        self._prepare(device)

    def _prepare(self, device: torch.device) -> None:
        self.device = device
        model = self.original
        self.memory_format = None
        if isinstance(model, torch.nn.Module):
            fast_layout = device.type == "cpu" or (device.type == "cuda" and self.precision != "float32")
            if fast_layout:
                self.memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            model = _prepared_copy(model, device, self.memory_format)
        self.model = model

    def to_cpu(self) -> None:
        self._prepare(torch.device("cpu"))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a batch already on the device; returns float32 output on the device."""
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), self.autocast():
            y = self.model(x)
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"the model must return one tensor, it returned {type(y).__name__}")
        return y.float()

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self.forward(x).cpu().numpy()

    def run_measured(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """Run and estimate the working memory per input pixel from the largest activation."""
        largest = [0]
        handles = []
        if isinstance(self.model, torch.nn.Module):
            def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    largest[0] = max(largest[0], output.numel() * output.element_size())
            handles = [m.register_forward_hook(hook) for m in self.model.modules() if not any(True for _ in m.children())]
        try:
            y = self.run(batch)
        finally:
            for handle in handles:
                handle.remove()
        pixels = batch.shape[0] * int(np.prod(batch.shape[2:]))
        io_bytes = 8.0 * (batch.shape[1] + y.shape[1])
        if largest[0]:
            # a U-Net holds about five full-resolution activations at its peak (skip, upsampled,
            # concatenated, convolved); measured 5.0x for 2D and 3D segtune U-Nets
            return y, 5.0 * largest[0] / pixels + io_bytes
        return y, 1024.0 + io_bytes  # an opaque callable: assume a mid-sized U-Net


# The prepared copy of each model (eval mode, BatchNorm folded, on the device, in the fast
# layout), kept between predictions: preparing copies every weight, which took 0.2-0.4 s for the
# bundled 2D model on 2 CPU cores, as long as the network needs for a 1 MPx image. One entry per
# (model object, device, layout); an entry is used only while the model's weights are the ones
# it was made from (see _weights_fingerprint), so fine-tuning in place gets a fresh copy.
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, tuple[tuple, torch.nn.Module]]] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_LOCK = threading.Lock()


def _weights_fingerprint(model: torch.nn.Module) -> tuple:
    """What changes when any weight or buffer of ``model`` changes: each tensor's identity,
    storage and version counter (torch bumps it on every in-place write: optimiser steps,
    ``load_state_dict``, ``copy_``), and the module's structure (a replaced layer)."""
    return tuple(
        (name, id(t), t.data_ptr(), t._version, t.dtype, t.device)
        for name, t in chain(model.named_parameters(), model.named_buffers())
    )


def _prepared_copy(model: torch.nn.Module, device: torch.device, memory_format: Any) -> torch.nn.Module:
    """An inference copy of ``model`` on ``device``: cached, see :data:`_PREPARED`."""
    key = (str(device), str(memory_format))
    fingerprint = _weights_fingerprint(model)
    with _PREPARED_LOCK:
        try:
            entry = _PREPARED.get(model, {}).get(key)
        except TypeError:  # not weak-referenceable: no cache
            entry = None
    if entry is not None and entry[0] == fingerprint:
        return entry[1]
    try:
        prepared = copy.deepcopy(model)  # leave the caller's module (mode, device, layout) alone
        copied = True
    except Exception:  # some modules cannot be copied; run the original then
        logger.info("could not copy the model; running it in place", exc_info=True)
        prepared, copied = model, False
    prepared.eval()
    if copied:
        prepared = _fold_batchnorm(prepared)
    prepared.to(device)
    if memory_format is not None:
        prepared.to(memory_format=memory_format)
    if copied:
        with _PREPARED_LOCK, contextlib.suppress(TypeError):
            _PREPARED.setdefault(model, {})[key] = (fingerprint, prepared)
    return prepared


def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold eval-mode BatchNorm into the convolution before it (inside ``nn.Sequential``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    for module in list(model.modules()):
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if (
                isinstance(conv, convs)
                and isinstance(norm, norms)
                and norm.track_running_stats
                and norm.running_mean is not None
                and conv.out_channels == norm.num_features
            ):
                try:
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = torch.nn.Identity()
                except Exception:  # an unusual conv: keep it as it is
                    logger.debug("could not fold %s into %s", norm, conv, exc_info=True)
    return model


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text
    )


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


# --- planning --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePlan:
    """How an image is cut into tiles.

    Attributes
    ----------
    shape
        The image's spatial shape.
    padded_shape
        ``shape`` rounded up to the grid (``blend="exact"``); the model sees this.
    tile
        Window shape fed to the model (all tiles alike, so they can be batched).
    core
        Stride of the kept regions; tile ``i`` along an axis keeps ``[i*core, (i+1)*core)``.
    counts
        Tiles per axis.
    batch_size
        Tiles per forward pass.
    blend
        ``"exact"`` or ``"gaussian"``.
    """

    shape: tuple[int, ...]
    padded_shape: tuple[int, ...]
    tile: tuple[int, ...]
    core: tuple[int, ...]
    counts: tuple[int, ...]
    batch_size: int
    blend: str = "exact"
    starts: tuple[tuple[int, ...], ...] = field(default=(), repr=False)

    @property
    def n_tiles(self) -> int:
        return int(np.prod(self.counts)) if self.blend == "exact" else int(np.prod([len(s) for s in self.starts]))

    @property
    def work(self) -> float:
        """Pixels computed per pixel of the image (1.0 = one untiled pass)."""
        return self.n_tiles * float(np.prod(self.tile)) / float(np.prod(self.shape))

    def windows(self) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]]:
        """Per tile: window (padded coordinates), kept region in the image, kept region in the window."""
        if self.blend != "exact":
            for start in product(*self.starts):
                window = tuple(slice(s, s + t) for s, t in zip(start, self.tile, strict=True))
                yield window, window, tuple(slice(0, t) for t in self.tile)
            return
        for index in product(*(range(n) for n in self.counts)):
            window, kept, inner = [], [], []
            for i, n, c, t, size, padded in zip(index, self.counts, self.core, self.tile, self.shape, self.padded_shape, strict=True):
                k0, k1 = i * c, min((i + 1) * c, size)
                if n == 1 or i == 0:
                    w0 = 0
                elif i == n - 1:
                    w0 = padded - t
                else:  # the halo on both sides; at the image's ends the window shifts inwards
                    w0 = min(max(k0 - (t - c) // 2, 0), padded - t)
                window.append(slice(w0, w0 + t))
                kept.append(slice(k0, k1))
                inner.append(slice(k0 - w0, k1 - w0))
            yield tuple(window), tuple(kept), tuple(inner)


def plan_tiles(
    shape: Sequence[int],
    geometry: ModelGeometry,
    *,
    memory_limit: float,
    tile_shape: int | Sequence[int] | None = None,
    batch_size: int | None = None,
    chunks: Sequence[int] | None = None,
    n_items: int = 1,
    max_batch: int = 16,
    max_batch_pixels: int | None = None,
) -> TilePlan:
    """Choose tile and core shapes for exact tiling of an image of spatial ``shape``.

    Without ``tile_shape`` the planner minimises the pixels computed (halos included) under
    ``memory_limit`` bytes per forward pass; with it, the tile is a ceiling: per axis the fewest
    tiles no larger than it, each as small as that count allows. ``chunks`` (of a zarr output) make cores whole chunks
    where possible, so every chunk is written once, completely. ``n_items`` images share the plan;
    the batch (unless given) is what memory allows, at most ``max_batch`` tiles and
    ``max_batch_pixels`` pixels.

    Returns
    -------
    TilePlan
    """
    dims = len(shape)
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"the image has an empty axis: spatial shape {shape}")
    d, h = geometry.divisor, geometry.halo
    padded = tuple(_ceil_to(s, di) for s, di in zip(shape, d, strict=True))
    bpp = geometry.bytes_per_pixel
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    per_forward = memory_limit / (batch_size or 1)

    if tile_shape is not None:
        # the tile is a ceiling: per axis the fewest tiles that fit under it, each as small as they can be
        wanted = _per_axis(tile_shape, dims, "tile_shape", minimum=1)
        cores, counts_list, tiles = [], [], []
        for axis, (want, length, di, hi) in enumerate(zip(wanted, padded, d, h, strict=True)):
            chunk = None if chunks is None else int(chunks[axis])
            options = _axis_options(length, di, hi, chunk, smallest_core=1)
            fitting = [o for o in options if o[2] <= max(want, di)]
            if fitting:
                core, n, tile = min(fitting, key=lambda o: (o[1], o[2]))
            else:
                core, n, tile = min(options, key=lambda o: o[2])
                _warn(
                    f"tile {want} on axis {'ZYX'[-dims:][axis]} leaves no room inside the model's halo of {hi} px; "
                    f"using {tile}"
                )
            cores.append(core)
            counts_list.append(n)
            tiles.append(tile)
        counts = tuple(counts_list)
    else:
        options = [
            _axis_options(length, di, hi, None if chunks is None else int(chunks[axis]))
            for axis, (length, di, hi) in enumerate(zip(padded, d, h, strict=True))
        ]
        best = None
        for combo in product(*options):
            tile_pixels = math.prod(o[2] for o in combo)
            work = math.prod(o[1] * o[2] for o in combo)
            fits = tile_pixels * bpp <= per_forward
            rank = (not fits, work if fits else tile_pixels, math.prod(o[1] for o in combo))
            if best is None or rank < best[0]:
                best = (rank, combo)
        assert best is not None
        if best[0][0]:
            _warn(
                f"even the smallest tile {tuple(o[2] for o in best[1])} needs about "
                f"{_format_bytes(math.prod(o[2] for o in best[1]) * bpp)}, over the memory limit of "
                f"{_format_bytes(per_forward)}; trying anyway"
            )
        cores = [o[0] for o in best[1]]
        counts = tuple(o[1] for o in best[1])
        tiles = [o[2] for o in best[1]]
    tile_pixels = math.prod(tiles)
    total = n_items * math.prod(counts)
    if batch_size is None:
        batch_size = int(max(1, min(total, max_batch, memory_limit // max(tile_pixels * bpp, 1.0))))
        if max_batch_pixels is not None:  # a CPU gains nothing from batching large tiles
            batch_size = max(1, min(batch_size, max_batch_pixels // tile_pixels))
    return TilePlan(shape, padded, tuple(tiles), tuple(cores), counts, int(batch_size))


def _axis_options(
    length: int, divisor: int, halo: int, chunk: int | None, smallest_core: int | None = None
) -> list[tuple[int, int, int]]:
    """(core, count, tile) choices along one axis: for each tile count, the smallest aligned core.

    Cores below ``smallest_core`` (default: the halo, below which halos cost more than twice the
    core) are left out, except the smallest possible one.
    """
    unit = divisor if chunk is None else math.lcm(divisor, chunk)
    if unit > length:
        unit = divisor
    options: dict[int, tuple[int, int, int]] = {}
    smallest = max(unit, min(halo if smallest_core is None else smallest_core, length))
    count = 1
    while True:
        core = min(length, _ceil_to(-(-length // count), unit))
        n = -(-length // core)
        tile = length if n == 1 else min(length, core + halo * min(2, n - 1))
        options.setdefault(core, (core, n, tile))
        if core <= smallest or core <= unit:
            if core > unit and smallest_core is None:  # keep the last resort of the smallest tile
                n = -(-length // unit)
                options.setdefault(unit, (unit, n, min(length, unit + halo * min(2, n - 1))))
            break
        # jump to the next count that gives a smaller core
        count = max(count + 1, -(-length // (core - unit)))
    return list(options.values())


def _gaussian_plan(
    shape: Sequence[int], roi: Sequence[int], overlap: Sequence[float], batch_size: int
) -> TilePlan:
    """Windows exactly as MONAI's ``sliding_window_inference`` places them."""
    image = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
    starts = []
    for size, r, o in zip(image, roi, overlap, strict=True):
        interval = r if r == size else max(int(r * (1 - o)), 1)
        count = 1
        for i in range(math.ceil(size / interval)):
            if i * interval + r >= size:
                count = i + 1
                break
        axis_starts = []
        for i in range(count):
            start = i * interval
            axis_starts.append(start - max(start + r - size, 0))
        starts.append(tuple(axis_starts))
    return TilePlan(
        tuple(shape), image, tuple(roi), tuple(roi), tuple(len(s) for s in starts), batch_size, "gaussian", tuple(starts)
    )


def _gaussian_importance(roi: Sequence[int], sigma_scale: Sequence[float]) -> np.ndarray:
    """MONAI's ``compute_importance_map(mode="gaussian")``: separable Gaussian, floored at its minimum."""
    weights = None
    for size, scale in zip(roi, sigma_scale, strict=True):
        sigma = size * scale
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float)
        g = torch.exp(x**2 / (-2 * sigma**2))
        weights = g if weights is None else weights.unsqueeze(-1) * g
    assert weights is not None
    floor = max(float(weights.min()), 1e-3)
    return torch.clamp(weights, min=floor).numpy()


# --- input and output ------------------------------------------------------------------------


def _reflect_index(index: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Map padded coordinates to source coordinates (reflect without repeating the edge, or edge)."""
    if mode == "edge" or size == 1:
        return np.clip(index, 0, size - 1)
    period = 2 * (size - 1)
    index = np.abs(index) % period
    return np.where(index >= size, period - index, index)


class _Source:
    """Reads windows of an array-like with shape ``(*items, C, *spatial)``, padding beyond its ends."""

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


def _array_reader(image: Any) -> Callable[[tuple[int, ...], tuple[slice, ...]], np.ndarray]:
    def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
        block = image[(*item, slice(None), *box)]
        if hasattr(block, "compute"):
            block = block.compute()
        return np.asarray(block)

    return read


def _as_array(image: Any) -> Any:
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


def _warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this module."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _memory_budget(device: torch.device, memory_limit: float | str | None) -> float:
    if memory_limit is not None:
        return parse_bytes(memory_limit)
    available = _available_memory(device)
    fraction = 0.7 if device.type == "cuda" else 0.5
    return max(available * fraction, 64e6)


class _Sink:
    """Where kept regions go: a numpy array (or memmap) or a zarr array, indexed by item."""

    def __init__(self, array: Any, prefix: Callable[[tuple[int, ...]], tuple]) -> None:
        self.array = array
        self.prefix = prefix
        self.is_zarr = _is_zarr(array)

    def write(self, item: tuple[int, ...], region: tuple[slice, ...], block: np.ndarray) -> None:
        self.array[(*self.prefix(item), *region)] = block


def _is_zarr(array: Any) -> bool:
    return type(array).__module__.split(".")[0] == "zarr"


def _open_output(
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
        _warn(f"the output ({_format_bytes(needed)}) would not fit in memory; writing it to the zarr store {folder}")
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


# --- the engine ------------------------------------------------------------------------------


@dataclass
class _Job:
    item: tuple[int, ...]
    window: tuple[slice, ...]
    kept: tuple[slice, ...]
    inner: tuple[slice, ...]


class _TileTooLarge(Exception):
    """One tile does not fit in the device's memory (raised after a batch of one fails)."""


SkipTest = Callable[[np.ndarray, _Job], bool]


@dataclass
class _Progress:
    done: int = 0  # tiles written, over all items
    items_done: int = 0  # leading items whose tiles are all written
    total: int = 0


def _run_tiles(
    runner: _Runner,
    source: _Source,
    items: list[tuple[int, ...]],
    plan: TilePlan,
    sink: _Sink,
    *,
    out_channels: int,
    activation: Callable[[torch.Tensor], torch.Tensor] | None,
    skip: SkipTest | None,
    skip_value: Sequence[float] | float,
    reporter: Reporter,
    state: _Progress,
) -> None:
    """Run every tile of every item in batches (tiles of different items batch together)."""
    per_item = plan.n_tiles
    jobs = [_Job(item, *w) for item in items for w in plan.windows()]
    first_item = state.items_done
    fill = np.reshape(np.asarray(skip_value, dtype=np.float32), (-1,) + (1,) * len(plan.tile))
    batch_size = plan.batch_size

    def read(batch: list[_Job]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [source.window(job.item, job.window) for job in batch]

    # read the next batch while the model runs on this one
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtune-read") as pool:
        position = 0
        pending = pool.submit(read, jobs[:batch_size]) if jobs else None
        while position < len(jobs):
            assert pending is not None
            batch = jobs[position : position + batch_size]
            windows = pending.result()
            following = position + len(batch)
            pending = pool.submit(read, jobs[following : following + batch_size]) if following < len(jobs) else None
            todo = [i for i, job in enumerate(batch) if skip is None or not skip(windows[i][0], job)]
            outputs: dict[int, np.ndarray] = {}
            if todo:
                stacked = np.stack([windows[i][1] for i in todo])
                try:
                    results = _forward_splitting(runner, stacked, activation)
                except _TileTooLarge:
                    if pending is not None:
                        pending.cancel()
                    raise
                expected = (out_channels, *plan.tile)
                if tuple(results[0].shape) != expected:
                    raise ValueError(
                        f"the model returned shape {(len(results), *results[0].shape)} for input "
                        f"{tuple(stacked.shape)}; expected {(len(results), *expected)}"
                    )
                outputs = dict(zip(todo, results, strict=True))
            for i, job in enumerate(batch):
                if i in outputs:
                    block = outputs[i][(slice(None), *job.inner)]
                else:
                    block = np.broadcast_to(fill, (out_channels, *(s.stop - s.start for s in job.kept)))
                sink.write(job.item, job.kept, block)
            position = following
            state.done += len(batch)
            state.items_done = first_item + position // per_item
            batch_size = max(1, min(batch_size, runner.batch_limit))
            reporter.step(state.done, total=state.total, message=f"{state.done}/{state.total} tiles")


def _forward_splitting(
    runner: _Runner, stacked: np.ndarray, activation: Callable[[torch.Tensor], torch.Tensor] | None
) -> list[np.ndarray]:
    """Forward a batch; on out-of-memory halve it (down to one tile, then give up to the caller)."""
    try:
        x = torch.from_numpy(stacked)
        if runner.device.type == "cuda":
            x = x.pin_memory().to(runner.device, non_blocking=True)
        else:
            x = x.to(runner.device)
        y = runner.forward(x)
        if activation is not None:
            y = activation(y)
        return list(y.cpu().numpy())
    except Exception as e:
        if not _is_oom(e):
            raise
        _free_device_memory(runner.device)
        if stacked.shape[0] == 1:
            raise _TileTooLarge(str(e)) from e
        half = stacked.shape[0] // 2
        runner.batch_limit = max(1, half)
        logger.warning("out of memory with %d tiles per pass; retrying with %d", stacked.shape[0], half)
        return _forward_splitting(runner, stacked[:half], activation) + _forward_splitting(runner, stacked[half:], activation)


def _run_gaussian(
    runner: _Runner,
    source: _Source,
    items: list[tuple[int, ...]],
    plan: TilePlan,
    sink_factory: Callable[[int], _Sink],
    *,
    sigma_scale: Sequence[float],
    activation: Callable[[torch.Tensor], torch.Tensor] | None,
    reporter: Reporter,
) -> _Sink:
    """MONAI-compatible Gaussian blending, accumulated in memory per item, then written whole."""
    weights = _gaussian_importance(plan.tile, sigma_scale)
    windows = [w for w, _, _ in plan.windows()]
    total = len(items) * len(windows)
    done = 0
    sink: _Sink | None = None
    pad = [max(r - s, 0) for s, r in zip(plan.shape, plan.tile, strict=True)]
    before = [p // 2 for p in pad]
    for item in items:
        accumulated = None
        count = np.zeros(plan.padded_shape, dtype=np.float32)
        for w in windows:
            count[w] += weights
        for start in range(0, len(windows), plan.batch_size):
            chunk = windows[start : start + plan.batch_size]
            shifted = [tuple(slice(s.start - b, s.stop - b) for s, b in zip(w, before, strict=True)) for w in chunk]
            stacked = np.stack([source.window(item, w)[1] for w in shifted])
            try:
                results = _forward_splitting(runner, stacked, None)
            except _TileTooLarge as e:
                raise MemoryError(f"one window of {plan.tile} does not fit in memory; pass a smaller tile_shape") from e
            for w, y in zip(chunk, results, strict=True):
                if accumulated is None:
                    accumulated = np.zeros((y.shape[0], *plan.padded_shape), dtype=np.float32)
                accumulated[(slice(None), *w)] += y * weights
            done += len(chunk)
            reporter.step(done, total=total, message=f"{done}/{total} windows")
        assert accumulated is not None
        accumulated /= count
        crop = tuple(slice(b, b + s) for b, s in zip(before, plan.shape, strict=True))
        result = accumulated[(slice(None), *crop)]
        if activation is not None:
            result = activation(torch.from_numpy(np.ascontiguousarray(result))[None])[0].numpy()
        if sink is None:
            sink = sink_factory(result.shape[0])
        sink.write(item, tuple(slice(0, s) for s in plan.shape), result)
    assert sink is not None
    return sink


def _one_thread_on_a_busy_cpu(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run on one torch thread while other processes keep every CPU core busy.

    PyTorch's OpenMP threads spin while they wait for each other at the end of each layer; when
    the cores are oversubscribed a spinning thread holds the core its partner needs. On 2 shared
    cores at load average 7-8 the bundled nuclei model's 1 MPx prediction took 1.1 s on two
    spinning threads and 0.5 s on one (two passively waiting threads, as ``segtune`` sets up
    before torch loads, also 0.5 s). A quiet machine keeps all its threads; the count is only
    ever lowered, for the call, and restored after.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            on_cpu = select_device(kwargs.get("device", "auto")).type == "cpu"
            busy = os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
        except (ValueError, OSError, AttributeError):  # a bad device is reported by func; no load average on Windows
            on_cpu = busy = False
        threads = torch.get_num_threads()
        if not (on_cpu and busy and threads > 1):
            return func(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@_one_thread_on_a_busy_cpu
def _execute(
    model: Callable,
    source: _Source,
    items: list[tuple[int, ...]],
    *,
    spatial_dims: int,
    in_channels: int,
    make_output: Callable[[int, TilePlan], _Sink],
    tile_shape: Any,
    overlap: Any,
    batch_size: int | None,
    device: str | torch.device,
    blend: str,
    precision: str,
    memory_limit: Any,
    halo: Any,
    divisor: Any,
    skip: SkipTest | None,
    skip_value: Any,
    sigma_scale: Any,
    activation: Callable[[torch.Tensor], torch.Tensor] | None,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    output_chunks: tuple[int, ...] | None = None,
    cpu_tile_pixels: int | None = None,
) -> Any:
    """Plan, run and (on out-of-memory) re-plan; returns the output array.

    ``cpu_tile_pixels`` caps the planned tile on the CPU (when no tile shape is given), so that
    a large image is several tiles and its progress moves, at the price of some halo pixels."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    shape = tuple(int(s) for s in source.shape)
    torch_device = select_device(device)
    runner = _Runner(model, torch_device, precision, spatial_dims)
    reporter = Reporter(progress, cancel, stage="predict")
    reporter.check()
    cpu = torch_device.type == "cpu"

    if blend == "gaussian":
        overlaps = _per_axis_float(0.25 if overlap is None else overlap, spatial_dims, "overlap")
        sigmas = _per_axis_float(sigma_scale, spatial_dims, "sigma_scale", upper=None)
        if tile_shape is None:
            geometry = _geometry(runner, model, spatial_dims, in_channels, halo, divisor)
            budget = _memory_budget(torch_device, memory_limit)
            side = (budget / geometry.bytes_per_pixel) ** (1 / spatial_dims)
            roi = tuple(
                min(_ceil_to(s, d), max(d, _floor_to(int(side), d))) for s, d in zip(shape, geometry.divisor, strict=True)
            )
        else:
            roi = _per_axis(tile_shape, spatial_dims, "tile_shape", minimum=1)
        plan = _gaussian_plan(shape, roi, overlaps, batch_size or 4)
        gaussian_source = _Source(source.read_box, shape, "constant", source.transform)
        sink = _run_gaussian(
            runner, gaussian_source, items, plan, lambda k: make_output(k, plan),
            sigma_scale=sigmas, activation=activation, reporter=reporter,
        )
        return sink.array

    if overlap is not None:
        _warn("overlap has no effect with blend='exact': tiles overlap by the model's measured halo")
    geometry = _geometry(runner, model, spatial_dims, in_channels, halo, divisor)
    assert geometry.out_channels is not None
    budget = _memory_budget(torch_device, memory_limit)
    padded = tuple(_ceil_to(s, d) for s, d in zip(shape, geometry.divisor, strict=True))
    # the same rule as UNet's internal padding: reflect, unless an axis is thinner than its pad
    pad_mode = "reflect" if all(p - s < s for p, s in zip(padded, shape, strict=True)) else "edge"
    exact_source = _Source(source.read_box, shape, pad_mode, source.transform)
    if not geometry.local and tile_shape is None and math.prod(padded) * geometry.bytes_per_pixel <= budget:
        tile_shape = padded  # nothing tiled is exact for such a model; one pass is, when it fits

    def make_plan(limit: float, batch: int | None, on_cpu: bool) -> TilePlan:
        if on_cpu and cpu_tile_pixels and tile_shape is None:
            limit = min(limit, cpu_tile_pixels * geometry.bytes_per_pixel * (batch or 1))
        return plan_tiles(
            shape, geometry, memory_limit=limit, tile_shape=tile_shape, batch_size=batch, chunks=output_chunks,
            n_items=len(items), max_batch=16 if on_cpu else 64, max_batch_pixels=(1 << 22) if on_cpu else None,
        )

    plan = make_plan(budget, batch_size, cpu)
    logger.info("tiling %s as %s (%.3fx the pixels of one untiled pass) on %s", shape, plan, plan.work, torch_device)
    sink = make_output(geometry.out_channels, plan)
    state = _Progress(total=len(items) * plan.n_tiles)
    try:
        while state.items_done < len(items):
            try:
                _run_tiles(
                    runner, exact_source, items[state.items_done :], plan, sink,
                    out_channels=geometry.out_channels, activation=activation, skip=skip,
                    skip_value=skip_value, reporter=reporter, state=state,
                )
            except _TileTooLarge as e:
                redo = state.done - state.items_done * plan.n_tiles  # the interrupted item starts again
                smallest = math.prod(2 * h + d for h, d in zip(geometry.halo, geometry.divisor, strict=True))
                if math.prod(plan.tile) > smallest:
                    tile_shape = None
                    half = math.prod(plan.tile) * geometry.bytes_per_pixel / 2
                    _warn(f"out of memory with tile {plan.tile}; retrying with smaller tiles")
                    new_plan = make_plan(half, 1, runner.device.type == "cpu")
                elif runner.device.type != "cpu":
                    _warn(f"out of memory on {runner.device} even with tile {plan.tile}; falling back to the CPU")
                    runner.to_cpu()
                    new_plan = make_plan(_memory_budget(runner.device, None), None, True)
                else:
                    raise MemoryError(
                        f"out of memory on the CPU even with the smallest tile {plan.tile}: {e}"
                    ) from None
                state.done -= redo
                state.total = state.done + (len(items) - state.items_done) * new_plan.n_tiles
                plan = new_plan
    finally:
        _record_state(sink.array, state, plan)
    return sink.array


def _record_state(array: Any, state: _Progress, plan: TilePlan) -> None:
    """Note in a zarr output's attributes whether it is complete (a cancelled run leaves False)."""
    if _is_zarr(array):
        with contextlib.suppress(Exception):
            array.attrs["segtune"] = {
                "complete": state.done >= state.total,
                "tiles_done": state.done,
                "tiles_total": state.total,
                "tile": list(plan.tile),
                "core": list(plan.core),
            }


# --- public API ------------------------------------------------------------------------------


def _on_local_threads(func: Callable[..., Any]) -> Callable[..., Any]:
    """Compute dask inputs on dask's local threads unless a dask.distributed client may exist.

    Without a scheduler named, every dask ``compute`` first imports ``distributed`` to look for
    a client (0.5-0.7 s the first time, on the first mask's path). A client can only exist once
    ``distributed`` is imported, so until then the local threaded scheduler -- the one dask
    would pick anyway -- is named outright.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "dask" not in sys.modules or "distributed" in sys.modules:
            return func(*args, **kwargs)
        import dask
        import dask.threaded

        if dask.config.get("scheduler", None) is not None:
            return func(*args, **kwargs)
        # the function itself: a scheduler's name would make dask import distributed to check it
        with dask.config.set(scheduler=dask.threaded.get):
            return func(*args, **kwargs)

    return wrapper


@_on_local_threads
def predict_raw(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: Any,
    *,
    spatial_dims: int,
    tile_shape: int | Sequence[int] | None = None,
    overlap: float | Sequence[float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    blend: str = "exact",
    out: Any = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    precision: str = "float32",
    memory_limit: float | str | None = None,
    halo: int | Sequence[int] | None = None,
    divisor: int | Sequence[int] | None = None,
    skip_threshold: float | None = None,
    skip_mask: Any = None,
    skip_value: float | Sequence[float] = 0.0,
    sigma_scale: float | Sequence[float] = 0.125,
    overwrite: bool = False,
) -> Any:
    """Apply ``model`` to ``image`` tile by tile; return what one untiled pass would give.

    Parameters
    ----------
    model
        A torch module (run as an eval-mode copy; the caller's module is not changed) or any
        callable mapping a ``(N, C, *spatial)`` float tensor to ``(N, K, *spatial)``.
    image
        ``(C, Y, X)`` for ``spatial_dims=2`` or ``(C, Z, Y, X)`` for 3: numpy, dask, zarr or a
        torch tensor. Read window by window, never whole; values are used as they are (no
        normalisation, see :func:`predict`).
    spatial_dims
        2 or 3.
    tile_shape
        Window fed to the model (an int for all axes or one per axis). Default: as large as
        ``memory_limit`` allows, chosen to minimise the pixels computed.
    overlap
        Gaussian blending only: fraction of the window neighbouring windows share (0.25).
        Exact tiling overlaps by the model's halo and ignores it.
    batch_size
        Tiles per forward pass (default: what memory allows, at most 16 on a CPU).
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    blend
        ``"exact"``: stitched output equals one untiled pass (see the module notes for sizes that
        are not multiples of the model's grid). ``"gaussian"``: windows blended with MONAI's
        Gaussian importance map (``sigma_scale``), placed as ``sliding_window_inference`` places
        them, padding with zeros only where the image is smaller than the window.
    out
        None: a numpy array (or, when that would not fit in memory, a zarr store in a temporary
        folder, with a warning). A path: a new zarr array there (NaN where not yet written, so a
        cancelled run leaves every chunk either final or empty). A numpy/zarr array of shape
        ``(K, *spatial)``: written into.
    progress, cancel
        See :mod:`segtune.core.progress`; one step per batch of tiles.
    precision
        ``"float32"`` (default), or ``"bfloat16"``/``"float16"`` autocast (CUDA; faster, about
        1e-2 relative error).
    memory_limit
        Bytes (or ``"2GB"``) one forward pass may use; default half the free RAM on a CPU, 70 %
        of the free memory on a GPU.
    halo, divisor
        The model's receptive-field halo and grid, when known; measured once per model otherwise
        (:func:`probe_model`).
    skip_threshold, skip_mask
        Exact tiling: skip tiles whose kept region holds no pixel above ``skip_threshold`` (any
        channel) or no True pixel of ``skip_mask`` (spatial shape); their output is
        ``skip_value`` (one value or one per output channel).
    sigma_scale
        Gaussian blending: sigma as a fraction of the window (MONAI's default 0.125).
    overwrite
        Replace an existing zarr store at ``out``.

    Returns
    -------
    numpy.ndarray or zarr.Array
        float32 ``(K, *spatial)``.

    Raises
    ------
    ValueError
        For inconsistent shapes or arguments, or a model whose output changes the spatial shape.
    segtune.core.progress.Cancelled
        When ``cancel`` is set; every tile written so far is final.

    Examples
    --------
    >>> from segtune.core.models.unet import UNet
    >>> net = UNet(spatial_dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4)
    >>> predict_raw(net, np.zeros((1, 100, 60), np.float32), spatial_dims=2, device="cpu").shape
    (1, 100, 60)
    """
    _check_spatial_dims(spatial_dims)
    image = _as_array(image)
    if len(image.shape) != spatial_dims + 1:
        axes = "CYX" if spatial_dims == 2 else "CZYX"
        raise ValueError(f"image must have shape ({', '.join(axes)}) for spatial_dims={spatial_dims}, got {tuple(image.shape)}")
    shape = tuple(int(s) for s in image.shape[1:])
    in_channels = int(image.shape[0])
    skip = _make_skip(skip_threshold, skip_mask, shape)
    user_chunks = None
    if out is not None and not isinstance(out, (str, os.PathLike)) and _is_zarr(out):
        user_chunks = tuple(int(c) for c in out.chunks[1:])

    def make_output(k: int, plan: TilePlan) -> _Sink:
        chunks = (k, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))
        return _Sink(_open_output(out, (k, *shape), chunks, overwrite), lambda item: (slice(None),))

    source = _Source(_array_reader(image), shape, "reflect")
    return _execute(
        model, source, [()], spatial_dims=spatial_dims, in_channels=in_channels, make_output=make_output,
        tile_shape=tile_shape, overlap=overlap, batch_size=batch_size, device=device, blend=blend,
        precision=precision, memory_limit=memory_limit, halo=halo, divisor=divisor, skip=skip,
        skip_value=skip_value, sigma_scale=sigma_scale, activation=None, progress=progress, cancel=cancel,
        output_chunks=user_chunks,
    )


def _make_skip(skip_threshold: float | None, skip_mask: Any, shape: tuple[int, ...]) -> SkipTest | None:
    """A test telling, from a tile's raw window, whether its kept region has no signal."""
    if skip_threshold is None and skip_mask is None:
        return None
    mask = None
    if skip_mask is not None:
        mask = np.asarray(skip_mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"skip_mask has shape {mask.shape} but the image's spatial shape is {shape}")

    def skip(raw: np.ndarray, job: _Job) -> bool:
        if mask is not None and not mask[job.kept].any():
            return True
        if skip_threshold is not None and not (raw[(slice(None), *job.inner)] > skip_threshold).any():
            return True
        return False

    return skip


@dataclass
class PredictionResult:
    """What :func:`predict` returns.

    Attributes
    ----------
    probabilities
        float32 ``(T, K, Z, Y, X)`` activated model output (sigmoid or softmax), numpy or zarr.
    labels
        ``(T, Z, Y, X)``: a uint8 0/1 mask, class indices (semantic head) or, with
        ``instances=True``, int32 instance labels (each object one number across the stack).
    head
        ``"binary"``, ``"three_class"`` or ``"semantic"``.
    classes
        Class names from the model's config.
    diameter
        The object diameter the image was zoomed for (None when it was not zoomed).
    min_size
        The smallest object kept, in pixels (voxels): as given, or the default rule's.
    """

    probabilities: Any
    labels: np.ndarray | None
    head: str
    classes: list[str]
    diameter: float | None = None
    min_size: int = 0


@_on_local_threads
def predict(
    model: Any,
    image: Any,
    *,
    config: Mapping[str, Any] | None = None,
    axes: str | None = None,
    channel: int | str | Sequence[int | str] | None = None,
    channel_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    instances: bool = False,
    split: bool = False,
    min_distance: int | None = None,
    min_size: int | str | None = 0,
    max_size: int | None = None,
    fill_holes: bool = False,
    normalize: bool = True,
    labels: bool = True,
    tile_shape: int | Sequence[int] | None = None,
    overlap: float | Sequence[float] | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "auto",
    blend: str = "exact",
    precision: str = "float32",
    memory_limit: float | str | None = None,
    skip_threshold: float | None = None,
    out: Any = None,
    diameter: float | str | None = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PredictionResult:
    """Segment an image or stack with a model: normalise, tile, activate, threshold, label.

    Parameters
    ----------
    model
        A model name or folder (loaded with :func:`segtune.core.models.store.load_model`), the
        ``(model, config)`` pair ``load_model`` returns, or a torch module/callable with ``config``.
    image
        An :class:`segtune.core.io.ImageData` (from ``open_image``) or an array (numpy/dask/zarr)
        whose dimensions ``axes`` names (default by number of dimensions: ``YX``, ``ZYX``,
        ``CZYX``, ``TCZYX``).
    config
        The model's config (``head``, ``architecture.spatial_dims``/``in_channels``,
        ``normalization``, ``classes``, ``object_diameter``) when ``model`` is a module.
    axes
        Dimension letters of an array ``image`` (subset of ``TCZYX`` in that order).
    channel
        Channel(s) to feed the model, by index or name; required when the image has more
        channels than the model takes.
    channel_names
        Names for an array ``image``'s channels (an ``ImageData`` brings its own).
    threshold
        Foreground probability threshold.
    instances
        Label objects: connected components (binary head; ``split`` separates touching objects
        with a distance-transform watershed) or a seeded watershed (three-class head; ``split``
        seeds it at distance peaks instead of interior components). A config with
        ``"split_instances": true`` (the bundled nuclei models) always splits.
    min_distance
        Seed spacing for ``split`` (default a quarter of the object diameter, a third for
        three-class heads: the ``diameter`` used, else the config's ``object_diameter``, else 5).
    min_size, max_size, fill_holes
        Object filters (pixels in 2D, voxels in 3D). ``min_size="auto"`` (or None) drops objects
        smaller than :func:`segtune.core.postprocess.default_min_size` of the object diameter
        (the ``diameter`` used, else the config's ``object_diameter``), 10 px without one.
    normalize
        Apply the config's normalisation (percentiles per channel over the whole image).
    labels
        Compute ``labels`` (False: probabilities only, e.g. for an output that does not fit in memory).
    tile_shape, overlap, batch_size, device, blend, precision, memory_limit, skip_threshold
        As in :func:`predict_raw`; skipped tiles read as background.
    out
        Where the probabilities go (see :func:`predict_raw`), shape ``(T, K, Z, Y, X)``.
    diameter
        Typical object diameter in the image, in pixels: the image is zoomed in Y and X by
        ``config["object_diameter"] / diameter`` before prediction and the probabilities are
        zoomed back, so a model trained on one magnification serves others. ``"auto"``
        estimates it (from the first time point) for models whose config asks for it
        (``"auto_diameter": true``, the bundled nuclei models) and leaves other models' input
        as it is; ``None`` or 0 never zooms. See :func:`segtune.core.diameter.resolve_diameter`.
    progress, cancel
        See :mod:`segtune.core.progress`. One ``"predict"`` stage counts the diameter estimate,
        the batches of tiles, and the planes (time points for a 3D model) labelled; ``message``
        names the phase.

    Returns
    -------
    PredictionResult
        With ``diameter`` the diameter used (None when the image was not zoomed) and ``min_size``
        the smallest object kept.

    Raises
    ------
    ValueError
        For a channel that does not exist, a channel count the model cannot take, or a config
        without the needed fields.
    """
    model, config = _resolve_model(model, config, device)
    head = str(config.get("head", "binary"))
    architecture = config.get("architecture", {}) or {}
    spatial_dims = int(architecture.get("spatial_dims", 2))
    in_channels = int(architecture.get("in_channels", 1))
    classes = list(config.get("classes") or [])
    _check_spatial_dims(spatial_dims)

    data, names, pixel_axes = _as_tczyx(image, axes, channel_names)
    from segtune.core.normalize import check_pixels

    check_pixels(data)
    data, names, channel = _colour_channel(data, names, channel, in_channels)
    n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)
    chosen = _select_channels(channel, names, n_c, in_channels)

    from segtune.core import diameter as sizing

    n_units = n_t * n_z if spatial_dims == 2 else n_t  # planes (time points) to label
    phases = _Phases(progress, cancel, labelling=n_units if labels and head != "image" else 0)
    wants_estimate = isinstance(diameter, str) and config.get("object_diameter") and config.get("auto_diameter")
    if wants_estimate:
        phases.start("estimating the object diameter")
    used_diameter, zoom = sizing.resolve_diameter(diameter, config, _diameter_sample(data, chosen, config, diameter))
    phases.done_one()
    original_yx, final_out = (n_y, n_x), out
    if zoom != 1.0:
        # predict on an in-memory copy zoomed to the model's object size, then zoom back
        data = sizing.rescale_stack(data, chosen, zoom)
        chosen, out = list(range(len(chosen))), None
        n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)

    transform = None
    if normalize:
        transform = _normalizer(data, chosen, config.get("normalization"))

    if spatial_dims == 2:
        items = [(t, z) for t in range(n_t) for z in range(n_z)]
        shape = (n_y, n_x)

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            t, z = item
            return np.stack([_compute(data[t, c, z][box]) for c in chosen])

        def prefix(item: tuple[int, ...]) -> tuple:
            return (item[0], slice(None), item[1])

        chunk_of = lambda k, plan: (1, k, 1, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))  # noqa: E731
    else:
        items = [(t,) for t in range(n_t)]
        shape = (n_z, n_y, n_x)

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            return np.stack([_compute(data[item[0], c][box]) for c in chosen])

        def prefix(item: tuple[int, ...]) -> tuple:
            return (item[0], slice(None))

        chunk_of = lambda k, plan: (1, k, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))  # noqa: E731

    def make_output(k: int, plan: TilePlan) -> _Sink:
        full = (n_t, k, n_z, n_y, n_x)
        return _Sink(_open_output(out, full, chunk_of(k, plan), False), prefix)

    activation = _activation(head)
    skip_value = _background_probabilities(head, int(architecture.get("out_channels", 1)))
    skip = _make_skip(skip_threshold, None, shape)
    source = _Source(read, shape, "reflect", transform)
    probabilities = _execute(
        model, source, items, spatial_dims=spatial_dims, in_channels=in_channels, make_output=make_output,
        tile_shape=tile_shape, overlap=overlap, batch_size=batch_size, device=device, blend=blend,
        precision=precision, memory_limit=memory_limit, halo=None, divisor=None, skip=skip,
        skip_value=skip_value, sigma_scale=0.125, activation=activation, progress=phases.tiles, cancel=cancel,
        cpu_tile_pixels=CPU_TILE_PIXELS,
    )
    if zoom != 1.0:
        if isinstance(final_out, (str, os.PathLike)):
            final_out = _open_output(final_out, (n_t, probabilities.shape[1], n_z, *original_yx),
                                     (1, 1, 1, *original_yx), False)
        probabilities = sizing.restore_stack(probabilities, original_yx, final_out)
    result_labels = None
    from segtune.core import postprocess

    object_size = used_diameter or config.get("object_diameter")
    if min_size is None or min_size == "auto":
        min_size = postprocess.default_min_size(object_size, spatial_dims)
    if labels and head != "image":
        # a model can ask for distance-peak seeds (the bundled nuclei models do: it splits
        # touching nuclei their boundary class missed); three-class seeds sit a third of a
        # diameter apart, binary split seeds a quarter
        split = split or bool(config.get("split_instances", False))
        if min_distance is None:
            min_distance = postprocess.default_seed_distance(object_size, head)
        result_labels = _label_stack(
            probabilities, head, spatial_dims, postprocess, threshold=threshold, instances=instances, split=split,
            min_distance=min_distance, min_size=int(min_size), max_size=max_size, fill_holes=fill_holes,
            step=phases.labelled,
        )
    return PredictionResult(probabilities, result_labels, head, classes, used_diameter, int(min_size))


def whole_image_settings(
    model: Any,
    image: Any,
    *,
    config: Mapping[str, Any] | None = None,
    axes: str | None = None,
    channel: int | str | Sequence[int | str] | None = None,
    channel_names: Sequence[str] | None = None,
    diameter: float | str | None = "auto",
) -> tuple[dict[str, Any], float | None]:
    """The config and diameter with which :func:`predict` on any part of ``image`` sees that part
    as it would inside the whole: the normalisation limits (percentiles of the whole image, per
    chosen channel) and the object diameter (estimated once, from the whole) fixed.

    A viewer predicts the visible region of a large image first and the whole next; with these
    settings both agree inside the region (away from its edges, where the context differs).

    Parameters
    ----------
    model, image, config, axes, channel, channel_names, diameter
        As for :func:`predict`.

    Returns
    -------
    config : dict
        The model's config with ``normalization["limits"]`` set (when it normalises).
    diameter : float or None
        The diameter to pass to :func:`predict` (0 when the image is not to be zoomed).
    """
    from segtune.core import diameter as sizing
    from segtune.core.normalize import DEFAULT_PERCENTILES, percentiles

    model, config = _resolve_model(model, config, "cpu")
    architecture = config.get("architecture", {}) or {}
    data, names, _ = _as_tczyx(image, axes, channel_names)
    chosen = _select_channels(channel, names, int(data.shape[1]), int(architecture.get("in_channels", 1)))
    used_diameter, _ = sizing.resolve_diameter(diameter, config, _diameter_sample(data, chosen, config, diameter))
    spec = config.get("normalization")
    if isinstance(spec, Mapping) and spec.get("method", "percentile") == "percentile" and spec.get("limits") is None:
        low = float(spec.get("low", DEFAULT_PERCENTILES[0]))
        high = float(spec.get("high", DEFAULT_PERCENTILES[1]))
        limits = [[float(v) for v in percentiles(data[:, c], low, high)] for c in chosen]
        config = {**config, "normalization": {**spec, "limits": limits}}
    return config, (used_diameter if used_diameter is not None else 0)


def _diameter_sample(data: Any, chosen: list[int], config: Mapping[str, Any], diameter: Any) -> np.ndarray | None:
    """What the automatic diameter is estimated from: the chosen channels summed, at the first
    time point (its middle plane for a 2D model); None when no estimate is asked for."""
    if not (isinstance(diameter, str) and config.get("object_diameter") and config.get("auto_diameter")):
        return None
    sample = np.sum([_compute(data[0, c]) for c in chosen], axis=0, dtype=np.float32)
    spatial_dims = int((config.get("architecture", {}) or {}).get("spatial_dims", 2))
    return sample[sample.shape[0] // 2] if spatial_dims == 2 else sample


# predict()'s largest tile on the CPU: one pass over 2 Mpx takes some ten seconds there, so a
# larger image is cut into tiles and its progress bar moves (for ~10 % more pixels computed)
CPU_TILE_PIXELS = 1 << 21


class _Phases:
    """One progress count over predict()'s phases: the diameter estimate (one step), the batches
    of tiles (as many as the tiling makes), then one step per plane or time point labelled."""

    def __init__(self, progress: ProgressCallback | None, cancel: CancelToken | None, labelling: int) -> None:
        self.reporter = Reporter(progress, cancel, stage="predict")
        self.labelling = labelling
        self.offset = 0  # steps of the phases before the tiles
        self.tiles_total: int | None = None
        self.labels_done = 0

    def _total(self) -> int | None:
        return None if self.tiles_total is None else self.offset + self.tiles_total + self.labelling

    def start(self, message: str) -> None:
        self.reporter.step(self.offset, total=self._total(), message=message)

    def done_one(self) -> None:
        self.offset = 1

    def tiles(self, event: Any) -> None:
        self.tiles_total = event.total
        self.reporter.step(self.offset + event.done, total=self._total(), message="tiles", **event.metrics)

    def labelled(self) -> None:
        self.labels_done += 1
        if self.tiles_total is None:
            self.tiles_total = 0
        done = self.offset + self.tiles_total + self.labels_done
        self.reporter.step(done, total=self._total(), message="labelling planes")


def _label_stack(
    probabilities: Any, head: str, spatial_dims: int, postprocess: Any, step: Callable[[], None] | None = None, **options: Any
) -> np.ndarray:
    """Post-process each time point (3D model) or plane (2D model); instance numbers run on across the stack."""
    n_t, _, n_z = probabilities.shape[:3]
    out = None
    offset = 0
    instances = options["instances"]
    units = [(t, None) for t in range(n_t)] if spatial_dims == 3 else [(t, z) for t in range(n_t) for z in range(n_z)]
    for t, z in units:
        p = np.asarray(probabilities[t] if z is None else probabilities[t, :, z])
        result = postprocess.postprocess(
            p, head, level=options["threshold"], instances=instances, split=options["split"],
            min_distance=options["min_distance"], min_size=options["min_size"], max_size=options["max_size"],
            fill_holes=options["fill_holes"],
        )
        if out is None:
            dtype = np.int32 if instances else result.dtype
            out = np.zeros((n_t, n_z, *probabilities.shape[3:]), dtype=dtype)
        if instances:
            top = int(result.max())
            result = np.where(result > 0, result + offset, 0)
            offset += top
        if z is None:
            out[t] = result
        else:
            out[t, z] = result
        if step is not None:
            step()
    assert out is not None
    return out


def _compute(block: Any) -> np.ndarray:
    if hasattr(block, "compute"):
        block = block.compute()
    return np.asarray(block)


def _resolve_model(model: Any, config: Mapping[str, Any] | None, device: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(model, (str, os.PathLike)):
        from segtune.core.models.store import load_model

        model, loaded = load_model(model)
        config = loaded if config is None else config
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], Mapping):
        model, loaded = model
        config = loaded if config is None else config
    if config is None:
        architecture = getattr(model, "architecture", None)
        if isinstance(architecture, Mapping):
            out_channels = int(architecture.get("out_channels", 1))
            config = {
                "architecture": dict(architecture),
                "head": "binary" if out_channels == 1 else "three_class" if out_channels == 3 else "semantic",
                "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
            }
        else:
            raise ValueError("config is required when model is a plain callable (it says the head, spatial dims and channels)")
    if not callable(model):
        raise ValueError(f"model must be callable, got {type(model).__name__}")
    return model, dict(config)


def _as_tczyx(image: Any, axes: str | None, channel_names: Sequence[str] | None) -> tuple[Any, list[str], str]:
    names = list(channel_names) if channel_names is not None else None
    if hasattr(image, "data") and hasattr(image, "channel_names") and hasattr(image, "physical_pixel_sizes"):
        data = image.data
        names = list(image.channel_names) if names is None else names
        axes = "TCZYX"
    else:
        data = _as_array(image)
        ndim = len(data.shape)
        if axes is None:
            axes = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX"}.get(ndim)
            if axes is None:
                raise ValueError(f"image must have 2 to 5 dimensions (YX ... TCZYX), got shape {tuple(data.shape)}")
        axes = axes.upper()
        if len(axes) != ndim or len(set(axes)) != ndim or any(a not in "TCZYX" for a in axes):
            raise ValueError(f"axes {axes!r} do not describe an image of shape {tuple(data.shape)} (letters from TCZYX)")
        if [a for a in "TCZYX" if a in axes] != list(axes):
            data = _transpose(data, [axes.index(a) for a in "TCZYX" if a in axes])
            axes = "".join(a for a in "TCZYX" if a in axes)
        for position, letter in enumerate("TCZYX"):
            if letter not in axes:
                data = _expand(data, position)
    n_c = int(data.shape[1])
    if names is None or len(names) != n_c:
        names = [f"Channel {i}" for i in range(n_c)]
    return data, names, axes


def _transpose(data: Any, order: list[int]) -> Any:
    if hasattr(data, "transpose"):
        return data.transpose(order)
    return np.transpose(np.asarray(data), order)


def _expand(data: Any, position: int) -> Any:
    if isinstance(data, np.ndarray):
        return np.expand_dims(data, position)
    if hasattr(data, "compute"):
        import dask.array as da

        return da.expand_dims(data, position)
    try:
        import dask.array as da

        return da.expand_dims(da.from_array(data, chunks=getattr(data, "chunks", "auto")), position)
    except Exception:
        return np.expand_dims(np.asarray(data), position)


def _colour_channel(data: Any, names: list[str], channel: Any, in_channels: int) -> tuple[Any, list[str], Any]:
    """``channel="Bright"`` naming a colour channel, whose RGB samples are the channels ``Bright (red)``,
    ``Bright (green)``, ``Bright (blue)``: those samples for a model that takes three channels, their
    mean (a grey image) for a model that takes one."""
    from segtune.core.io import sample_group

    if not isinstance(channel, str) or channel in names:
        return data, names, channel
    group = sample_group(names, channel)[:3]  # alpha is no colour
    if len(group) != 3:
        return data, names, channel
    if in_channels == 3:
        return data, names, group
    if in_channels != 1:
        return data, names, channel
    colour = data[:, group[0] : group[-1] + 1]
    return np.mean(colour, axis=1, keepdims=True, dtype=np.float32), [channel], 0


def _colour_names(names: list[str]) -> list[str]:
    """The colour channels (their RGB samples are channels) by the names ``channel=`` takes."""
    from segtune.core.io import SAMPLE_NAMES

    if list(names[:3]) == list(SAMPLE_NAMES[3]):
        return ["RGB"]
    found = [n.removesuffix(" (red)") for n in names if n.endswith(" (red)")]
    return list(dict.fromkeys(found))


def _select_channels(channel: Any, names: list[str], n_c: int, in_channels: int) -> list[int]:
    if channel is None:
        if n_c == in_channels:
            return list(range(n_c))
        colours = _colour_names(names)
        hint = f"; a colour channel by its name ({', '.join(colours)}) gives {'its three samples' if in_channels == 3 else 'the mean of its samples'}" if colours and in_channels in (1, 3) else ""
        raise ValueError(
            f"the image has {n_c} channels ({', '.join(names)}) and the model takes {in_channels}; "
            f"choose with channel= (--channel), by index or name{hint}"
        )
    wanted = [channel] if isinstance(channel, (int, str, np.integer)) else list(channel)
    chosen = []
    for c in wanted:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ValueError(f"channel {c!r} does not exist; the image's channels are {names}")
            chosen.append(names.index(c))
        else:
            index = int(c)
            if not -n_c <= index < n_c:
                raise ValueError(f"channel {index} does not exist; the image has {n_c} channel(s): {names}")
            chosen.append(index % n_c)
    if len(chosen) != in_channels:
        raise ValueError(f"the model takes {in_channels} channel(s) but {len(chosen)} were chosen ({channel!r})")
    return chosen


def _normalizer(data: Any, chosen: list[int], normalization: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    from segtune.core.normalize import DEFAULT_PERCENTILES, percentiles

    if normalization is None or normalization is False:
        return None
    spec = dict(normalization) if isinstance(normalization, Mapping) else {}
    method = spec.get("method", "percentile")
    if method in (None, "none"):
        return None
    if method != "percentile":
        raise ValueError(f"normalization method {method!r} is not known; this version applies 'percentile' or 'none'")
    low = float(spec.get("low", DEFAULT_PERCENTILES[0]))
    high = float(spec.get("high", DEFAULT_PERCENTILES[1]))
    fixed = spec.get("limits")  # (lo, hi) per chosen channel, measured before (see whole_image_settings)
    if fixed is not None and len(fixed) != len(chosen):
        raise ValueError(f"normalization limits are given for {len(fixed)} channel(s) but {len(chosen)} are chosen")
    limits = []
    for i, c in enumerate(chosen):
        lo, hi = (float(fixed[i][0]), float(fixed[i][1])) if fixed is not None else percentiles(data[:, c], low, high)
        limits.append((lo, max(hi - lo, 1e-6)))
    offsets = np.array([lo for lo, _ in limits], dtype=np.float32)
    scales = np.array([1.0 / s for _, s in limits], dtype=np.float32)

    def transform(window: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (window.ndim - 1)
        return (window - offsets.reshape(shape)) * scales.reshape(shape)

    return transform


def _activation(head: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if head in ("binary", "multilabel"):
        return torch.sigmoid
    if head in ("three_class", "semantic"):
        return lambda y: torch.softmax(y, dim=1)
    if head == "image":
        return None  # an image-to-image model (a denoiser): its output is the result
    raise ValueError(f"head must be one of binary, three_class, semantic, image; got {head!r}")


def _background_probabilities(head: str, out_channels: int) -> list[float]:
    """What a skipped tile reads as: certain background."""
    if head in ("binary", "multilabel", "image"):
        return [0.0] * out_channels
    return [1.0] + [0.0] * (out_channels - 1)


# --- small helpers ---------------------------------------------------------------------------


def _check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def _check_output(y: np.ndarray, expected_spatial: tuple[int, ...]) -> None:
    if y.ndim != len(expected_spatial) + 1 or y.shape[0] != expected_spatial[0] or tuple(y.shape[2:]) != expected_spatial[1:]:
        raise ValueError(
            f"the model must map (N, C, *spatial) to (N, K, *spatial); for input spatial shape {expected_spatial[1:]} "
            f"it returned {tuple(y.shape)}"
        )


def _per_axis(value: int | Sequence[int], dims: int, name: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != dims or any(int(v) != v or v < minimum for v in values):
        raise ValueError(f"{name} must be an integer >= {minimum} or {dims} of them, got {value!r}")
    return tuple(int(v) for v in values)


def _per_axis_float(value: float | Sequence[float], dims: int, name: str, upper: float | None = 1.0) -> tuple[float, ...]:
    values = (float(value),) * dims if isinstance(value, (int, float, np.floating)) else tuple(float(v) for v in value)
    if len(values) != dims or any(v < 0 or (upper is not None and v >= upper) for v in values):
        bound = f"in [0, {upper})" if upper is not None else "non-negative"
        raise ValueError(f"{name} must be {bound}, one value or {dims}, got {value!r}")
    return values


def _ceil_to(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


def _floor_to(value: int, multiple: int) -> int:
    return int(value) // int(multiple) * int(multiple)
