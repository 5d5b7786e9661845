"""Say which PyTorch build is installed: its version, and whether it is the CPU-only build or
one for CUDA (NVIDIA) GPUs. ``scripts/setup.sh`` prints this after installing torch, so that
what it says is what was installed, wherever the wheel came from.

Run: ``python scripts/torch_build.py``.
"""

from __future__ import annotations


def describe() -> str:
    """``torch 2.13.0+cpu: the CPU-only build`` or ``torch 2.13.0 built for CUDA 12.8 ...``."""
    import torch

    version = torch.__version__
    cuda = torch.version.cuda
    if cuda:
        found = (
            "an NVIDIA GPU is usable now"
            if torch.cuda.is_available()
            else "no NVIDIA GPU is usable on this machine now"
        )
        return (
            f"torch {version} built for CUDA {cuda} ({found}); on a machine without an NVIDIA GPU the "
            "CPU-only build is much smaller: see 'Which PyTorch' in the README"
        )
    if getattr(torch.version, "hip", None):
        return f"torch {version} built for ROCm {torch.version.hip} (AMD GPUs)"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_built():
        return f"torch {version}: runs on the CPU and on Apple GPUs (MPS)"
    return f"torch {version}: the CPU-only build (no CUDA)"


if __name__ == "__main__":
    print(describe())
