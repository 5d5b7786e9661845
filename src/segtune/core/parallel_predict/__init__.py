"""Prediction on a dask.distributed cluster: a task per file or per chunk of a large volume, written by the workers,
resumable.

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

Where each part lives: ``cluster`` (the client, the model sent once, task wrappers, options,
waiting, the report), ``files`` (:func:`predict_files`), ``volume`` (:func:`predict_volume`),
``outputs`` (the OME-Zarr stores and the TIFF conversion). The per-file work itself is
:func:`segtune.core.predict.predict_file`, the same function ``segtune predict`` runs.
"""

from segtune.core.parallel_predict.cluster import (
    ParallelReport,
    PredictionFailed,
    open_client,
)
from segtune.core.parallel_predict.files import OUTPUT_FORMATS, predict_files
from segtune.core.parallel_predict.volume import predict_volume
from segtune.core.predict import predict_file

__all__ = [
    "OUTPUT_FORMATS",
    "ParallelReport",
    "PredictionFailed",
    "open_client",
    "predict_file",
    "predict_files",
    "predict_volume",
]
