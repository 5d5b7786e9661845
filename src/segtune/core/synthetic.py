"""Synthetic fluorescent-nucleus images with exact instance masks, for sample data and tests.

Nuclei are ellipses (2D) or ellipsoids (3D) of varied size, eccentricity and orientation, some
touching, with textured chromatin, uneven illumination, optical blur, Poisson shot noise, camera
read noise and a little debris. Everything is drawn from one seeded generator, so a seed gives
the same image every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticNuclei", "synthetic_nuclei"]


@dataclass
class SyntheticNuclei:
    """A synthetic image and its ground truth.

    Attributes
    ----------
    image
        uint16 (or uint8) intensities, shape ``(Y, X)`` or ``(Z, Y, X)``.
    labels
        uint16 instance labels of the same shape, 0 = background.
    """

    image: np.ndarray
    labels: np.ndarray


def synthetic_nuclei(
    shape: tuple[int, ...] = (256, 256),
    *,
    n_objects: int | None = None,
    diameter: float = 18.0,
    diameter_spread: float = 0.25,
    eccentricity: float = 0.5,
    touching: float = 0.3,
    brightness: float = 1000.0,
    background: float = 100.0,
    illumination: float = 0.4,
    blur: float = 1.0,
    read_noise: float = 10.0,
    debris: int = 3,
    z_anisotropy: float = 1.0,
    dtype: type = np.uint16,
    seed: int | None = 0,
) -> SyntheticNuclei:
    """Draw a fluorescent-nucleus image (2D or 3D) with its instance labels.

    Parameters
    ----------
    shape
        ``(Y, X)`` or ``(Z, Y, X)``.
    n_objects
        Number of nuclei; by default enough to cover about 25% of the image.
    diameter, diameter_spread
        Mean nucleus diameter in pixels and its relative spread.
    eccentricity
        0 gives circles; towards 1 gives elongated ellipses (drawn up to this value).
    touching
        Fraction of nuclei placed right next to an existing one.
    brightness, background
        Mean nucleus and background intensity (before noise), in counts.
    illumination
        Strength of the smooth illumination gradient (0 = flat).
    blur
        Gaussian sigma of the optics, in pixels.
    read_noise
        Standard deviation of the Gaussian camera noise, in counts.
    debris
        Number of small bright specks that are not nuclei.
    z_anisotropy
        Z step over XY pixel size for 3D (2.0 flattens nuclei along Z by half).
    dtype
        ``numpy.uint16`` or ``numpy.uint8`` (scaled to use the range).
    seed
        Seed for the random generator.
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    scale = np.array([z_anisotropy] + [1.0] * (ndim - 1)) if ndim == 3 else np.ones(2)
    if n_objects is None:
        unit = (np.pi / 4 if ndim == 2 else np.pi / 6) * diameter**ndim
        n_objects = max(1, int(0.25 * np.prod(np.array(shape) * scale) / unit))

    labels = np.zeros(shape, dtype=np.uint16)
    signal = np.zeros(shape, dtype=np.float32)
    centres: list[np.ndarray] = []
    radii_list: list[float] = []
    for index in range(1, n_objects + 1):
        d = max(3.0, diameter * (1 + diameter_spread * rng.standard_normal()))
        ecc = rng.uniform(0, eccentricity)
        semi = np.full(ndim, d / 2)
        semi[-1] *= np.sqrt(1 - ecc**2) if ndim == 2 else 1.0
        if ndim == 3:
            semi[1] *= np.sqrt(1 - ecc**2)
        if centres and rng.random() < touching:
            anchor = centres[rng.integers(len(centres))]
            direction = rng.standard_normal(ndim)
            direction /= np.linalg.norm(direction) + 1e-9
            centre = anchor + direction * (radii_list[-1] + d / 2) * 0.95 / scale
        else:
            centre = rng.uniform(0, 1, ndim) * np.array(shape)
        rotation = _random_rotation(ndim, rng)
        mask, box = _ellipsoid_mask(shape, centre, semi, rotation, scale)
        if mask is None:
            continue
        region = labels[box]
        free = mask & (region == 0)
        if free.sum() < 0.6 * mask.sum():  # mostly hidden behind others: skip it
            continue
        region[free] = index
        level = brightness * rng.uniform(0.5, 1.5)
        texture = 1 + 0.25 * ndi.gaussian_filter(rng.standard_normal(mask.shape), 1.5) * 3
        signal[box][free] = (level * texture[free]).astype(np.float32)
        centres.append(centre)
        radii_list.append(d / 2)

    for _ in range(debris):
        point = tuple(int(rng.integers(0, n)) for n in shape)
        signal[point] += brightness * rng.uniform(2, 4)

    signal = ndi.gaussian_filter(signal, sigma=[blur / s for s in scale]) if blur > 0 else signal
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[-2:]], indexing="ij")
    tilt = rng.standard_normal(2)
    field = 1 + illumination * (tilt[0] * grid[0] + tilt[1] * grid[1]) / (np.abs(tilt).sum() + 1e-9)
    field = np.clip(field, 0.2, None).astype(np.float32)
    expected = (signal + background) * field
    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    counts += rng.normal(0, read_noise, size=shape).astype(np.float32)

    if dtype == np.uint8:
        counts = counts / max(float(np.percentile(counts, 99.9)), 1.0) * 230
        image = np.clip(counts, 0, 255).astype(np.uint8)
    else:
        image = np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    from skimage.segmentation import relabel_sequential

    return SyntheticNuclei(image=image, labels=relabel_sequential(labels)[0].astype(np.uint16))


def _random_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _ellipsoid_mask(
    shape: tuple[int, ...], centre: np.ndarray, semi: np.ndarray, rotation: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray | None, tuple[slice, ...]]:
    reach = np.ceil(semi.max() / scale).astype(int) + 1
    lo = np.maximum(np.floor(centre).astype(int) - reach, 0)
    hi = np.minimum(np.floor(centre).astype(int) + reach + 1, shape)
    if np.any(hi <= lo):
        return None, ()
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    coords = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij"), axis=-1)
    offset = (coords - centre) * scale
    local = offset @ rotation
    mask = ((local / semi) ** 2).sum(axis=-1) <= 1.0
    if not mask.any():
        return None, ()
    return mask, box
