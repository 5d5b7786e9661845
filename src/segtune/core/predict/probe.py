"""Model probing: what exact tiling needs to know about a model, measured once and cached.

:func:`probe_model` runs the model on a few small elongated random inputs and reads off, per
spatial axis, the shift-equivariance grid (``divisor``), the receptive-field radius (``halo``),
whether the output is local at all, and the working memory per pixel. The result is cached per
model object, and per architecture for models that describe theirs (segtune's U-Net).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from segtune.core.device import select_device
from segtune.core.predict._common import ceil_to, check_output, check_spatial_dims, per_axis, warn
from segtune.core.predict.runner import Runner, is_oom, weights_fingerprint

logger = logging.getLogger(__name__)

_SHIFTS = (1, 2, 4, 8, 16, 32, 64)
_RELATIVE_SUPPORT = 1e-6  # an output change below this fraction of the output's scale is "no change"
# shifts on the grid give bitwise-equal outputs on a CPU; off the grid, differences of 1e-4 of
# the output's scale were seen on small random U-Nets, so the line sits well below that
_SHIFT_TOLERANCE = 1e-6


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
    check_spatial_dims(spatial_dims)
    torch_device = select_device(device)
    runner = Runner(model, torch_device, "float32", spatial_dims)
    return model_geometry(runner, model, spatial_dims, int(in_channels), halo, divisor)


def model_geometry(
    runner: Runner, model: Any, spatial_dims: int, in_channels: int, halo: Any, divisor: Any
) -> ModelGeometry:
    """:func:`probe_model` for a model already prepared on a device: the cached geometry (measured
    with ``runner`` the first time), with ``halo`` and ``divisor`` (when given) used instead."""
    key = (spatial_dims, in_channels, runner.device.type, weights_digest(model))
    cached = _cache_get(model, key)
    with _exact_float32(runner.device):
        cached = _geometry_uncached(runner, model, spatial_dims, in_channels, halo, divisor, key, cached)
    if halo is not None or divisor is not None:
        d = cached.divisor if divisor is None else per_axis(divisor, spatial_dims, "divisor", minimum=1)
        h = cached.halo if halo is None else per_axis(halo, spatial_dims, "halo", minimum=0)
        cached = replace(cached, divisor=d, halo=tuple(ceil_to(x, di) for x, di in zip(h, d, strict=True)), local=True)
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
    runner: Runner,
    model: Any,
    spatial_dims: int,
    in_channels: int,
    halo: Any,
    divisor: Any,
    key: tuple,
    cached: ModelGeometry | None,
) -> ModelGeometry:
    if cached is None and halo is not None and divisor is not None:
        # both known: one small pass tells the output channels and the memory per pixel
        d = per_axis(divisor, spatial_dims, "divisor", minimum=1)
        x = np.zeros((1, in_channels, *(ceil_to(32, di) for di in d)), dtype=np.float32)
        y, bpp = runner.run_measured(x)
        cached = ModelGeometry(d, d, True, bpp, int(y.shape[1]))
    elif cached is None:
        cached = _measure_geometry(runner, spatial_dims, in_channels, hint=getattr(model, "size_multiple", None))
        _cache_put(model, key, cached)
    return cached


# the measured spread depends on the weights too (a path whose weights are near zero stays under
# the probe's threshold), so the caches are keyed by the weights' contents: instances of one model
# folder share a measurement, a fine-tuned model (the same module, new weights) is measured again
_ARCHITECTURE_CACHE: dict[tuple, ModelGeometry] = {}


# module -> (its weights' identity fingerprint, their digest): the digest is computed again only
# when a weight changed (the runner's fingerprint sees in-place writes), not on every prediction
_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def weights_digest(model: Any) -> str | None:
    """A digest of a torch module's parameters and buffers (None for other callables)."""
    if not isinstance(model, torch.nn.Module):
        return None
    fingerprint = weights_fingerprint(model)
    known = _DIGESTS.get(model)
    if known is not None and known[0] == fingerprint:
        return known[1]
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in (*model.named_parameters(), *model.named_buffers()):
            digest.update(name.encode())
            digest.update(
                tensor.detach().to("cpu", copy=False).reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()
            )
    _DIGESTS[model] = (fingerprint, digest.hexdigest())
    return _DIGESTS[model][1]


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


def _measure_geometry(runner: Runner, spatial_dims: int, in_channels: int, hint: Any) -> ModelGeometry:
    rng = np.random.default_rng(20240531)
    thin = 16
    divisors, halos, local = [], [], True
    bytes_per_pixel, out_channels = 0.0, 1
    hint = int(hint) if isinstance(hint, int) and hint in _SHIFTS else None
    for axis in range(spatial_dims):
        spread, grid, thin, out_channels, bpp = _probe_axis(runner, spatial_dims, in_channels, axis, thin, rng, hint)
        if grid is not None and hint is not None and grid != hint:
            spread, grid, thin, out_channels, bpp = _probe_axis(
                runner, spatial_dims, in_channels, axis, thin, rng, None
            )
        bytes_per_pixel = max(bytes_per_pixel, bpp)
        if spread is None or grid is None:
            local = False
            spread = 64 if spread is None else spread
            grid = _accepted_grid(runner, spatial_dims, in_channels, axis, thin)
        divisors.append(grid)
        halos.append(ceil_to(spread, grid))
    geometry = ModelGeometry(tuple(divisors), tuple(halos), local, bytes_per_pixel, out_channels)
    logger.info("probed model: %s", geometry)
    if not local:
        warn(
            "the model's output depends on the whole input (e.g. instance or group normalisation) or is not "
            "shift-equivariant; tiled prediction cannot equal one untiled pass unless the image fits in one tile"
        )
    return geometry


def _accepted_grid(runner: Runner, spatial_dims: int, in_channels: int, axis: int, thin: int) -> int:
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
            if is_oom(e):
                raise
            continue
        if tuple(y.shape[2:]) == tuple(shape):
            return grid
    return _SHIFTS[-1]


def _probe_axis(
    runner: Runner,
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
            if is_oom(e) or thin >= 256:
                raise ValueError(f"the model failed on a probe input of shape {tuple(batch.shape)}: {e}") from e
            last_error = e
            thin *= 2
            continue
        check_output(y, (batch.shape[0], *x.shape[2:]))
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
            # compared a further s pixels away from the window's ends: how far an end reaches into
            # the output depends on its phase on the pooling grid, and can pass the slab's spread
            lo, hi = spread + 1 + s, length - spread - 2 * s - 1
            if hi - lo < 8:
                continue
            a = np.take(y[index], np.arange(lo, hi), axis=axis + 1)
            b = np.take(y[0], np.arange(lo + s, hi + s), axis=axis + 1)
            if float(np.abs(a - b).max()) <= _SHIFT_TOLERANCE * scale:
                grid = s
                break
        return spread, grid, thin, out_channels, bpp
    if last_error is not None and length == (256 if spatial_dims == 2 else 128):
        raise ValueError(f"the model failed on every probe input (last error: {last_error})") from last_error
    return None, None, thin, out_channels, bpp
