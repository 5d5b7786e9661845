"""Training checkpoints: everything needed to continue a run exactly where its last finished epoch left off.

``FOLDER/checkpoint/last.safetensors`` holds the current weights, the optimiser's moments and the
random states as tensors, and the rest (history, best epoch, settings, the scaler's and the
plateau schedule's state) as a JSON header: no pickle, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.files import atomic_write_bytes
from segtune.core.train.loop import json_safe

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_NAME",
    "load_checkpoint",
    "restore_optimizer",
    "restore_rng",
    "save_checkpoint",
    "write_checkpoint",
]

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_NAME = "last.safetensors"


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    optimizer,
    scaler,
    state: dict[str, Any],
    rng: np.random.Generator,
    start_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """``start_state``: a fine-tune's starting weights, kept so that a resumed run still pulls
    toward them (L2-SP) and can still fall back to them (``keep_if_worse``)."""
    tensors: dict[str, torch.Tensor] = {
        f"model/{k}": v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()
    }
    for key, value in (start_state or {}).items():
        tensors[f"start/{key}"] = value.detach().to("cpu").contiguous().clone()
    opt_state = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                opt_scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = cuda_state
    python_state = random.getstate()
    header = {
        **state,
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": opt_scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "numpy_rng": rng.bit_generator.state,
        "python_rng": [python_state[0], list(python_state[1]), python_state[2]],
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_checkpoint(folder, tensors, header)


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Write the checkpoint file of ``folder`` from tensors and a JSON state, as :func:`load_checkpoint` reads them."""
    from safetensors.torch import save

    data = save(tensors, metadata={"format": "segtune-checkpoint", "state": json.dumps(json_safe(state))})
    (folder / CHECKPOINT_DIR).mkdir(exist_ok=True)
    atomic_write_bytes(folder / CHECKPOINT_DIR / CHECKPOINT_NAME, data)


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    path = folder / CHECKPOINT_DIR / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {path} to resume from (a run killed before its first epoch ended leaves none); "
            f"start again without resume (and with overwrite)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 -- safe_open has no iterator
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a valid checkpoint: {e}") from e
    if metadata.get("format") != "segtune-checkpoint" or "state" not in metadata:
        raise ValueError(f"{path} is not a segtune checkpoint")
    return tensors, json.loads(metadata["state"])


def restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in header.get("optimizer_scalars", {}).items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": header["optimizer_param_groups"]})


def restore_rng(tensors: dict[str, torch.Tensor], header: dict[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    rng.bit_generator.state = header["numpy_rng"]
    version, internal, gauss = header["python_rng"]
    random.setstate((version, tuple(internal), gauss))
