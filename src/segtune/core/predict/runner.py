"""The model prepared for inference: an eval-mode copy, BatchNorm folded, channels-last, cached.

:class:`Runner` runs batches on one device (float32 or autocast); :func:`is_oom` tells an
out-of-memory error from others, so the engine can halve the batch, then the tile, then fall
back to the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import weakref
from collections.abc import Callable
from itertools import chain
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "float16")


class Runner:
    """The model prepared for inference on one device: an eval-mode copy, BN folded, fast layout."""

    def __init__(self, model: Callable, device: torch.device, precision: str, spatial_dims: int) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.original = model
        self.spatial_dims = spatial_dims
        self.precision = precision
        self.batch_limit = 1 << 30  # lowered when a batch runs out of memory
        self._prepare(device)

    def _prepare(self, device: torch.device) -> None:
        self.device = device
        model = self.original
        self.memory_format = None
        if isinstance(model, torch.nn.Module):
            fast_layout = device.type == "cpu" or (device.type == "cuda" and self.precision != "float32")
            if fast_layout:
                self.memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
            model = _prepared_copy(model, device, self.memory_format)
        self.model = model

    def to_cpu(self) -> None:
        self._prepare(torch.device("cpu"))

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "float32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run on a batch already on the device; returns float32 output on the device."""
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode(), self.autocast():
            y = self.model(x)
        if not isinstance(y, torch.Tensor):
            raise ValueError(f"the model must return one tensor, it returned {type(y).__name__}")
        return y.float()

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self.forward(x).cpu().numpy()

    def run_measured(self, batch: np.ndarray) -> tuple[np.ndarray, float]:
        """Run and estimate the working memory per input pixel from the largest activation."""
        largest = [0]
        handles = []
        if isinstance(self.model, torch.nn.Module):

            def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    largest[0] = max(largest[0], output.numel() * output.element_size())

            handles = [
                m.register_forward_hook(hook) for m in self.model.modules() if not any(True for _ in m.children())
            ]
        try:
            y = self.run(batch)
        finally:
            for handle in handles:
                handle.remove()
        pixels = batch.shape[0] * int(np.prod(batch.shape[2:]))
        io_bytes = 8.0 * (batch.shape[1] + y.shape[1])
        if largest[0]:
            # a U-Net holds about five full-resolution activations at its peak (skip, upsampled,
            # concatenated, convolved); measured 5.0x for 2D and 3D segtune U-Nets
            return y, 5.0 * largest[0] / pixels + io_bytes
        return y, 1024.0 + io_bytes  # an opaque callable: assume a mid-sized U-Net


# The prepared copy of each model (eval mode, BatchNorm folded, on the device, in the fast
# layout), kept between predictions: preparing copies every weight, which took 0.2-0.4 s for the
# bundled 2D model on 2 CPU cores, as long as the network needs for a 1 MPx image. One entry per
# (model object, device, layout); an entry is used only while the model's weights are the ones
# it was made from (see weights_fingerprint), so fine-tuning in place gets a fresh copy.
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, tuple[tuple, torch.nn.Module]]] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_LOCK = threading.Lock()


def weights_fingerprint(model: torch.nn.Module) -> tuple:
    """What changes when any weight or buffer of ``model`` changes: each tensor's identity,
    storage and version counter (torch bumps it on every in-place write: optimiser steps,
    ``load_state_dict``, ``copy_``), and the module's structure (a replaced layer)."""
    return tuple(
        (name, id(t), t.data_ptr(), t._version, t.dtype, t.device)
        for name, t in chain(model.named_parameters(), model.named_buffers())
    )


def _prepared_copy(model: torch.nn.Module, device: torch.device, memory_format: Any) -> torch.nn.Module:
    """An inference copy of ``model`` on ``device``: cached, see :data:`_PREPARED`."""
    key = (str(device), str(memory_format))
    fingerprint = weights_fingerprint(model)
    with _PREPARED_LOCK:
        try:
            entry = _PREPARED.get(model, {}).get(key)
        except TypeError:  # not weak-referenceable: no cache
            entry = None
    if entry is not None and entry[0] == fingerprint:
        return entry[1]
    try:
        prepared = copy.deepcopy(model)  # leave the caller's module (mode, device, layout) alone
        copied = True
    except Exception:  # some modules cannot be copied; run the original then
        logger.info("could not copy the model; running it in place", exc_info=True)
        prepared, copied = model, False
    prepared.eval()
    if copied:
        prepared = _fold_batchnorm(prepared)
    prepared.to(device)
    if memory_format is not None:
        prepared.to(memory_format=memory_format)
    if copied:
        with _PREPARED_LOCK, contextlib.suppress(TypeError):
            _PREPARED.setdefault(model, {})[key] = (fingerprint, prepared)
    return prepared


def _fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold eval-mode BatchNorm into the convolution before it (inside ``nn.Sequential``)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    norms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    for module in list(model.modules()):
        if not isinstance(module, torch.nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if (
                isinstance(conv, convs)
                and isinstance(norm, norms)
                and norm.track_running_stats
                and norm.running_mean is not None
                and conv.out_channels == norm.num_features
            ):
                try:
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = torch.nn.Identity()
                except Exception:  # an unusual conv: keep it as it is
                    logger.debug("could not fold %s into %s", norm, conv, exc_info=True)
    return model


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is running out of memory (host or device), whatever torch calls it."""
    if isinstance(error, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "failed to allocate" in text
    )


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()
