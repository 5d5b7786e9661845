"""Choosing the torch device: the one place that decides between CUDA, Apple MPS and CPU."""

from __future__ import annotations

import contextlib
import os

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    preference
        ``"auto"`` picks CUDA, then Apple MPS, then CPU. ``"cuda"``, ``"cuda:1"``, ``"mps"``
        or ``"cpu"`` ask for that device and fail clearly when it is not available.

    Raises
    ------
    ValueError
        If ``preference`` names no known device or asks for one this machine lacks.
    """
    if isinstance(preference, torch.device):
        return preference
    name = str(preference).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} was asked for but CUDA is not available here")
        return torch.device(name)
    if kind == "mps":
        if not _mps_available():
            raise ValueError(f"device {preference!r} was asked for but Apple MPS is not available here")
        return torch.device("mps")
    if kind == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device {preference!r} is not one of {', '.join(DEVICE_CHOICES)}")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def describe_device(device: torch.device) -> str:
    """A short human-readable name: ``"cuda (NVIDIA H100)"``, ``"cpu (2 threads)"``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def available_memory(device: torch.device) -> float:
    """Bytes free for new allocations on ``device`` (a cautious guess where the system does not say)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    if device.type == "mps":
        with contextlib.suppress(Exception):
            return float(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4e9
