"""Choosing the torch device: auto, explicit choices, clear refusals, and what the machine has free."""

from __future__ import annotations

import pytest
import torch

from segtune.core.device import DEVICE_CHOICES, available_memory, describe_device, select_device


def test_auto_prefers_cuda_then_mps_then_cpu():
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    expected = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    assert select_device("auto").type == expected
    assert select_device().type == expected


def test_explicit_choices_and_passthrough():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    device = torch.device("cpu")
    assert select_device(device) is device
    assert DEVICE_CHOICES == ("auto", "cuda", "mps", "cpu")


def test_a_device_this_machine_lacks_is_refused_by_name():
    if torch.cuda.is_available():
        assert select_device("cuda:0") == torch.device("cuda:0")
    else:
        with pytest.raises(ValueError, match="device 'cuda:1' was asked for but CUDA is not available here"):
            select_device("cuda:1")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(ValueError, match="device 'mps' was asked for but Apple MPS is not available here"):
            select_device("mps")
    with pytest.raises(ValueError, match="device 'tpu' is not one of auto, cuda, mps, cpu"):
        select_device("tpu")


def test_description_and_free_memory():
    cpu = torch.device("cpu")
    assert describe_device(cpu) == f"cpu ({torch.get_num_threads()} threads)"
    import psutil

    free = available_memory(cpu)
    assert 0 < free <= psutil.virtual_memory().total
    if torch.cuda.is_available():
        gpu = torch.device("cuda", 0)
        assert describe_device(gpu) == f"cuda ({torch.cuda.get_device_name(0)})"
        assert 0 < available_memory(gpu) <= torch.cuda.get_device_properties(0).total_memory
