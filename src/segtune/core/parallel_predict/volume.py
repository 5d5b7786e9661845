"""One volume, many tasks: :func:`predict_volume` tiles a large image exactly as one process would and shares out
the batches."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.parallel_predict.cluster import (
    ATTRS_KEY,
    ModelPayload,
    ParallelReport,
    PredictionFailed,
    as_completed,
    check_options,
    count_workers,
    error_of,
    model_payload,
    not_chunkable,
    open_client,
    safe_name,
    task,
    task_key,
    tiling_options,
    worker_model,
)
from segtune.core.parallel_predict.outputs import (
    DONE_ARRAY,
    LABELS_ARRAY,
    PROBABILITIES_ARRAY,
    open_volume_output,
    zarr_complete,
    zarr_to_tiff_task,
)
from segtune.core.predict import Job, TilingOptions
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)


# --- one volume, many tasks --------------------------------------------------------------------


def predict_volume(
    model: Any,
    image: Any,
    out: str | os.PathLike,
    *,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    config: Mapping[str, Any] | None = None,
    scene: int | str | None = None,
    axes: str | None = None,
    probabilities: bool = False,
    tasks_per_worker: int = 4,
    torch_threads: int | None = None,
    overwrite: bool = False,
    retries: int = 2,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> ParallelReport:
    """Segment one large image on a dask cluster, chunk by chunk, into an OME-Zarr.

    The image is tiled exactly as :func:`segtune.core.predict.predict` tiles it in one process
    (same windows, each the kept region plus the model's halo, and the same batches) and the
    tiles are shared out as tasks; the labels written equal that single process's labels.

    Parameters
    ----------
    model
        As in :func:`predict_files`.
    image
        A file path (opened by each worker; storage every worker sees), or an array the workers
        can read: zarr, dask (its graph travels with each task) or numpy (scattered once).
        Dimensions as ``axes`` says (default by number: ``YX``, ``ZYX``, ``CZYX``, ``TCZYX``).
    out
        The OME-Zarr group to write: labels ``(T, Z, Y, X)`` at ``"0"`` (uint8 masks or class
        indices), float32 ``(T, K, Z, Y, X)`` at ``"probabilities"`` with ``probabilities=True``.
    client, workers, scheduler
        Where to run (see :func:`open_client`).
    config, scene, axes
        The model's config (when ``model`` is a module), the file's scene, an array's axes.
    probabilities
        Also write the activated model output.
    tasks_per_worker
        Tasks to aim for per worker (more: finer load balance and retries; fewer: less overhead).
        Each task holds at least one batch of tiles.
    torch_threads
        As in :func:`predict_files`.
    overwrite
        Replace an output written with other settings. An output with the same settings is
        resumed: chunks already done are not computed again.
    retries
        Times a failing task is tried again.
    progress, cancel
        See :mod:`segtune.core.progress`; one step per finished task.
    **options
        Keywords of :func:`segtune.core.predict.predict` except those that need the whole image
        at once (``instances``; ``objects`` with ``split``, ``min_size``, ``max_size`` or
        ``fill_holes``; a ``tiling.skip_threshold``); ``tiling.blend`` must be ``"exact"``.

    Returns
    -------
    ParallelReport
        ``outputs`` maps the image's name to ``out``; ``computed``/``skipped`` list chunk tasks.

    Raises
    ------
    PredictionFailed
        Some chunks failed after retries (the output is left resumable).
    ValueError
        Options a split volume cannot honour, or bad arguments.
    FileExistsError
        ``out`` holds a prediction with other settings and ``overwrite`` is False.
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    options = check_options(options)
    out = Path(out)
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name
        source: tuple = ("path", str(image), scene)
    else:
        name = out.name
        source = ("array", image, axes)
    started = time.monotonic()
    report = ParallelReport()
    if not overwrite and zarr_complete(out):
        report.outputs[name] = out
        report.skipped.append(name)
        return report
    reporter = Reporter(progress, cancel, stage="predict")
    reporter.check()
    with open_client(client, workers=workers, scheduler=scheduler) as dask_client:
        report.workers = count_workers(dask_client)
        if source[0] == "array" and isinstance(source[1], np.ndarray):
            source = ("array", dask_client.scatter(source[1], broadcast=False, hash=False), axes)
        payload = model_payload(model, config)
        model_future = dask_client.scatter(payload, broadcast=True, hash=False)
        volume = VolumeRun.prepare(
            dask_client,
            model_future,
            payload,
            source,
            name,
            out,
            output_format="zarr",
            overwrite=overwrite,
            retries=retries,
            run=uuid.uuid4().hex[:8],
            options=options,
            probabilities=probabilities,
            tasks_per_worker=tasks_per_worker,
            torch_threads=torch_threads,
        )
        report.skipped.extend(volume.skipped)
        report.tasks = len(volume.futures)
        reporter.total = len(volume.futures)
        try:
            for done, future in enumerate(as_completed(dask_client, list(volume.futures), reporter), start=1):
                index = volume.futures[future]
                volume.finished(index, error_of(future))
                reporter.step(done, total=len(volume.futures), message=f"chunk {index + 1}/{volume.n_tasks}")
        except Cancelled:
            dask_client.cancel(list(volume.futures))
            raise
        volume.complete(dask_client)
        report.computed.extend(volume.computed)
    if volume.errors:
        report.failed[name] = volume.failure_message()
    else:
        report.outputs[name] = out
    report.seconds = time.monotonic() - started
    if report.failed:
        raise PredictionFailed(report)
    return report


@dataclass
class _VolumePlan:
    """Everything a chunk task needs besides the model and the source (small: travels per task)."""

    spatial_dims: int
    shape: tuple[int, ...]  # spatial
    tiling: TilingOptions  # the plan's tile and batch, and the precision and memory limit asked for
    pad_mode: str
    chosen: list[int]
    head: str
    transform: Callable[[np.ndarray], np.ndarray] | None
    options: dict[str, Any]


@task
def _plan_task(payload: ModelPayload, source: tuple, options: dict[str, Any]) -> dict[str, Any]:
    """Worker side: the tiling one process would use on this worker's device, and the normalisation."""
    from segtune.core.device import select_device
    from segtune.core.predict import (
        far_end_pad_mode,
        memory_budget,
        normalizer,
        plan_tiles,
        probe_model,
        select_channels,
    )

    module, config = worker_model(payload)
    data, names = _open_source(source)
    architecture = config.get("architecture", {}) or {}
    spatial_dims = int(architecture.get("spatial_dims", 2))
    in_channels = int(architecture.get("in_channels", 1))
    n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)
    chosen = select_channels(options.get("channel"), names, n_c, in_channels)
    shape = (n_y, n_x) if spatial_dims == 2 else (n_z, n_y, n_x)
    n_items = n_t * n_z if spatial_dims == 2 else n_t
    device = options.get("device", "auto")
    tiling = tiling_options(options)
    torch_device = select_device(device)
    geometry = probe_model(module, spatial_dims=spatial_dims, in_channels=in_channels, device=device)
    budget = memory_budget(torch_device, tiling.memory_limit)
    padded = tuple(-(-s // d) * d for s, d in zip(shape, geometry.divisor, strict=True))
    if _zooms(options.get("diameter", "auto"), config):
        raise ValueError(
            "the model zooms images to the object size it was trained at (diameter), which needs the whole image in "
            "memory; predict this one whole (raise split_above), or pass diameter=0 (--diameter 0) to predict it "
            "unzoomed in chunks"
        )
    if not geometry.local:
        raise ValueError(
            "the model's output depends on the whole input (e.g. instance or group normalisation), so no tiling of it "
            "is exact and a split volume would not match one pass; predict it whole (raise split_above)"
        )
    cpu = torch_device.type == "cpu"
    plan = plan_tiles(
        shape,
        geometry,
        memory_limit=budget,
        tile_shape=tiling.tile_shape,
        batch_size=tiling.batch_size,
        chunks=None,
        n_items=n_items,
        max_batch=16 if cpu else 64,
        max_batch_pixels=(1 << 22) if cpu else None,
    )
    transform = None
    if options.get("normalize", True):
        transform = normalizer(data, chosen, config.get("normalization"))
    return {
        "plan": plan,
        "padded": padded,
        "pad_mode": far_end_pad_mode(shape, padded),
        "chosen": chosen,
        "transform": transform,
        "spatial_dims": spatial_dims,
        "shape": shape,
        "sizes": (n_t, n_c, n_z, n_y, n_x),
        "out_channels": int(geometry.out_channels or architecture.get("out_channels", 1)),
        "head": str(config.get("head", "binary")),
        "classes": list(config.get("classes") or []),
        "pixel_sizes": _pixel_sizes(source),
    }


def _zooms(diameter: Any, config: Mapping[str, Any]) -> bool:
    """Whether predict() would zoom the image (see segtune.core.diameter.resolve_diameter)."""
    model_diameter = config.get("object_diameter")
    if not model_diameter or diameter is None or (not isinstance(diameter, str) and float(diameter) == 0):
        return False
    if isinstance(diameter, str):
        return bool(config.get("auto_diameter"))
    return float(diameter) != float(model_diameter)


def _pixel_sizes(source: tuple) -> Any:
    if source[0] != "path":
        return None
    from segtune.core.io import open_image

    with contextlib.suppress(Exception):
        return tuple(open_image(source[1], source[2]).physical_pixel_sizes)
    return None


_SOURCES: dict[tuple, tuple[Any, list[str]]] = {}
_SOURCES_LOCK = threading.Lock()


def _open_source(source: tuple) -> tuple[Any, list[str]]:
    """Worker side: the source as a lazy TCZYX array and its channel names (a file opened once per worker)."""
    from segtune.core.predict import as_tczyx

    kind = source[0]
    if kind == "path":
        from segtune.core.io import open_image

        path, scene = source[1], source[2]
        stat = os.stat(path)
        key = (path, scene, stat.st_mtime_ns, stat.st_size)
        with _SOURCES_LOCK:
            hit = _SOURCES.get(key)
        if hit is None:
            image = open_image(path, scene)
            hit = (image.data, list(image.channel_names))
            with _SOURCES_LOCK:
                if len(_SOURCES) >= 8:
                    _SOURCES.pop(next(iter(_SOURCES)))
                _SOURCES[key] = hit
        return hit
    data, names, _ = as_tczyx(source[1], source[2], None)
    return data, names


def _jobs(info: dict[str, Any]) -> list[Job]:
    """Every tile of every item, in the order the single-process engine runs them."""
    plan = info["plan"]
    n_t, _, n_z = info["sizes"][:3]
    items = (
        [(t, z) for t in range(n_t) for z in range(n_z)] if info["spatial_dims"] == 2 else [(t,) for t in range(n_t)]
    )
    return [Job(item, *w) for item in items for w in plan.windows()]


def _group_jobs(jobs: list[Job], batch_size: int, n_workers: int, tasks_per_worker: int) -> list[list[Job]]:
    """Consecutive whole batches per task, about ``tasks_per_worker`` tasks per worker."""
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    wanted = max(1, n_workers * max(1, tasks_per_worker))
    per_task = max(1, math.ceil(len(batches) / wanted))
    return [[job for batch in batches[i : i + per_task] for job in batch] for i in range(0, len(batches), per_task)]


@task
def _predict_chunk_task(
    payload: ModelPayload,
    source: tuple,
    volume: _VolumePlan,
    jobs: list[Job],
    out: str,
    index: int,
    probabilities: bool,
) -> int:
    """Worker side: run some of the plan's batches exactly as the engine would, write their kept regions."""
    import zarr

    from segtune.core import postprocess
    from segtune.core.predict import Source, compute, predict

    module, config = worker_model(payload)
    data, _ = _open_source(source)
    chosen = volume.chosen
    if volume.spatial_dims == 2:

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            t, z = item
            return np.stack([compute(data[t, c, z][box]) for c in chosen])
    else:

        def read(item: tuple[int, ...], box: tuple[slice, ...]) -> np.ndarray:
            return np.stack([compute(data[item[0], c][box]) for c in chosen])

    # the engine's own window reader: padding at the far end, then the image-wide normalisation
    windows = Source(read, volume.shape, volume.pad_mode, volume.transform)
    stacked = np.stack([windows.window(job.item, job.window)[1] for job in jobs])
    # each window an item of its own, one tile each, batched as the engine batched them (and never zoomed:
    # the windows are already the image's own pixels)
    result = predict(
        module,
        stacked,
        config=config,
        axes="TCYX" if volume.spatial_dims == 2 else "TCZYX",
        normalize=False,
        labels=False,
        tiling=volume.tiling,
        diameter=None,
        **volume.options,
    )
    group = zarr.open_group(out, mode="r+")
    labels_out = group[LABELS_ARRAY]
    probabilities_out = group[PROBABILITIES_ARRAY] if probabilities else None
    level = float(volume.options.get("threshold", 0.5))
    for j, job in enumerate(jobs):
        p = np.asarray(result.probabilities[j])  # (K, Z, Y, X); Z is 1 for a 2D model
        if volume.spatial_dims == 2:
            p = p[:, 0][(slice(None), *job.inner)]
            where = (job.item[0], job.item[1], *job.kept)
            where_p = (job.item[0], slice(None), job.item[1], *job.kept)
        else:
            p = p[(slice(None), *job.inner)]
            where = (job.item[0], *job.kept)
            where_p = (job.item[0], slice(None), *job.kept)
        mask = postprocess.postprocess(p, volume.head, level=level, instances=False)
        labels_out[where] = mask.astype(labels_out.dtype, copy=False)
        if probabilities_out is not None:
            probabilities_out[where_p] = p
    group[DONE_ARRAY][index] = 1
    return index


class VolumeRun:
    """The driver's side of one volume: plan, output, submitted chunk tasks, completion."""

    def __init__(self) -> None:
        self.futures: dict[Any, int] = {}
        self.skipped: list[str] = []
        self.computed: list[str] = []
        self.errors: dict[int, str] = {}

    @classmethod
    def prepare(
        cls,
        client: Any,
        model_future: Any,
        payload: ModelPayload,
        source: tuple,
        name: str,
        destination: Path,
        *,
        output_format: str,
        overwrite: bool,
        retries: int,
        run: str,
        options: dict[str, Any],
        probabilities: bool = False,
        tasks_per_worker: int = 4,
        torch_threads: int | None = None,
    ) -> VolumeRun:
        refused = not_chunkable(options)
        if refused:
            raise ValueError(
                f"{name}: {', '.join(refused)} need the whole image at once, and this one is predicted in chunks "
                f"(it is larger than split_above); raise split_above or leave these options out"
            )
        tiling = tiling_options(options)
        if tiling.blend != "exact":
            raise ValueError(f"{name}: a volume predicted in chunks needs blend='exact', got {tiling.blend!r}")
        self = cls()
        self.name = name
        self.destination = destination
        self.output_format = output_format
        store = (
            destination
            if output_format == "zarr"
            else destination.parent / ".segtune-work" / f"{destination.stem}.zarr"
        )
        self.store = store
        plan_key = task_key("plan", name, run)
        info = client.submit(
            _plan_task,
            model_future,
            source,
            options,
            key=plan_key,
            retries=retries,
            pure=False,
            torch_threads=torch_threads,
        ).result()
        plan = info["plan"]
        jobs = _jobs(info)
        groups = _group_jobs(jobs, plan.batch_size, max(1, count_workers(client)), tasks_per_worker)
        self.n_tasks = len(groups)
        self.info = info
        signature = _signature(payload.key, info, options, source, probabilities, len(groups))
        done = open_volume_output(store, info, signature, len(groups), probabilities, overwrite)
        volume = _VolumePlan(
            info["spatial_dims"],
            info["shape"],
            TilingOptions(
                tile_shape=plan.tile,
                batch_size=plan.batch_size,
                precision=tiling.precision,
                memory_limit=tiling.memory_limit,
            ),
            info["pad_mode"],
            info["chosen"],
            info["head"],
            info["transform"],
            {k: v for k, v in options.items() if k in ("threshold", "device")},
        )
        logger.info(
            "%s: %d tiles of %s in %d tasks (%d already done)", name, len(jobs), plan.tile, len(groups), int(done.sum())
        )
        for index, group in enumerate(groups):
            if done[index]:
                self.skipped.append(f"{name}[chunk {index}]")
                continue
            future = client.submit(
                _predict_chunk_task,
                model_future,
                source,
                volume,
                group,
                str(store),
                index,
                probabilities,
                key=task_key("chunk", name, run, index),
                retries=retries,
                pure=False,
                torch_threads=torch_threads,
            )
            self.futures[future] = index
        return self

    def finished(self, index: int, error: str | None) -> None:
        if error is None:
            self.computed.append(f"{self.name}[chunk {index}]")
        else:
            self.errors[index] = error

    def failure_message(self) -> str:
        first = next(iter(self.errors.values()))
        return (
            f"{len(self.errors)} of {self.n_tasks} chunk(s) failed (the others are kept for a re-run); first: {first}"
        )

    def complete(self, client: Any) -> Path | None:
        """Mark the zarr complete (all chunks done) and, for a TIFF output, convert it on a worker."""
        if self.errors:
            return None
        import zarr

        group = zarr.open_group(str(self.store), mode="r+")
        if not bool(np.all(group[DONE_ARRAY][:])):
            missing = int(np.count_nonzero(group[DONE_ARRAY][:] == 0))
            raise RuntimeError(f"{self.name}: {missing} chunk(s) are not written; run again to finish them")
        attrs = dict(group.attrs.get(ATTRS_KEY, {}))
        attrs["complete"] = True
        group.attrs[ATTRS_KEY] = attrs
        if self.output_format == "zarr":
            return self.destination
        client.submit(
            zarr_to_tiff_task,
            str(self.store),
            str(self.destination),
            self.info["pixel_sizes"],
            pure=False,
            key=f"segtune-tiff-{safe_name(self.name)}-{uuid.uuid4().hex[:8]}",
        ).result()
        shutil.rmtree(self.store, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.store.parent.rmdir()
        return self.destination


def _signature(
    model_key: str, info: dict[str, Any], options: dict[str, Any], source: tuple, probabilities: bool, n_tasks: int
) -> str:
    """What decides the chunks' content: a resumed output must have been started with the same."""
    plan = info["plan"]
    described = {
        "model": model_key,
        "source": [source[0], str(source[1]) if source[0] == "path" else "array", str(source[2])],
        "sizes": list(info["sizes"]),
        "tile": list(plan.tile),
        "core": list(plan.core),
        "batch": plan.batch_size,
        "tasks": n_tasks,
        "options": {k: repr(v) for k, v in sorted(options.items())},
        "probabilities": probabilities,
    }
    return hashlib.sha1(repr(described).encode()).hexdigest()
