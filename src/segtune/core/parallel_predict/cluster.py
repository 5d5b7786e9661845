"""The cluster side of distributed prediction: the client, the model sent once, task wrappers, options, waiting,
the report."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from segtune.core.predict import ObjectOptions, TilingOptions
from segtune.core.predict.frontend import option_group
from segtune.core.progress import Reporter

ATTRS_KEY = "segtune"


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
    given = [
        name
        for name, value in (("client", client), ("workers", workers), ("scheduler", scheduler))
        if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of client, workers and scheduler; got {given or 'none'}")
    if client is not None:
        yield client
        return
    distributed = import_distributed()
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
        "OMP_NUM_THREADS": torch_threads,
        "MKL_NUM_THREADS": torch_threads,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    with (
        distributed.LocalCluster(
            n_workers=int(workers),
            threads_per_worker=int(threads_per_worker),
            processes=True,
            dashboard_address=None,
            env=environ,
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as new,
    ):
        yield new


def import_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:  # an optional extra
        raise ImportError(
            "distributed prediction needs dask.distributed: pip install 'napari-segtune[distributed]'"
        ) from e
    return distributed


def count_workers(client: Any) -> int:
    with contextlib.suppress(Exception):
        return len(client.scheduler_info().get("workers", {}))
    return 0


# --- the model, sent once ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPayload:
    """The model as it travels: config plus safetensors bytes, or (any other callable) the object."""

    key: str
    config: dict[str, Any]
    weights: bytes | None = None
    module: Any = None


_WORKER_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {}
_WORKER_BUILDS = [0]  # how many times this process built a model (the tests check "once per worker")
_WORKER_LOCK = threading.Lock()


def model_payload(model: Any, config: Mapping[str, Any] | None) -> ModelPayload:
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
        return ModelPayload(digest, resolved, weights=weights)
    # any other callable goes as itself (pickled by dask); it must be picklable
    digest = hashlib.sha1(f"{id(module)}-{uuid.uuid4()}".encode()).hexdigest()
    return ModelPayload(digest, resolved, module=module)


def _rebuildable(module: torch.nn.Module, architecture: Mapping[str, Any]) -> bool:
    """Whether build_model(architecture) gives this module's class (so weights alone describe it)."""
    from segtune.core.models.unet import build_model

    try:
        return type(build_model(architecture)) is type(module)
    except Exception:
        return False


def worker_model(payload: ModelPayload) -> tuple[Any, dict[str, Any]]:
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


def worker_builds() -> int:
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


def task(function: Callable) -> Callable:
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


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse what :func:`segtune.core.predict.predict` would not accept, before any task runs."""
    from segtune.core.predict import predict

    parameters = inspect.signature(predict).parameters
    reserved = {"model", "image", "config", "out", "progress", "cancel", "labels"}
    known = {name for name in parameters if name not in reserved}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown prediction option(s) {unknown}; predict() takes {sorted(known)}")
    tiling_options(options)  # refuse option groups of the wrong kind here, not on a worker
    object_options(options)
    return dict(options)


def tiling_options(options: Mapping[str, Any]) -> TilingOptions:
    return option_group(options.get("tiling"), TilingOptions, "tiling")


def object_options(options: Mapping[str, Any]) -> ObjectOptions:
    return option_group(options.get("objects"), ObjectOptions, "objects")


def not_chunkable(options: Mapping[str, Any]) -> list[str]:
    """The options set that a volume split in chunks cannot honour: they look at whole objects or images."""
    refused = ["instances"] if options.get("instances") not in (None, False, 0) else []
    refused += object_options(options).whole_object_options()
    if tiling_options(options).skip_threshold not in (None, False, 0):
        refused.append("skip_threshold")
    return refused


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def task_key(kind: str, name: str, run: str, index: int | None = None) -> str:
    suffix = "" if index is None else f"-{index}"
    return f"segtune-{kind}-{safe_name(name)}{suffix}-{run}"


# --- waiting ---------------------------------------------------------------------------------


def as_completed(client: Any, futures: list[Any], reporter: Reporter) -> Iterator[Any]:
    """Futures as they finish, checking the cancel token between them (never the global default client)."""
    distributed = import_distributed()
    if not futures:
        return
    finished = distributed.as_completed(futures, loop=client.loop, raise_errors=False)
    while not finished.is_empty():
        reporter.check()
        batch = finished.next_batch(block=False)
        if not batch:
            time.sleep(0.2)
        yield from batch


def error_of(future: Any) -> str | None:
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
        return describe(e)
    return describe(error) if error is not None else f"task ended with status {future.status!r}"


def describe(error: BaseException) -> str:
    name = type(error).__name__
    if name == "KilledWorker":
        return "the worker running it died every time it was tried (out of memory, or a crash in native code)"
    text = str(error).strip().splitlines()
    return f"{name}: {text[0]}" if text else name
