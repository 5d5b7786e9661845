"""One file, one task: :func:`predict_files` over many image files (large ones split into chunk tasks)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segtune.core.parallel_predict.cluster import (
    ModelPayload,
    ParallelReport,
    PredictionFailed,
    as_completed,
    check_options,
    count_workers,
    describe,
    error_of,
    model_payload,
    open_client,
    task,
    task_key,
    worker_model,
)
from segtune.core.parallel_predict.outputs import (
    write_zarr_whole,
    zarr_complete,
)
from segtune.core.parallel_predict.volume import VolumeRun
from segtune.core.predict import predict_file
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)


OUTPUT_FORMATS = ("tif", "zarr")


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
    options = check_options(options)
    paths = [Path(p) for p in inputs]
    if not paths:
        raise ValueError("inputs is empty: give at least one image file")
    names = _unique_names(paths)
    out_dir = Path(out_dir)
    extension = ".tif" if output_format == "tif" else ".zarr"
    destinations = {
        name: out_dir / _output_file(path, suffix, extension) for name, path in zip(names, paths, strict=True)
    }
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
        report.workers = count_workers(dask_client)
        payload = model_payload(model, config)
        model_future = dask_client.scatter(payload, broadcast=True, hash=False)
        limit = _split_limit(dask_client, split_above)
        run = uuid.uuid4().hex[:8]
        whole, large = _classify(todo, scene, payload.config, options, limit)
        futures: dict[Any, str] = {}
        for name, path in whole:
            future = dask_client.submit(
                _predict_file_task,
                model_future,
                str(path),
                scene,
                str(destinations[name]),
                options,
                output_format,
                label_dtype,
                key=task_key("predict", name, run),
                retries=retries,
                pure=False,
                torch_threads=torch_threads,
            )
            futures[future] = name
        report.tasks += len(futures)
        volumes = []
        for name, path in large:
            try:
                volume = VolumeRun.prepare(
                    dask_client,
                    model_future,
                    payload,
                    ("path", str(path), scene),
                    name,
                    destinations[name],
                    output_format=output_format,
                    overwrite=overwrite,
                    retries=retries,
                    run=run,
                    options=options,
                    torch_threads=torch_threads,
                )
            except Exception as e:  # a bad file, or options a split volume cannot honour
                report.failed[name] = describe(e)
                continue
            volumes.append(volume)
            report.skipped.extend(volume.skipped)
        total = len(futures) + sum(len(v.futures) for v in volumes)
        reporter.total = total
        chunk_futures = {f: (v, index) for v in volumes for f, index in v.futures.items()}
        report.tasks += len(chunk_futures)
        done = 0
        try:
            for future in as_completed(dask_client, [*futures, *chunk_futures], reporter):
                done += 1
                if future in futures:
                    name = futures[future]
                    error = error_of(future)
                    if error is None:
                        report.outputs[name] = destinations[name]
                        report.computed.append(name)
                    else:
                        report.failed[name] = error
                    reporter.step(done, total=total, message=name)
                    continue
                volume, index = chunk_futures[future]
                volume.finished(index, error_of(future))
                reporter.step(done, total=total, message=f"{volume.name} chunk {index + 1}/{volume.n_tasks}")
        except Cancelled:
            dask_client.cancel([*futures, *chunk_futures])
            raise
        for volume in volumes:
            try:
                output = volume.complete(dask_client)
            except Exception as e:
                report.failed[volume.name] = describe(e)
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
        return zarr_complete(destination)
    return destination.is_file()


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


@task
def _predict_file_task(
    payload: ModelPayload,
    path: str,
    scene: Any,
    destination: str,
    options: dict[str, Any],
    output_format: str,
    label_dtype: type | np.dtype,
) -> str:
    """Worker side: one file, predicted exactly as a single process would, written atomically."""
    model = worker_model(payload)
    if output_format == "tif":
        predict_file(path, destination, model=model, scene=scene, overwrite=True, label_dtype=label_dtype, **options)
        return destination
    from segtune.core.io import open_image
    from segtune.core.predict import predict

    image = open_image(path, scene)
    result = predict(model, image, **options)
    if result.labels is None:
        raise ValueError(f"the model's head {result.head!r} gives no labels to write")
    write_zarr_whole(Path(destination), result.labels, image.physical_pixel_sizes, source=path)
    return destination
