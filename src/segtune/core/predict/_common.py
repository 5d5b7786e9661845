"""Small checks and helpers the modules of the prediction engine share (not public API)."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np

_PACKAGE = __name__.rpartition(".")[0]  # segtune.core.predict


def _in_package(module: str) -> bool:
    return module == _PACKAGE or module.startswith(_PACKAGE + ".")


def warn(message: str) -> None:
    """``warnings.warn`` attributed to the first caller outside this package."""
    frame, level = sys._getframe(1), 2
    while frame is not None and _in_package(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def format_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_spatial_dims(spatial_dims: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")


def check_output(y: np.ndarray, expected_spatial: tuple[int, ...]) -> None:
    if (
        y.ndim != len(expected_spatial) + 1
        or y.shape[0] != expected_spatial[0]
        or tuple(y.shape[2:]) != expected_spatial[1:]
    ):
        raise ValueError(
            f"the model must map (N, C, *spatial) to (N, K, *spatial); for input spatial shape {expected_spatial[1:]} "
            f"it returned {tuple(y.shape)}"
        )


def per_axis(value: int | Sequence[int], dims: int, name: str, minimum: int) -> tuple[int, ...]:
    values = (value,) * dims if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != dims or any(int(v) != v or v < minimum for v in values):
        raise ValueError(f"{name} must be an integer >= {minimum} or {dims} of them, got {value!r}")
    return tuple(int(v) for v in values)


def per_axis_float(
    value: float | Sequence[float], dims: int, name: str, upper: float | None = 1.0
) -> tuple[float, ...]:
    values = (float(value),) * dims if isinstance(value, (int, float, np.floating)) else tuple(float(v) for v in value)
    if len(values) != dims or any(v < 0 or (upper is not None and v >= upper) for v in values):
        bound = f"in [0, {upper})" if upper is not None else "non-negative"
        raise ValueError(f"{name} must be {bound}, one value or {dims}, got {value!r}")
    return values


def ceil_to(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


def floor_to(value: int, multiple: int) -> int:
    return int(value) // int(multiple) * int(multiple)
