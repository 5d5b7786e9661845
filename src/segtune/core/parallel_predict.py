"""Prediction on a dask.distributed cluster: a task per file or per chunk of a large volume, written by the workers, resumable.

Two kinds of task
-----------------
*One file, one task* (:func:`predict_files`): a worker opens the file, runs
:func:`segtune.core.predict.predict` on it exactly as a single process would, and writes
``DIR/name_labels.tif`` (or an OME-Zarr ``DIR/name_labels.zarr``) atomically. An output that
already exists is a finished one: a second run skips it.

*One volume, many tasks* (:func:`predict_volume`, and files above ``split_above`` in
:func:`predict_files`): the driver asks a worker for the tiling a single process would use
(:func:`segtune.core.predict.plan_tiles` on the worker's device), the normalisation limits are
computed over the whole volume once, and the plan's tiles (each the region it keeps plus the
halo the exact tiling needs) are cut into tasks along the batches the single process would
run. A task reads its windows, runs them through ``predict`` as one batch of items and writes
the kept regions (whole zarr chunks, so no two tasks touch the same chunk) into the output,
then ticks its box in the output's ``tasks_done`` array. Same windows, same batches, same code:
the labels equal the single-process labels bit for bit, not just to rounding.

The model travels once: its config and safetensors bytes are scattered to every worker
(``broadcast=True``) and each worker process builds the network once (cached by the weights'
hash). Failed tasks are retried (``retries``); a worker that dies mid-task has its tasks
rescheduled; what still fails is reported by input name (:class:`PredictionFailed`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segtune.core.predict import Job, ObjectOptions, TilingOptions, predict_file
from segtune.core.predict.frontend import option_group
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FORMATS",
    "ParallelReport",
    "PredictionFailed",
    "open_client",
    "predict_file",
    "predict_files",
    "predict_volume",
]

OUTPUT_FORMATS = ("tif", "zarr")
LABELS_ARRAY = "0"  # the OME-Zarr dataset path of the full-resolution labels
PROBABILITIES_ARRAY = "probabilities"
DONE_ARRAY = "tasks_done"
_ATTRS_KEY = "segtune"


class PredictionFailed(RuntimeError):
    """Some inputs could not be predicted; the others were written.

    Attributes
    ----------
    report
        The :class:`ParallelReport` of the run; ``report.failed`` maps each input that failed to
        the error it raised.
    """

    def __init__(self, report: ParallelReport) -> None:
        self.report = report
        lines = [f"{name}: {message}" for name, message in report.failed.items()]
        total = len(report.outputs) + len(report.failed)
        super().__init__(
            f"{len(report.failed)} of {total} input(s) failed after retries (the others were written; "
            f"run again to retry only these): " + "; ".join(lines)
        )


@dataclass
class ParallelReport:
    """What a distributed prediction did.

    Attributes
    ----------
    outputs
        Input name -> output path, for every input whose output is complete (computed now or before).
    computed
        Inputs (or ``name[chunk i]`` tasks) computed in this run.
    skipped
        Inputs whose output was already complete, and chunk tasks already done by an earlier run.
    failed
        Input name -> error message, for inputs that failed after the retries.
    tasks
        Prediction tasks submitted in this run.
    workers
        Workers of the cluster when the run started.
    seconds
        Wall time of the run.
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tasks: int = 0
    workers: int = 0
    seconds: float = 0.0


# --- the cluster -------------------------------------------------------------------------------


@contextlib.contextmanager
def open_client(
    client: Any = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    threads_per_worker: int = 1,
) -> Iterator[Any]:
    """A ``dask.distributed`` client: the one given, one connected to ``scheduler``, or a new LocalCluster.

    Parameters
    ----------
    client
        An existing :class:`distributed.Client` (returned as is, not closed).
    workers
        Start a :class:`distributed.LocalCluster` of this many worker processes (closed on exit).
        Each gets ``threads_per_worker`` task threads and ``cores // workers`` torch threads.
    scheduler
        Address of a running scheduler (``tcp://host:8786``) or a scheduler file (``.json``).
    threads_per_worker
        Tasks each local worker runs at once.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ValueError
        Not exactly one of ``client``, ``workers`` and ``scheduler``, or ``workers`` < 1.
    ImportError
        ``distributed`` is not installed (``pip install napari-segtune[distributed]``).
    """
    given = [name for name, value in (("client", client), ("workers", workers), ("scheduler", scheduler)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of client, workers and scheduler; got {given or 'none'}")
    if client is not None:
        yield client
        return
    distributed = _import_distributed()
    if scheduler is not None:
        address = str(scheduler)
        if address.endswith(".json") and Path(address).is_file():
            new = distributed.Client(scheduler_file=address, set_as_default=False)
        else:
            new = distributed.Client(address, set_as_default=False)
        try:
            yield new
        finally:
            new.close()
        return
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    cores = os.cpu_count() or 1
    torch_threads = str(max(1, cores // int(workers) // max(1, threads_per_worker)))
    # the nanny pins OMP_NUM_THREADS=1; give each worker its share of the cores instead, and let
    # idle OpenMP threads sleep rather than spin (spinning threads slow busy machines several-fold)
    environ = {
        "OMP_NUM_THREADS": torch_threads, "MKL_NUM_THREADS": torch_threads,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    with (
        distributed.LocalCluster(
            n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=True,
            dashboard_address=None, env=environ,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as new,
    ):
        yield new


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:  # an optional extra
        raise ImportError(
            "distributed prediction needs dask.distributed: pip install 'napari-segtune[distributed]'"
        ) from e
    return distributed


def _n_workers(client: Any) -> int:
    with contextlib.suppress(Exception):
        return len(client.scheduler_info().get("workers", {}))
    return 0


# --- the model, sent once ----------------------------------------------------------------------


@dataclass(frozen=True)
class _ModelPayload:
    """The model as it travels: config plus safetensors bytes, or (any other callable) the object."""

    key: str
    config: dict[str, Any]
    weights: bytes | None = None
    module: Any = None


_WORKER_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {}
_WORKER_BUILDS = [0]  # how many times this process built a model (the tests check "once per worker")
_WORKER_LOCK = threading.Lock()


def _payload(model: Any, config: Mapping[str, Any] | None) -> _ModelPayload:
    """Load (a name or folder) and package a model for the workers."""
    from segtune.core.predict import resolve_model

    module, resolved = resolve_model(model, config, "cpu")
    architecture = resolved.get("architecture") or getattr(module, "architecture", None)
    if isinstance(module, torch.nn.Module) and isinstance(architecture, Mapping) and _rebuildable(module, architecture):
        from safetensors.torch import save

        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
        weights = save(state)
        digest = hashlib.sha1(weights + repr(sorted(resolved.items(), key=str)).encode()).hexdigest()
        resolved["architecture"] = dict(architecture)
        return _ModelPayload(digest, resolved, weights=weights)
    # any other callable goes as itself (pickled by dask); it must be picklable
    digest = hashlib.sha1(f"{id(module)}-{uuid.uuid4()}".encode()).hexdigest()
    return _ModelPayload(digest, resolved, module=module)


def _rebuildable(module: torch.nn.Module, architecture: Mapping[str, Any]) -> bool:
    """Whether build_model(architecture) gives this module's class (so weights alone describe it)."""
    from segtune.core.models.unet import build_model

    try:
        return type(build_model(architecture)) is type(module)
    except Exception:
        return False


def _worker_model(payload: _ModelPayload) -> tuple[Any, dict[str, Any]]:
    """The payload's model, built once per worker process (and cached: the probe runs once too)."""
    with _WORKER_LOCK:
        hit = _WORKER_MODELS.get(payload.key)
        if hit is not None:
            return hit
        if payload.weights is not None:
            from safetensors.torch import load

            from segtune.core.models.unet import build_model

            module = build_model(payload.config["architecture"])
            module.load_state_dict(load(payload.weights), strict=True)
            module.eval()
        else:
            module = payload.module
        if len(_WORKER_MODELS) >= 2:  # a worker serving several runs keeps the latest two
            _WORKER_MODELS.pop(next(iter(_WORKER_MODELS)))
        _WORKER_MODELS[payload.key] = (module, dict(payload.config))
        _WORKER_BUILDS[0] += 1
        return _WORKER_MODELS[payload.key]


def _worker_builds() -> int:
    return _WORKER_BUILDS[0]


_LOCAL_DASK = {"depth": 0, "setting": None}


@contextlib.contextmanager
def _local_dask() -> Iterator[None]:
    """Inside a task, read lazy (dask) images in the task's own thread, not back through the cluster.

    A dask ``compute`` inside a task would otherwise go to the worker's client and try to ship the
    file reader's graph. ``dask.config.set`` is process-wide, so concurrent tasks share one setting
    (counted) and the last one out restores the worker's own.
    """
    import dask

    with _WORKER_LOCK:
        if _LOCAL_DASK["depth"] == 0:
            setting = dask.config.set(scheduler="synchronous")
            _LOCAL_DASK["setting"] = setting
        _LOCAL_DASK["depth"] += 1
    try:
        yield
    finally:
        with _WORKER_LOCK:
            _LOCAL_DASK["depth"] -= 1
            if _LOCAL_DASK["depth"] == 0 and _LOCAL_DASK["setting"] is not None:
                _LOCAL_DASK["setting"].__exit__(None, None, None)
                _LOCAL_DASK["setting"] = None


def _task(function: Callable) -> Callable:
    """A function run on the workers: reads dask arrays locally (see :func:`_local_dask`) and runs
    torch with ``torch_threads`` intra-op threads when given."""

    @functools.wraps(function)
    def run(*args: Any, torch_threads: int | None = None, **kwargs: Any) -> Any:
        with _local_dask(), _threads(torch_threads):
            return function(*args, **kwargs)

    return run


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- options -----------------------------------------------------------------------------------


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse what :func:`segtune.core.predict.predict` would not accept, before any task runs."""
    from segtune.core.predict import predict

    parameters = inspect.signature(predict).parameters
    reserved = {"model", "image", "config", "out", "progress", "cancel", "labels"}
    known = {name for name in parameters if name not in reserved}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown prediction option(s) {unknown}; predict() takes {sorted(known)}")
    _tiling(options)  # refuse option groups of the wrong kind here, not on a worker
    _objects(options)
    return dict(options)


def _tiling(options: Mapping[str, Any]) -> TilingOptions:
    return option_group(options.get("tiling"), TilingOptions, "tiling")


def _objects(options: Mapping[str, Any]) -> ObjectOptions:
    return option_group(options.get("objects"), ObjectOptions, "objects")


def _not_chunkable(options: Mapping[str, Any]) -> list[str]:
    """The options set that a volume split in chunks cannot honour: they look at whole objects or images."""
    refused = ["instances"] if options.get("instances") not in (None, False, 0) else []
    refused += _objects(options).whole_object_options()
    if _tiling(options).skip_threshold not in (None, False, 0):
        refused.append("skip_threshold")
    return refused


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def _task_key(kind: str, name: str, run: str, index: int | None = None) -> str:
    suffix = "" if index is None else f"-{index}"
    return f"segtune-{kind}-{_safe_name(name)}{suffix}-{run}"


# --- one file, one task ------------------------------------------------------------------------


def predict_files(
    model: Any,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    config: Mapping[str, Any] | None = None,
    scene: int | str | None = None,
    output_format: str = "tif",
    suffix: str = "_labels",
    overwrite: bool = False,
    retries: int = 2,
    split_above: float | str | None = "auto",
    torch_threads: int | None = None,
    label_dtype: type | np.dtype = np.uint8,
    raise_on_failure: bool = True,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    **options: Any,
) -> ParallelReport:
    """Segment many files on a dask cluster, one task per file (or per chunk of a large volume).

    Parameters
    ----------
    model
        A bundled model name, a model folder, a ``(module, config)`` pair or a module with
        ``config``. Sent to every worker once.
    inputs
        Image files (anything :func:`segtune.core.io.open_image` reads), on storage every worker sees.
    out_dir
        Folder for the outputs: ``name_labels.tif`` (``output_format="tif"``, what ``segtune
        predict`` writes) or an OME-Zarr ``name_labels.zarr`` per input.
    client, workers, scheduler
        Where to run (see :func:`open_client`): a client, a number of local worker processes, or
        a scheduler address.
    config
        The model's config when ``model`` is a module.
    scene
        Scene (CZI) or series (TIFF) of each file.
    output_format
        ``"tif"`` or ``"zarr"``.
    suffix
        Added to the input's name (``cells.czi`` -> ``cells_labels.tif``).
    overwrite
        Recompute and replace outputs that exist. Without it an existing output is a finished one
        and is skipped, so a second run does only what the first did not finish.
    retries
        Times a failing task is tried again before its input is reported as failed.
    split_above
        Files whose prediction (float32 per output channel, all planes) is larger than this (bytes,
        or ``"4GB"``) are split into chunk tasks (:func:`predict_volume`) instead of one task; ``"auto"``:
        a quarter of the smallest worker's memory limit; None: never split.
    torch_threads
        Intra-op threads torch uses in each task (None: the worker's setting; :func:`open_client`
        gives local workers ``cores // workers``). CPU results of some layers depend on the
        thread count in the last bit, so labels equal a single-process run's bit for bit when
        this is that process's ``torch.get_num_threads()``; otherwise probabilities agree to
        about 1e-7 and a label differs only where a probability sits that close to the threshold.
    label_dtype
        TIFF output: the narrowest unsigned type to store labels in (see :func:`predict_file`,
        which each task runs, as ``segtune predict`` does for each input; it asks uint16 for
        instance labels). The default gives the smallest type that holds them.
    raise_on_failure
        Raise :class:`PredictionFailed` when some inputs failed (after all others are written);
        False: report them in ``ParallelReport.failed``.
    progress, cancel
        See :mod:`segtune.core.progress`; one step per finished task. Cancelling stops submitting,
        cancels what is queued and leaves every finished output valid.
    **options
        Any keyword :func:`segtune.core.predict.predict` takes (``channel``, ``threshold``,
        ``instances``, ``objects``, ``tiling``, ``device``, ...).

    Returns
    -------
    ParallelReport

    Raises
    ------
    PredictionFailed
        Some inputs failed (the message names each with its error).
    ValueError
        Bad arguments or options.
    segtune.core.progress.Cancelled
        When ``cancel`` is set.

    Examples
    --------
    >>> report = predict_files("nuclei-2d", ["a.czi", "b.czi"], "out", workers=2)   # doctest: +SKIP
    >>> sorted(report.outputs)                                                       # doctest: +SKIP
    ['a.czi', 'b.czi']
    """
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, got {retries}")
    options = _check_options(options)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs is empty: give at least one image file")
    names = _unique_names(paths)
    out_dir = Path(out_dir)
    extension = ".tif" if output_format == "tif" else ".zarr"
    destinations = {name: out_dir / _output_file(path, suffix, extension) for name, path in zip(names, paths, strict=True)}
    clashes = _duplicates(destinations.values())
    if clashes:
        raise ValueError(f"several inputs would write the same output file(s): {clashes}")
    started = time.monotonic()
    report = ParallelReport()
    todo = []
    for name, path in zip(names, paths, strict=True):
        destination = destinations[name]
        if not overwrite and _finished(destination):
            report.outputs[name] = destination
            report.skipped.append(name)
        else:
            todo.append((name, path))
    if report.skipped:
        logger.info("skipping %d input(s) whose output is complete", len(report.skipped))
    if not todo:
        report.seconds = time.monotonic() - started
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(progress, cancel, stage="predict")
    reporter.check()
    with open_client(client, workers=workers, scheduler=scheduler) as dask_client:
        report.workers = _n_workers(dask_client)
        payload = _payload(model, config)
        model_future = dask_client.scatter(payload, broadcast=True, hash=False)
        limit = _split_limit(dask_client, split_above)
        run = uuid.uuid4().hex[:8]
        whole, large = _classify(todo, scene, payload.config, options, limit)
        futures: dict[Any, str] = {}
        for name, path in whole:
            future = dask_client.submit(
                _predict_file_task, model_future, str(path), scene, str(destinations[name]), options, output_format,
                label_dtype, key=_task_key("predict", name, run), retries=retries, pure=False, torch_threads=torch_threads,
            )
            futures[future] = name
        report.tasks += len(futures)
        volumes = []
        for name, path in large:
            try:
                volume = _VolumeRun.prepare(
                    dask_client, model_future, payload, ("path", str(path), scene), name, destinations[name],
                    output_format=output_format, overwrite=overwrite, retries=retries, run=run, options=options,
                    torch_threads=torch_threads,
                )
            except Exception as e:  # a bad file, or options a split volume cannot honour
                report.failed[name] = _describe(e)
                continue
            volumes.append(volume)
            report.skipped.extend(volume.skipped)
        total = len(futures) + sum(len(v.futures) for v in volumes)
        reporter.total = total
        chunk_futures = {f: (v, index) for v in volumes for f, index in v.futures.items()}
        report.tasks += len(chunk_futures)
        done = 0
        try:
            for future in _as_completed(dask_client, [*futures, *chunk_futures], reporter):
                done += 1
                if future in futures:
                    name = futures[future]
                    error = _error_of(future)
                    if error is None:
                        report.outputs[name] = destinations[name]
                        report.computed.append(name)
                    else:
                        report.failed[name] = error
                    reporter.step(done, total=total, message=name)
                    continue
                volume, index = chunk_futures[future]
                volume.finished(index, _error_of(future))
                reporter.step(done, total=total, message=f"{volume.name} chunk {index + 1}/{volume.n_tasks}")
        except Cancelled:
            dask_client.cancel([*futures, *chunk_futures])
            raise
        for volume in volumes:
            try:
                output = volume.complete(dask_client)
            except Exception as e:
                report.failed[volume.name] = _describe(e)
                continue
            report.computed.extend(volume.computed)
            if volume.errors:
                report.failed[volume.name] = volume.failure_message()
            elif output is not None:
                report.outputs[volume.name] = output
    report.seconds = time.monotonic() - started
    if report.failed and raise_on_failure:
        raise PredictionFailed(report)
    return report


def _unique_names(paths: list[Path]) -> list[str]:
    """Input names for messages and keys: the file name, or more of the path where names repeat."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in paths]


def _output_file(path: Path, suffix: str, extension: str) -> str:
    from segtune.core.io import output_name

    return output_name(path, suffix=suffix, extension=extension)


def _duplicates(paths: Any) -> list[str]:
    seen: set[Path] = set()
    repeated = []
    for p in paths:
        if p in seen:
            repeated.append(str(p))
        seen.add(p)
    return repeated


def _finished(destination: Path) -> bool:
    """A TIFF exists only once complete (written atomically); a zarr says so in its attributes."""
    if destination.suffix == ".zarr":
        return _zarr_complete(destination)
    return destination.is_file()


def _zarr_complete(path: Path) -> bool:
    if not path.is_dir():
        return False
    try:
        import zarr

        group = zarr.open_group(str(path), mode="r")
        return bool(dict(group.attrs).get(_ATTRS_KEY, {}).get("complete"))
    except Exception:
        return False


def _split_limit(client: Any, split_above: float | str | None) -> float | None:
    from segtune.core.predict import parse_bytes

    if split_above is None:
        return None
    if split_above != "auto":
        return parse_bytes(split_above)
    limits = []
    with contextlib.suppress(Exception):
        for info in client.scheduler_info().get("workers", {}).values():
            limit = float(info.get("memory_limit") or 0) / max(1, int(info.get("nthreads") or 1))
            if limit > 0:
                limits.append(limit)
    return min(limits) / 4 if limits else 4e9


def _classify(
    todo: list[tuple[str, Path]], scene: Any, config: Mapping[str, Any], options: Mapping[str, Any], limit: float | None
) -> tuple[list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Split the inputs into whole-file tasks and volumes too large for one task (read from headers only)."""
    if limit is None:
        return todo, []
    from segtune.core.io import open_image

    architecture = config.get("architecture", {}) or {}
    out_channels = int(architecture.get("out_channels", 1))
    whole, large = [], []
    for name, path in todo:
        try:
            sizes = open_image(path, scene).sizes()
        except Exception:
            whole.append((name, path))  # the task reports the error, naming the file
            continue
        # one task holds the whole prediction (float32 per output channel) and the labels
        needed = 4.0 * sizes["T"] * sizes["Z"] * sizes["Y"] * sizes["X"] * (out_channels + 1)
        (large if needed > limit else whole).append((name, path))
    return whole, large


@_task
def _predict_file_task(
    payload: _ModelPayload,
    path: str,
    scene: Any,
    destination: str,
    options: dict[str, Any],
    output_format: str,
    label_dtype: type | np.dtype,
) -> str:
    """Worker side: one file, predicted exactly as a single process would, written atomically."""
    model = _worker_model(payload)
    if output_format == "tif":
        predict_file(path, destination, model=model, scene=scene, overwrite=True, label_dtype=label_dtype, **options)
        return destination
    from segtune.core.io import open_image
    from segtune.core.predict import predict

    image = open_image(path, scene)
    result = predict(model, image, **options)
    if result.labels is None:
        raise ValueError(f"the model's head {result.head!r} gives no labels to write")
    _write_zarr_whole(Path(destination), result.labels, image.physical_pixel_sizes, source=path)
    return destination


# --- OME-Zarr output ---------------------------------------------------------------------------


def _ome_attributes(shape: tuple[int, ...], pixel_sizes: Any, zarr_format: int) -> dict[str, Any]:
    """OME-Zarr multiscales metadata (one level) for a ``(T, Z, Y, X)`` labels array."""
    sizes = [1.0, *((float(s) if s else 1.0) for s in (pixel_sizes or (None, None, None)))]
    axes = [{"name": "t", "type": "time"}] + [
        {"name": a, "type": "space", **({"unit": "micrometer"} if any(pixel_sizes or ()) else {})} for a in "zyx"
    ]
    multiscales = [{
        "name": "labels",
        "axes": axes,
        "datasets": [{"path": LABELS_ARRAY, "coordinateTransformations": [{"type": "scale", "scale": sizes}]}],
    }]
    if zarr_format >= 3:
        return {"ome": {"version": "0.5", "multiscales": multiscales}}
    multiscales[0]["version"] = "0.4"
    return {"multiscales": multiscales}


def _create_group(path: Path) -> Any:
    import zarr

    return zarr.open_group(str(path), mode="w")


def _create_array(group: Any, name: str, **kwargs: Any) -> Any:
    creator = getattr(group, "create_array", None) or group.create_dataset  # zarr 3, zarr 2
    return creator(name, **kwargs)


def _zarr_format(group: Any) -> int:
    with contextlib.suppress(Exception):
        return int(group.metadata.zarr_format)
    return 2


def _write_zarr_whole(destination: Path, labels: np.ndarray, pixel_sizes: Any, *, source: str) -> None:
    """A finished OME-Zarr in a temporary folder beside ``destination``, then renamed into place."""
    from segtune.core.files import atomic_folder

    with atomic_folder(destination, overwrite=True) as temporary:  # the caller decided about an existing one
        group = _create_group(temporary)
        chunks = (1, 1, *(min(512, n) for n in labels.shape[2:]))
        array = _create_array(group, LABELS_ARRAY, shape=labels.shape, chunks=chunks, dtype=labels.dtype, fill_value=0)
        array[...] = labels
        group.attrs.update({
            **_ome_attributes(tuple(labels.shape), pixel_sizes, _zarr_format(group)),
            _ATTRS_KEY: {"complete": True, "source": source},
        })


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
    options = _check_options(options)
    out = Path(out)
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name
        source: tuple = ("path", str(image), scene)
    else:
        name = out.name
        source = ("array", image, axes)
    started = time.monotonic()
    report = ParallelReport()
    if not overwrite and _zarr_complete(out):
        report.outputs[name] = out
        report.skipped.append(name)
        return report
    reporter = Reporter(progress, cancel, stage="predict")
    reporter.check()
    with open_client(client, workers=workers, scheduler=scheduler) as dask_client:
        report.workers = _n_workers(dask_client)
        if source[0] == "array" and isinstance(source[1], np.ndarray):
            source = ("array", dask_client.scatter(source[1], broadcast=False, hash=False), axes)
        payload = _payload(model, config)
        model_future = dask_client.scatter(payload, broadcast=True, hash=False)
        volume = _VolumeRun.prepare(
            dask_client, model_future, payload, source, name, out, output_format="zarr", overwrite=overwrite,
            retries=retries, run=uuid.uuid4().hex[:8], options=options, probabilities=probabilities,
            tasks_per_worker=tasks_per_worker, torch_threads=torch_threads,
        )
        report.skipped.extend(volume.skipped)
        report.tasks = len(volume.futures)
        reporter.total = len(volume.futures)
        try:
            for done, future in enumerate(_as_completed(dask_client, list(volume.futures), reporter), start=1):
                index = volume.futures[future]
                volume.finished(index, _error_of(future))
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


@_task
def _plan_task(payload: _ModelPayload, source: tuple, options: dict[str, Any]) -> dict[str, Any]:
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

    module, config = _worker_model(payload)
    data, names = _open_source(source)
    architecture = config.get("architecture", {}) or {}
    spatial_dims = int(architecture.get("spatial_dims", 2))
    in_channels = int(architecture.get("in_channels", 1))
    n_t, n_c, n_z, n_y, n_x = (int(s) for s in data.shape)
    chosen = select_channels(options.get("channel"), names, n_c, in_channels)
    shape = (n_y, n_x) if spatial_dims == 2 else (n_z, n_y, n_x)
    n_items = n_t * n_z if spatial_dims == 2 else n_t
    device = options.get("device", "auto")
    tiling = _tiling(options)
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
        shape, geometry, memory_limit=budget, tile_shape=tiling.tile_shape, batch_size=tiling.batch_size,
        chunks=None, n_items=n_items, max_batch=16 if cpu else 64, max_batch_pixels=(1 << 22) if cpu else None,
    )
    transform = None
    if options.get("normalize", True):
        transform = normalizer(data, chosen, config.get("normalization"))
    return {
        "plan": plan, "padded": padded, "pad_mode": far_end_pad_mode(shape, padded), "chosen": chosen, "transform": transform,
        "spatial_dims": spatial_dims, "shape": shape, "sizes": (n_t, n_c, n_z, n_y, n_x),
        "out_channels": int(geometry.out_channels or architecture.get("out_channels", 1)),
        "head": str(config.get("head", "binary")), "classes": list(config.get("classes") or []),
        "pixel_sizes": _pixel_sizes(source),
    }


def _zooms(diameter: Any, config: Mapping[str, Any]) -> bool:
    """Whether predict() would zoom the image (see segtune.core.diameter.resolve_diameter)."""
    from segtune.core.predict import predict

    if "diameter" not in inspect.signature(predict).parameters:
        return False
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
    items = [(t, z) for t in range(n_t) for z in range(n_z)] if info["spatial_dims"] == 2 else [(t,) for t in range(n_t)]
    return [Job(item, *w) for item in items for w in plan.windows()]


def _group_jobs(jobs: list[Job], batch_size: int, n_workers: int, tasks_per_worker: int) -> list[list[Job]]:
    """Consecutive whole batches per task, about ``tasks_per_worker`` tasks per worker."""
    batches = [jobs[i : i + batch_size] for i in range(0, len(jobs), batch_size)]
    wanted = max(1, n_workers * max(1, tasks_per_worker))
    per_task = max(1, math.ceil(len(batches) / wanted))
    return [[job for batch in batches[i : i + per_task] for job in batch] for i in range(0, len(batches), per_task)]


@_task
def _predict_chunk_task(
    payload: _ModelPayload, source: tuple, volume: _VolumePlan, jobs: list[Job], out: str, index: int, probabilities: bool
) -> int:
    """Worker side: run some of the plan's batches exactly as the engine would, write their kept regions."""
    import zarr

    from segtune.core import postprocess
    from segtune.core.predict import Source, compute, predict

    module, config = _worker_model(payload)
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
    unzoomed = {"diameter": None} if "diameter" in inspect.signature(predict).parameters else {}
    result = predict(
        module, stacked, config=config, axes="TCYX" if volume.spatial_dims == 2 else "TCZYX", normalize=False,
        labels=False, tiling=volume.tiling, **unzoomed, **volume.options,
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


class _VolumeRun:
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
        payload: _ModelPayload,
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
    ) -> _VolumeRun:
        refused = _not_chunkable(options)
        if refused:
            raise ValueError(
                f"{name}: {', '.join(refused)} need the whole image at once, and this one is predicted in chunks "
                f"(it is larger than split_above); raise split_above or leave these options out"
            )
        tiling = _tiling(options)
        if tiling.blend != "exact":
            raise ValueError(f"{name}: a volume predicted in chunks needs blend='exact', got {tiling.blend!r}")
        self = cls()
        self.name = name
        self.destination = destination
        self.output_format = output_format
        store = destination if output_format == "zarr" else destination.parent / ".segtune-work" / f"{destination.stem}.zarr"
        self.store = store
        plan_key = _task_key("plan", name, run)
        info = client.submit(
            _plan_task, model_future, source, options, key=plan_key, retries=retries, pure=False, torch_threads=torch_threads
        ).result()
        plan = info["plan"]
        jobs = _jobs(info)
        groups = _group_jobs(jobs, plan.batch_size, max(1, _n_workers(client)), tasks_per_worker)
        self.n_tasks = len(groups)
        self.info = info
        signature = _signature(payload.key, info, options, source, probabilities, len(groups))
        done = _open_volume_output(store, info, signature, len(groups), probabilities, overwrite)
        volume = _VolumePlan(
            info["spatial_dims"], info["shape"],
            TilingOptions(tile_shape=plan.tile, batch_size=plan.batch_size, precision=tiling.precision,
                          memory_limit=tiling.memory_limit),
            info["pad_mode"], info["chosen"], info["head"], info["transform"],
            {k: v for k, v in options.items() if k in ("threshold", "device")},
        )
        logger.info("%s: %d tiles of %s in %d tasks (%d already done)", name, len(jobs), plan.tile, len(groups), int(done.sum()))
        for index, group in enumerate(groups):
            if done[index]:
                self.skipped.append(f"{name}[chunk {index}]")
                continue
            future = client.submit(
                _predict_chunk_task, model_future, source, volume, group, str(store), index, probabilities,
                key=_task_key("chunk", name, run, index), retries=retries, pure=False, torch_threads=torch_threads,
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
        return f"{len(self.errors)} of {self.n_tasks} chunk(s) failed (the others are kept for a re-run); first: {first}"

    def complete(self, client: Any) -> Path | None:
        """Mark the zarr complete (all chunks done) and, for a TIFF output, convert it on a worker."""
        if self.errors:
            return None
        import zarr

        group = zarr.open_group(str(self.store), mode="r+")
        if not bool(np.all(group[DONE_ARRAY][:])):
            missing = int(np.count_nonzero(group[DONE_ARRAY][:] == 0))
            raise RuntimeError(f"{self.name}: {missing} chunk(s) are not written; run again to finish them")
        attrs = dict(group.attrs.get(_ATTRS_KEY, {}))
        attrs["complete"] = True
        group.attrs[_ATTRS_KEY] = attrs
        if self.output_format == "zarr":
            return self.destination
        client.submit(
            _zarr_to_tiff_task, str(self.store), str(self.destination), self.info["pixel_sizes"], pure=False,
            key=f"segtune-tiff-{_safe_name(self.name)}-{uuid.uuid4().hex[:8]}",
        ).result()
        shutil.rmtree(self.store, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.store.parent.rmdir()
        return self.destination


def _signature(model_key: str, info: dict[str, Any], options: dict[str, Any], source: tuple, probabilities: bool, n_tasks: int) -> str:
    """What decides the chunks' content: a resumed output must have been started with the same."""
    plan = info["plan"]
    described = {
        "model": model_key,
        "source": [source[0], str(source[1]) if source[0] == "path" else "array", str(source[2])],
        "sizes": list(info["sizes"]),
        "tile": list(plan.tile), "core": list(plan.core), "batch": plan.batch_size, "tasks": n_tasks,
        "options": {k: repr(v) for k, v in sorted(options.items())},
        "probabilities": probabilities,
    }
    return hashlib.sha1(repr(described).encode()).hexdigest()


def _open_volume_output(
    store: Path, info: dict[str, Any], signature: str, n_tasks: int, probabilities: bool, overwrite: bool
) -> np.ndarray:
    """Create the output zarr, or reopen one with the same signature; returns which tasks are done."""
    import zarr

    if store.exists():
        try:
            group = zarr.open_group(str(store), mode="r")
            attrs = dict(group.attrs).get(_ATTRS_KEY, {})
        except Exception:
            attrs = {}
        if attrs.get("signature") == signature and DONE_ARRAY in group:
            return np.asarray(group[DONE_ARRAY][:])
        if not overwrite and attrs:
            raise FileExistsError(
                f"{store} holds a prediction made with another model, image or settings; pass overwrite=True "
                f"(--overwrite) to replace it"
            )
        if not overwrite and not attrs:
            raise FileExistsError(f"{store} exists and is not a segtune prediction; pass overwrite=True to replace it")
        shutil.rmtree(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    plan = info["plan"]
    n_t, _, n_z, n_y, n_x = info["sizes"]
    spatial_dims = info["spatial_dims"]
    core = tuple(min(c, s) for c, s in zip(plan.core, info["shape"], strict=True))
    # one tile's kept region is one chunk: tasks never write the same chunk
    chunks = (1, 1, *core) if spatial_dims == 2 else (1, *core)
    head = info["head"]
    n_classes = info["out_channels"] if head == "semantic" else 2
    dtype = np.uint8 if n_classes <= 256 else np.uint16
    group = _create_group(store)
    labels = _create_array(group, LABELS_ARRAY, shape=(n_t, n_z, n_y, n_x), chunks=chunks, dtype=dtype, fill_value=0)
    if probabilities:
        k = info["out_channels"]
        p_chunks = (1, k, 1, *core) if spatial_dims == 2 else (1, k, *core)
        _create_array(group, PROBABILITIES_ARRAY, shape=(n_t, k, n_z, n_y, n_x), chunks=p_chunks, dtype="float32",
                      fill_value=float("nan"))
    _create_array(group, DONE_ARRAY, shape=(n_tasks,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update({
        **_ome_attributes(tuple(labels.shape), info["pixel_sizes"], _zarr_format(group)),
        _ATTRS_KEY: {
            "complete": False, "signature": signature, "tasks": n_tasks, "head": head, "classes": info["classes"],
            "tile": list(plan.tile), "core": list(plan.core), "batch_size": plan.batch_size,
        },
    })
    return np.zeros(n_tasks, dtype=np.uint8)


@_task
def _zarr_to_tiff_task(store: str, destination: str, pixel_sizes: Any) -> str:
    """Worker side: an OME-TIFF from a finished labels zarr, plane by plane (never the whole volume in memory)."""
    import tifffile
    import zarr

    from segtune.core.files import atomic_write, ome_metadata
    from segtune.core.io import LABELS_SOFTWARE

    labels = zarr.open_group(store, mode="r")[LABELS_ARRAY]
    n_t, n_z = labels.shape[:2]
    keep = [i for i, n in enumerate(labels.shape) if i >= 2 or n > 1]
    axes = "".join("TZYX"[i] for i in keep)
    shape = tuple(labels.shape[i] for i in keep)
    top = max(int(np.asarray(labels[t, z]).max(initial=0)) for t in range(n_t) for z in range(n_z))
    dtype = np.uint8 if top <= 255 else np.uint16 if top <= 65535 else np.uint32
    metadata = ome_metadata(axes, pixel_sizes)

    def write(temporary: Path) -> None:
        planes = (np.asarray(labels[t, z]).astype(dtype) for t in range(n_t) for z in range(n_z))
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        tifffile.imwrite(temporary, data=planes, shape=shape, dtype=dtype, ome=True, metadata=metadata,
                         compression="zlib", bigtiff=nbytes > 2**31, software=LABELS_SOFTWARE)

    atomic_write(destination, write, overwrite=True)  # the caller decided about an existing file
    return destination


# --- waiting ---------------------------------------------------------------------------------


def _as_completed(client: Any, futures: list[Any], reporter: Reporter) -> Iterator[Any]:
    """Futures as they finish, checking the cancel token between them (never the global default client)."""
    distributed = _import_distributed()
    if not futures:
        return
    finished = distributed.as_completed(futures, loop=client.loop, raise_errors=False)
    while not finished.is_empty():
        reporter.check()
        batch = finished.next_batch(block=False)
        if not batch:
            time.sleep(0.2)
        yield from batch


def _error_of(future: Any) -> str | None:
    """None when the task succeeded, else its error in one line (a dead worker included)."""
    if future.status == "finished":
        return None
    if future.status == "cancelled":
        # not by us (our cancel raises before this): the scheduler dropped the task, typically
        # because every worker holding the model it was sent died at once
        return "cancelled by the cluster (the workers holding the model were lost); run again to retry"
    try:
        error = future.exception(timeout=10)
    except Exception as e:  # the future is gone (scheduler restarted): say so
        return _describe(e)
    return _describe(error) if error is not None else f"task ended with status {future.status!r}"


def _describe(error: BaseException) -> str:
    name = type(error).__name__
    if name == "KilledWorker":
        return "the worker running it died every time it was tried (out of memory, or a crash in native code)"
    text = str(error).strip().splitlines()
    return f"{name}: {text[0]}" if text else name

