"""Training under torchrun: the process group from torchrun's environment, DDP wrapping and the few rank-aware
helpers the trainer calls.

Launched by ``torchrun --nproc_per_node N`` (or ``srun torchrun`` on SLURM), every process runs
the same training code; torchrun tells each its ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``.
:func:`init_from_env` joins the process group (NCCL when the process trains on a GPU, gloo on
CPU) and puts each process on its own GPU. Started any other way (``WORLD_SIZE`` absent or 1),
every helper here is a no-op that returns its input, so a single process trains exactly as
before.

The trainer uses them so that:

* the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gradients
  averaged across processes, so the weights stay identical everywhere);
* each process draws its own random patches (:func:`rank_seed`) or, for map-style datasets,
  its own shard (:func:`sampler_for`), and an epoch has ``1 / WORLD_SIZE`` of the steps
  (:func:`shard_steps`), so an epoch still sees about the same number of patches;
* decisions that must agree (stop for the time budget or a cancel, early stopping, the best
  epoch) are taken on values every process shares (:func:`any_rank`, :func:`on_main`);
* only rank 0 writes the model folder, the checkpoint and the log, and reports progress.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "DistributedContext",
    "all_reduce_mean",
    "any_rank",
    "barrier",
    "context",
    "init_from_env",
    "is_main_process",
    "launch_rank",
    "main_only",
    "on_main",
    "rank_seed",
    "release",
    "sampler_for",
    "shard_steps",
    "sync_buffers",
    "unwrap_model",
    "wrap_model",
]

T = TypeVar("T")

_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_OWNED = [False]  # whether init_from_env created the process group (release() then destroys it)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a distributed run.

    Attributes
    ----------
    rank
        This process's number, 0 to ``world_size - 1`` (0 in a single process).
    world_size
        Processes in the run (1 in a single process).
    local_rank
        Its number on this machine (the GPU it uses).
    backend
        ``"nccl"``, ``"gloo"``, or None in a single process.
    device
        The device this process trains on, or None when the caller chooses (single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and reports progress."""
        return self.rank == 0


def _environment(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, or None when not launched by it."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return None
    try:
        world_size = int(environ["WORLD_SIZE"])
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        values = {k: environ.get(k) for k in _ENV_VARS}
        raise ValueError(f"torchrun's environment variables must be integers, got {values}") from e
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} is not in range for WORLD_SIZE={world_size}")
    return rank, world_size, local_rank


def init_from_env(device: str | torch.device = "auto", *, timeout_minutes: float = 30.0) -> DistributedContext:
    """Join the process group torchrun set up (once per process; later calls return the same context).

    Parameters
    ----------
    device
        What the process asked for (``"auto"``, ``"cuda"``, ``"cpu"``, ...). Under torchrun,
        ``"auto"``/``"cuda"`` with CUDA available means GPU ``LOCAL_RANK`` and the NCCL backend;
        anything else the CPU and gloo.
    timeout_minutes
        How long a collective waits for a slow or dead process before failing.

    Returns
    -------
    DistributedContext
        ``world_size == 1`` (and nothing initialised) when not launched by torchrun.

    Raises
    ------
    ValueError
        torchrun's variables are malformed, or ``device="cuda"`` without enough GPUs.
    """
    found = _environment()
    if found is None or found[1] == 1:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return context()
        return DistributedContext()
    rank, world_size, local_rank = found
    if torch.distributed.is_initialized():
        return context()
    requested = torch.device(device) if not isinstance(device, str) or device not in ("auto",) else None
    wants_gpu = (requested is None or requested.type == "cuda") and torch.cuda.is_available()
    if requested is not None and requested.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available to this process")
    if wants_gpu:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                f"start at most that many processes per node (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        backend, train_device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, train_device = "gloo", torch.device("cpu")
    torch.distributed.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    _OWNED[0] = True
    logger.info("joined a %d-process %s group as rank %d on %s", world_size, backend, rank, train_device)
    return DistributedContext(rank, world_size, local_rank, backend, train_device)


def context() -> DistributedContext:
    """The current process group as a context (a single-process one when there is none)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return DistributedContext()
    found = _environment()
    local_rank = found[2] if found is not None else 0
    backend = str(torch.distributed.get_backend())
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank, backend, device
    )


def release() -> None:
    """Leave the process group if :func:`init_from_env` created it (a caller's own group stays)."""
    if _OWNED[0] and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _OWNED[0] = False


def launch_rank() -> int:
    """This process's rank as torchrun set it (0 when not launched by it); still valid after :func:`release`."""
    found = _environment()
    return found[0] if found is not None else 0


def is_main_process() -> bool:
    """True in a single process and on rank 0."""
    return context().is_main


def main_only(value: T) -> T | None:
    """``value`` on rank 0 (and in a single process), None elsewhere: e.g. a progress callback."""
    return value if is_main_process() else None


def wrap_model(model: nn.Module, **ddp_options: Any) -> nn.Module:
    """The model in :class:`~torch.nn.parallel.DistributedDataParallel` under torchrun; itself otherwise.

    Rank 0's weights and buffers are broadcast to every process when wrapping (so all start
    alike); call it after the model is on its device and frozen parameters are marked.
    """
    current = context()
    if not current.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if current.backend == "nccl":
        ddp_options.setdefault("device_ids", [current.local_rank])
        ddp_options.setdefault("output_device", current.local_rank)
    return DistributedDataParallel(model, **ddp_options)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def sampler_for(dataset: Any, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> Any:
    """A :class:`~torch.utils.data.DistributedSampler` giving this rank its shard, or None in a single process.

    Call ``sampler.set_epoch(epoch)`` at the start of each epoch so that shuffling differs per epoch.
    """
    current = context()
    if not current.active:
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=current.world_size, rank=current.rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def rank_seed(seed: int) -> Any:
    """A seed for this rank's random patch sampling: ``seed`` itself on rank 0 (and alone), distinct elsewhere."""
    current = context()
    return int(seed) if current.rank == 0 else [int(seed), current.rank]


def shard_steps(steps: int) -> int:
    """Steps each process takes for ``steps`` single-process steps (every step of N processes sees N batches)."""
    world_size = context().world_size
    return max(1, -(-int(steps) // world_size))


def _flag_tensor(value: float) -> torch.Tensor:
    current = context()
    device = current.device if current.backend == "nccl" else torch.device("cpu")
    return torch.tensor([float(value)], dtype=torch.float64, device=device)


def any_rank(flag: bool) -> bool:
    """True on every process when ``flag`` is true on any (a collective: every rank must call it)."""
    if not context().active:
        return bool(flag)
    tensor = _flag_tensor(1.0 if flag else 0.0)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item() > 0)


def all_reduce_mean(value: float) -> float:
    """The mean of ``value`` over the processes (itself in a single process)."""
    current = context()
    if not current.active:
        return float(value)
    tensor = _flag_tensor(value)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return float(tensor.item()) / current.world_size


def on_main(function: Callable[[], T]) -> T:
    """Run ``function`` on rank 0 only and give its (picklable) result to every process.

    For work whose result must be the same everywhere and is cheap enough for one process, such
    as validation: every rank then takes the same early-stopping and best-epoch decisions.
    """
    current = context()
    if not current.active:
        return function()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if current.is_main:
        try:
            payload[0] = ("ok", function())
        except Exception as e:  # tell the other ranks instead of leaving them waiting
            error = e
            payload[0] = ("error", f"{type(e).__name__}: {e}")
    torch.distributed.broadcast_object_list(payload, src=0, device=_flag_tensor(0).device)
    if error is not None:
        raise error
    status, result = payload[0]
    if status == "error":
        raise RuntimeError(f"rank 0 failed: {result}")
    return result


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    DDP keeps parameters identical but each process updates its own running statistics on its
    own batches; after this the whole state dict agrees across ranks.
    """
    if not context().active:
        return
    for buffer in unwrap_model(model).buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    current = context()
    if current.active:
        if current.backend == "nccl":
            torch.distributed.barrier(device_ids=[current.local_rank])
        else:
            torch.distributed.barrier()
