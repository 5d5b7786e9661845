"""The engine: plan, run every tile in batches, write the kept regions, re-plan on out-of-memory.

:func:`predict_raw` applies a model to one ``(C, *spatial)`` image; :func:`execute` is the loop
both it and :func:`segtune.core.predict.predict` (many planes or time points at once) run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segtune.core.device import select_device
from segtune.core.predict._common import (
    ceil_to,
    check_spatial_dims,
    floor_to,
    per_axis,
    per_axis_float,
    warn,
)
from segtune.core.predict.probe import model_geometry
from segtune.core.predict.runner import Runner, free_device_memory, is_oom
from segtune.core.predict.tiling import (
    BLENDS,
    TilePlan,
    gaussian_importance,
    gaussian_plan,
    plan_tiles,
)
from segtune.core.predict.windows import (
    Sink,
    Source,
    array_reader,
    as_array,
    far_end_pad_mode,
    is_zarr,
    memory_budget,
    open_output,
)
from segtune.core.progress import CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """One tile of one item: its window (padded coordinates), the region it keeps in the image
    and the same region inside the window (see :meth:`TilePlan.windows`)."""

    item: tuple[int, ...]
    window: tuple[slice, ...]
    kept: tuple[slice, ...]
    inner: tuple[slice, ...]


class _TileTooLarge(Exception):
    """One tile does not fit in the device's memory (raised after a batch of one fails)."""


SkipTest = Callable[[np.ndarray, Job], bool]


@dataclass
class _Progress:
    done: int = 0  # tiles written, over all items
    items_done: int = 0  # leading items whose tiles are all written
    total: int = 0


def _run_tiles(
    runner: Runner,
    source: Source,
    items: list[tuple[int, ...]],
    plan: TilePlan,
    sink: Sink,
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
    jobs = [Job(item, *w) for item in items for w in plan.windows()]
    first_item = state.items_done
    fill = np.reshape(np.asarray(skip_value, dtype=np.float32), (-1,) + (1,) * len(plan.tile))
    batch_size = plan.batch_size

    def read(batch: list[Job]) -> list[tuple[np.ndarray, np.ndarray]]:
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
    runner: Runner, stacked: np.ndarray, activation: Callable[[torch.Tensor], torch.Tensor] | None
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
        if not is_oom(e):
            raise
        free_device_memory(runner.device)
        if stacked.shape[0] == 1:
            raise _TileTooLarge(str(e)) from e
        half = stacked.shape[0] // 2
        runner.batch_limit = max(1, half)
        logger.warning("out of memory with %d tiles per pass; retrying with %d", stacked.shape[0], half)
        return _forward_splitting(runner, stacked[:half], activation) + _forward_splitting(
            runner, stacked[half:], activation
        )


def _run_gaussian(
    runner: Runner,
    source: Source,
    items: list[tuple[int, ...]],
    plan: TilePlan,
    sink_factory: Callable[[int], Sink],
    *,
    sigma_scale: Sequence[float],
    activation: Callable[[torch.Tensor], torch.Tensor] | None,
    reporter: Reporter,
) -> Sink:
    """MONAI-compatible Gaussian blending, accumulated in memory per item, then written whole."""
    weights = gaussian_importance(plan.tile, sigma_scale)
    windows = [w for w, _, _ in plan.windows()]
    total = len(items) * len(windows)
    done = 0
    sink: Sink | None = None
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
def execute(
    model: Callable,
    source: Source,
    items: list[tuple[int, ...]],
    *,
    spatial_dims: int,
    in_channels: int,
    make_output: Callable[[int, TilePlan], Sink],
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

    The loop :func:`predict_raw` and :func:`segtune.core.predict.predict` share: ``source`` gives
    the windows of each of ``items`` (e.g. ``(t, z)`` planes), ``make_output(K, plan)`` the
    :class:`Sink` the kept regions go to; the other keywords are :func:`predict_raw`'s.
    ``cpu_tile_pixels`` caps the planned tile on the CPU (when no tile shape is given), so that
    a large image is several tiles and its progress moves, at the price of some halo pixels."""
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}")
    shape = tuple(int(s) for s in source.shape)
    torch_device = select_device(device)
    runner = Runner(model, torch_device, precision, spatial_dims)
    reporter = Reporter(progress, cancel, stage="predict")
    reporter.check()
    cpu = torch_device.type == "cpu"

    if blend == "gaussian":
        overlaps = per_axis_float(0.25 if overlap is None else overlap, spatial_dims, "overlap")
        sigmas = per_axis_float(sigma_scale, spatial_dims, "sigma_scale", upper=None)
        if tile_shape is None:
            geometry = model_geometry(runner, model, spatial_dims, in_channels, halo, divisor)
            budget = memory_budget(torch_device, memory_limit)
            side = (budget / geometry.bytes_per_pixel) ** (1 / spatial_dims)
            roi = tuple(
                min(ceil_to(s, d), max(d, floor_to(int(side), d))) for s, d in zip(shape, geometry.divisor, strict=True)
            )
        else:
            roi = per_axis(tile_shape, spatial_dims, "tile_shape", minimum=1)
        plan = gaussian_plan(shape, roi, overlaps, batch_size or 4)
        gaussian_source = Source(source.read_box, shape, "constant", source.transform)
        sink = _run_gaussian(
            runner,
            gaussian_source,
            items,
            plan,
            lambda k: make_output(k, plan),
            sigma_scale=sigmas,
            activation=activation,
            reporter=reporter,
        )
        return sink.array

    if overlap is not None:
        warn("overlap has no effect with blend='exact': tiles overlap by the model's measured halo")
    geometry = model_geometry(runner, model, spatial_dims, in_channels, halo, divisor)
    assert geometry.out_channels is not None
    budget = memory_budget(torch_device, memory_limit)
    padded = tuple(ceil_to(s, d) for s, d in zip(shape, geometry.divisor, strict=True))
    exact_source = Source(source.read_box, shape, far_end_pad_mode(shape, padded), source.transform)
    if not geometry.local and tile_shape is None and math.prod(padded) * geometry.bytes_per_pixel <= budget:
        tile_shape = padded  # nothing tiled is exact for such a model; one pass is, when it fits

    def make_plan(limit: float, batch: int | None, on_cpu: bool) -> TilePlan:
        if on_cpu and cpu_tile_pixels and tile_shape is None:
            limit = min(limit, cpu_tile_pixels * geometry.bytes_per_pixel * (batch or 1))
        return plan_tiles(
            shape,
            geometry,
            memory_limit=limit,
            tile_shape=tile_shape,
            batch_size=batch,
            chunks=output_chunks,
            n_items=len(items),
            max_batch=16 if on_cpu else 64,
            max_batch_pixels=(1 << 22) if on_cpu else None,
        )

    plan = make_plan(budget, batch_size, cpu)
    logger.info("tiling %s as %s (%.3fx the pixels of one untiled pass) on %s", shape, plan, plan.work, torch_device)
    sink = make_output(geometry.out_channels, plan)
    state = _Progress(total=len(items) * plan.n_tiles)
    try:
        while state.items_done < len(items):
            try:
                _run_tiles(
                    runner,
                    exact_source,
                    items[state.items_done :],
                    plan,
                    sink,
                    out_channels=geometry.out_channels,
                    activation=activation,
                    skip=skip,
                    skip_value=skip_value,
                    reporter=reporter,
                    state=state,
                )
            except _TileTooLarge as e:
                redo = state.done - state.items_done * plan.n_tiles  # the interrupted item starts again
                smallest = math.prod(2 * h + d for h, d in zip(geometry.halo, geometry.divisor, strict=True))
                if math.prod(plan.tile) > smallest:
                    tile_shape = None
                    half = math.prod(plan.tile) * geometry.bytes_per_pixel / 2
                    warn(f"out of memory with tile {plan.tile}; retrying with smaller tiles")
                    new_plan = make_plan(half, 1, runner.device.type == "cpu")
                elif runner.device.type != "cpu":
                    warn(f"out of memory on {runner.device} even with tile {plan.tile}; falling back to the CPU")
                    runner.to_cpu()
                    new_plan = make_plan(memory_budget(runner.device, None), None, True)
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
    if is_zarr(array):
        with contextlib.suppress(Exception):
            array.attrs["segtune"] = {
                "complete": state.done >= state.total,
                "tiles_done": state.done,
                "tiles_total": state.total,
                "tile": list(plan.tile),
                "core": list(plan.core),
            }


def on_local_threads(func: Callable[..., Any]) -> Callable[..., Any]:
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


@on_local_threads
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
    check_spatial_dims(spatial_dims)
    image = as_array(image)
    if len(image.shape) != spatial_dims + 1:
        axes = "CYX" if spatial_dims == 2 else "CZYX"
        raise ValueError(
            f"image must have shape ({', '.join(axes)}) for spatial_dims={spatial_dims}, got {tuple(image.shape)}"
        )
    shape = tuple(int(s) for s in image.shape[1:])
    in_channels = int(image.shape[0])
    skip = make_skip(skip_threshold, skip_mask, shape)
    user_chunks = None
    if out is not None and not isinstance(out, (str, os.PathLike)) and is_zarr(out):
        user_chunks = tuple(int(c) for c in out.chunks[1:])

    def make_output(k: int, plan: TilePlan) -> Sink:
        chunks = (k, *(min(c, s) for c, s in zip(plan.core, shape, strict=True)))
        return Sink(open_output(out, (k, *shape), chunks, overwrite), lambda item: (slice(None),))

    source = Source(array_reader(image), shape, "reflect")
    return execute(
        model,
        source,
        [()],
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        make_output=make_output,
        tile_shape=tile_shape,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        blend=blend,
        precision=precision,
        memory_limit=memory_limit,
        halo=halo,
        divisor=divisor,
        skip=skip,
        skip_value=skip_value,
        sigma_scale=sigma_scale,
        activation=None,
        progress=progress,
        cancel=cancel,
        output_chunks=user_chunks,
    )


def make_skip(skip_threshold: float | None, skip_mask: Any, shape: tuple[int, ...]) -> SkipTest | None:
    """A test telling, from a tile's raw window, whether its kept region has no signal."""
    if skip_threshold is None and skip_mask is None:
        return None
    mask = None
    if skip_mask is not None:
        mask = np.asarray(skip_mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"skip_mask has shape {mask.shape} but the image's spatial shape is {shape}")

    def skip(raw: np.ndarray, job: Job) -> bool:
        if mask is not None and not mask[job.kept].any():
            return True
        if skip_threshold is not None and not (raw[(slice(None), *job.inner)] > skip_threshold).any():
            return True
        return False

    return skip
