"""Intensity normalisation: percentile scaling, contrast stretching and CLAHE."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_PERCENTILES",
    "STRETCH_PERCENTILES",
    "check_pixels",
    "clahe",
    "model_percentiles",
    "percentile_normalize",
    "percentile_spec",
    "percentiles",
]

DEFAULT_PERCENTILES = (1.0, 99.8)
STRETCH_PERCENTILES = (5.0, 98.0)  # the theses' contrast stretch


def percentiles(
    image: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    *,
    max_samples: int = 4_000_000,
    seed: int = 0,
) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``image`` (estimated from a sample when large).

    Large images are subsampled on a regular grid with a random offset so that the estimate is
    cheap and deterministic; dask arrays are sampled without reading the whole array.
    """
    _check_percentiles(low, high)
    values = image
    size = int(np.prod(image.shape))
    if size > max_samples:
        # the step spreads over the axes longer than 1 (a 1 x 1 x Y x X array is sampled in Y and X)
        long = sum(1 for n in image.shape if n > 1)
        step = int(np.ceil((size / max_samples) ** (1 / max(1, long))))
        rng = np.random.default_rng(seed)
        index = tuple(
            slice(int(rng.integers(0, min(step, n))), None, step) if n > 1 else slice(None) for n in image.shape
        )
        values = image[index]
    values = np.asarray(values, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def percentile_normalize(
    image: np.ndarray,
    low: float = DEFAULT_PERCENTILES[0],
    high: float = DEFAULT_PERCENTILES[1],
    *,
    clip: bool = False,
    limits: Sequence[float] | None = None,
    eps: float = 1e-6,
) -> np.ndarray:
    """Scale ``image`` so its ``low`` percentile maps to 0 and its ``high`` percentile to 1.

    Parameters
    ----------
    image
        Any real array (a whole image, or one channel of it).
    low, high
        Percentiles, 0 <= low < high <= 100. ``(5, 98)`` is the theses' contrast stretch.
    clip
        Clip the result to [0, 1] (a contrast stretch) instead of leaving tails beyond.
    limits
        Precomputed ``(lo, hi)`` intensities to use instead of computing percentiles, e.g.
        from the whole stack when normalising it tile by tile.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.

    Examples
    --------
    >>> x = np.arange(101, dtype=np.uint8)
    >>> float(percentile_normalize(x, 0, 100)[-1])
    1.0
    """
    lo, hi = percentiles(image, low, high) if limits is None else (float(limits[0]), float(limits[1]))
    out = (np.asarray(image, dtype=np.float32) - lo) / max(hi - lo, eps)
    if clip:
        np.clip(out, 0.0, 1.0, out=out)
    return out


def model_percentiles(
    config: Mapping[str, Any] | None,
    default: Sequence[float] | None = DEFAULT_PERCENTILES,
) -> tuple[float, float, bool] | None:
    """The percentile normalisation a model's config records: ``(low, high, clip)``.

    Percentiles the config leaves out are ``default``'s; with ``default=None`` a config that
    records no percentiles (no ``normalization`` block, ``"none"``, no ``low``) gives None.

    Examples
    --------
    >>> model_percentiles({"normalization": {"method": "percentile", "low": 5, "high": 98, "clip": True}})
    (5.0, 98.0, True)
    >>> model_percentiles({}), model_percentiles({}, default=None)
    ((1.0, 99.8, False), None)
    """
    spec = (config or {}).get("normalization")
    spec = spec if isinstance(spec, Mapping) else {}
    if default is None:
        if "low" not in spec:
            return None
        default = DEFAULT_PERCENTILES
    return float(spec.get("low", default[0])), float(spec.get("high", default[1])), bool(spec.get("clip", False))


def percentile_spec(low: float, high: float, clip: bool = False) -> dict[str, Any]:
    """The ``normalization`` block of a model config for percentile normalisation."""
    return {"method": "percentile", "low": float(low), "high": float(high), "clip": bool(clip)}


def clahe(
    image: np.ndarray, *, kernel_size: int | Sequence[int] | None = 127, clip_limit: float = 3.0, nbins: int = 256
) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image), returning float in [0, 1].

    The defaults are the cell-identification thesis's (block 127, 256 bins, clip slope 3).
    ``clip_limit`` is the slope as ImageJ's CLAHE states it; scikit-image's clip limit is a
    fraction of the histogram, so the slope is converted (``slope / nbins``).
    """
    from skimage import exposure

    if clip_limit <= 0:
        raise ValueError(f"clip_limit must be positive, got {clip_limit}")
    scaled = percentile_normalize(image, 0.0, 100.0, clip=True)
    return exposure.equalize_adapthist(
        scaled, kernel_size=kernel_size, clip_limit=clip_limit / nbins, nbins=nbins
    ).astype(np.float32)


def check_pixels(data: Any, source: str = "the image") -> None:
    """Refuse what no network can take: an empty array, non-real pixels, NaN or infinite pixels.

    ``data`` is a numpy or dask array (a dask array is read once, chunk by chunk, and only when
    its pixels are floating point: integer pixels cannot be NaN). ``source`` names it in the
    message (a file name, "the image").

    Raises
    ------
    ValueError
        Empty, of a dtype other than bool/integer/float (complex, text, objects), or holding
        NaN or infinite values, or values beyond float32's range (the message gives their count).
    """
    shape = tuple(int(n) for n in data.shape)
    if 0 in shape:
        raise ValueError(f"{source} is empty (shape {shape}); there are no pixels to segment")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        kind = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects"}.get(dtype.kind, str(dtype))
        raise ValueError(f"{source} holds {kind} (dtype {dtype}); segtune segments real-valued pixels")
    if dtype.kind == "f":
        # the network computes in float32: a float64 value beyond its range becomes infinite too
        limit = float(np.finfo(np.float32).max)
        if hasattr(data, "compute"):
            import dask.array as da

            bad = int(da.count_nonzero(~(da.fabs(data) <= limit)).compute())
        else:
            bad = int(np.count_nonzero(~(np.fabs(data) <= limit)))
        if bad:
            every = " (every pixel)" if bad == math.prod(shape) else ""
            raise ValueError(
                f"{source} has {bad} NaN or infinite pixel(s) of {math.prod(shape)}{every}; "
                "replace them (e.g. with 0 or the background level) first"
            )


def _check_percentiles(low: float, high: float) -> None:
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
