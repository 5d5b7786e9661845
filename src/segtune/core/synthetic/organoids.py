"""Synthetic brightfield organoids with exact instance masks: large irregular blobs with
textured interiors and dark rims on a bright background, next to out-of-focus (unlabelled)
neighbours. One seeded generator draws everything, so a seed gives the same image every time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["SyntheticOrganoids", "synthetic_organoids"]


@dataclass
class SyntheticOrganoids:
    """A synthetic brightfield organoid image and its ground truth.

    Attributes
    ----------
    image
        uint8 or uint16 intensities, shape ``(Y, X)``; organoids are darker than the background.
    labels
        uint16 instance labels of the in-focus organoids (out-of-focus neighbours are background).
    """

    image: np.ndarray
    labels: np.ndarray


def synthetic_organoids(
    shape: tuple[int, int] = (512, 512),
    *,
    n_objects: int | None = None,
    diameter: float = 120.0,
    diameter_spread: float = 0.3,
    irregularity: float = 0.15,
    out_of_focus: int = 3,
    rim: float = 0.35,
    texture: float = 0.25,
    background: float = 180.0,
    illumination: float = 0.15,
    noise: float = 4.0,
    dtype: type = np.uint8,
    seed: int | None = 0,
) -> SyntheticOrganoids:
    """Draw an organoid-like brightfield image with instance labels of the in-focus organoids.

    Organoids are large irregular blobs (a circle whose radius varies with angle) that absorb
    light: darker than the bright background, with a granular interior texture, a dark rim and
    a faint bright halo outside it. Out-of-focus neighbours are blurred blobs with a soft
    bright/dark ring that are not labelled.

    Parameters
    ----------
    shape
        ``(Y, X)``.
    n_objects
        Number of in-focus organoids (by default enough to cover about 20% of the image).
    diameter, diameter_spread
        Mean diameter in pixels and its relative spread.
    irregularity
        Relative amplitude of the radius modulation (0 = circles).
    out_of_focus
        Number of blurred, unlabelled neighbours.
    rim
        Darkness of the rim, as a fraction of the background.
    texture
        Strength of the interior texture.
    background
        Background intensity.
    illumination
        Strength of a smooth vignetting (0 = flat).
    noise
        Standard deviation of the Gaussian noise.
    dtype
        ``numpy.uint8`` or ``numpy.uint16``.
    seed
        Seed for the random generator.

    Returns
    -------
    SyntheticOrganoids
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be a positive (Y, X), got {shape}")
    if diameter <= 0:
        raise ValueError(f"diameter must be positive, got {diameter}")
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be numpy.uint8 or numpy.uint16, got {dtype}")
    rng = np.random.default_rng(seed)
    if n_objects is None:
        n_objects = max(1, int(0.2 * shape[0] * shape[1] / (np.pi / 4 * diameter**2)))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    absorb = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint16)

    # out-of-focus neighbours first: they lie behind (and are hidden by) the in-focus ones
    for _ in range(out_of_focus):
        blob = _irregular_blob(yy, xx, shape, diameter * rng.uniform(0.6, 1.3), irregularity, rng)
        sigma = diameter * rng.uniform(0.06, 0.15)
        soft = ndi.gaussian_filter(blob.astype(np.float32), sigma)
        ring = ndi.gaussian_filter(blob.astype(np.float32), 2 * sigma) - soft
        absorb += 0.25 * soft - 0.6 * ring * rng.choice([-1.0, 1.0])

    index = 0
    for _ in range(n_objects * 3):
        if index == n_objects:
            break
        d = max(8.0, diameter * (1 + diameter_spread * rng.standard_normal()))
        blob = _irregular_blob(yy, xx, shape, d, irregularity, rng)
        if not blob.any() or (labels[blob] > 0).mean() > 0.05:
            continue  # organoids sit apart; a rare slight contact is fine
        index += 1
        labels[blob & (labels == 0)] = index
        grain = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), max(1.0, d / 40))
        grain /= grain.std() + 1e-9
        inner = ndi.distance_transform_edt(blob)
        rim_profile = np.exp(-inner / max(1.5, d / 30))  # dark band just inside the edge
        level = rng.uniform(0.25, 0.5)
        absorb[blob] = (level + texture * 0.3 * grain[blob] + rim * rim_profile[blob]).astype(np.float32)
        outer = ndi.distance_transform_edt(~blob)
        halo = (outer > 0) & (outer < max(2.0, d / 25))
        absorb[halo] -= 0.08  # the bright phase halo of brightfield

    absorb = ndi.gaussian_filter(absorb, 1.0)
    cy, cx = shape[0] / 2, shape[1] / 2
    radius2 = ((yy - cy) / shape[0]) ** 2 + ((xx - cx) / shape[1]) ** 2
    light = background * (1 - illumination * radius2 * 2)
    image = light * (1 - np.clip(absorb, -0.5, 0.95)) + rng.normal(0, noise, size=shape)
    top = 255 if dtype == np.uint8 else np.iinfo(np.uint16).max
    if dtype == np.uint16:
        image = image * 16
    from skimage.segmentation import relabel_sequential

    return SyntheticOrganoids(
        image=np.clip(image, 0, top).astype(dtype), labels=relabel_sequential(labels)[0].astype(np.uint16)
    )


def _irregular_blob(
    yy: np.ndarray, xx: np.ndarray, shape: tuple[int, int], d: float, irregularity: float, rng: np.random.Generator
) -> np.ndarray:
    """A star-shaped blob: radius ``d/2 * (1 + sum_k a_k cos(k theta + phi_k))``, k = 2..6."""
    centre = rng.uniform(0, 1, 2) * np.array(shape)
    angle = np.arctan2(yy - centre[0], xx - centre[1])
    distance = np.hypot(yy - centre[0], xx - centre[1])
    radius = np.ones_like(angle)
    for k in range(2, 7):
        radius += irregularity * rng.normal(0, 1) / k**0.7 * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
    return distance <= d / 2 * np.clip(radius, 0.4, None)
