"""Tile planning: which windows exact tiling cuts (:func:`plan_tiles`), and MONAI-style Gaussian windows.

An exact plan keeps, from each tile, a *core* region on the model's grid and feeds the model
the core plus the model's halo; the planner picks per axis the tile count that minimises the
pixels computed under the memory limit. A Gaussian plan places windows as MONAI's
``sliding_window_inference`` does and weighs them with its Gaussian importance map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import product

import numpy as np
import torch

from segtune.core.predict._common import ceil_to, format_bytes, per_axis, warn
from segtune.core.predict.probe import ModelGeometry

BLENDS = ("exact", "gaussian")


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
            for i, n, c, t, size, padded in zip(
                index, self.counts, self.core, self.tile, self.shape, self.padded_shape, strict=True
            ):
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
    padded = tuple(ceil_to(s, di) for s, di in zip(shape, d, strict=True))
    bpp = geometry.bytes_per_pixel
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    per_forward = memory_limit / (batch_size or 1)

    if tile_shape is not None:
        # the tile is a ceiling: per axis the fewest tiles that fit under it, each as small as they can be
        wanted = per_axis(tile_shape, dims, "tile_shape", minimum=1)
        cores, counts_list, tiles = [], [], []
        for axis, (want, length, di, hi) in enumerate(zip(wanted, padded, d, h, strict=True)):
            chunk = None if chunks is None else int(chunks[axis])
            options = _axis_options(length, di, hi, chunk, smallest_core=1)
            fitting = [o for o in options if o[2] <= max(want, di)]
            if fitting:
                core, n, tile = min(fitting, key=lambda o: (o[1], o[2]))
            else:
                core, n, tile = min(options, key=lambda o: o[2])
                warn(
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
            warn(
                f"even the smallest tile {tuple(o[2] for o in best[1])} needs about "
                f"{format_bytes(math.prod(o[2] for o in best[1]) * bpp)}, over the memory limit of "
                f"{format_bytes(per_forward)}; trying anyway"
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
        core = min(length, ceil_to(-(-length // count), unit))
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


def gaussian_plan(shape: Sequence[int], roi: Sequence[int], overlap: Sequence[float], batch_size: int) -> TilePlan:
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
        tuple(shape),
        image,
        tuple(roi),
        tuple(roi),
        tuple(len(s) for s in starts),
        batch_size,
        "gaussian",
        tuple(starts),
    )


def gaussian_importance(roi: Sequence[int], sigma_scale: Sequence[float]) -> np.ndarray:
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
