"""Choosing the torch device: the one place that decides between CUDA, Apple MPS and CPU."""

from __future__ import annotations

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
