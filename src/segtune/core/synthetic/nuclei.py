"""Synthetic fluorescent nuclei (2D/3D), alone or with a Golgi channel, and exact instance masks.

Nuclei are ellipses (2D) or ellipsoids (3D) of varied size, eccentricity and orientation, some
touching, some overlapping (the one on top keeps the shared pixels), with textured chromatin,
an optional cytoplasmic glow, an optional smooth elastic deformation, uneven illumination,
optical blur, Poisson shot noise, camera read noise and a little debris, stored as 16-bit or
8-bit counts. :func:`random_nuclei_parameters` draws the keyword arguments of a random
"microscope" (stain, bit depth, brightness, noise, size) for training data with wide variety.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SyntheticNuclei",
    "SyntheticNucleiGolgi",
    "random_nuclei_parameters",
    "synthetic_nuclei",
    "synthetic_nuclei_golgi",
]


@dataclass
class SyntheticNuclei:
    """A synthetic image and its ground truth.

    Attributes
    ----------
    image
        uint16 (or uint8) intensities, shape ``(Y, X)`` or ``(Z, Y, X)``.
    labels
        uint16 instance labels of the same shape, 0 = background, consecutive ids.
    diameters
        The drawn (nominal) diameter of each labelled object, in XY pixels, by label id - 1.
    """

    image: np.ndarray
    labels: np.ndarray
    diameters: np.ndarray = field(default_factory=lambda: np.zeros(0))


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
    overlap: float = 0.0,
    elastic: float = 0.0,
    texture: float = 0.25,
    brightness_spread: float = 0.5,
    halo: float = 0.0,
    coverage: float = 0.25,
    uint8_peak: float = 230.0,
    out_of_focus: int = 0,
) -> SyntheticNuclei:
    """Draw a fluorescent-nucleus image (2D or 3D) with its instance labels.

    Parameters
    ----------
    shape
        ``(Y, X)`` or ``(Z, Y, X)``.
    n_objects
        Number of nuclei to try to place; by default enough to cover about ``coverage`` of the
        image. Nuclei hidden mostly behind others are left out.
    diameter, diameter_spread
        Mean nucleus diameter in (XY) pixels and its relative spread (standard deviation).
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
        ``numpy.uint16`` or ``numpy.uint8`` (scaled so the 99.9th percentile is ``uint8_peak``).
    seed
        Seed for the random generator.
    overlap
        Fraction of nuclei placed partly on top of an existing one (their fluorescence adds
        up; the shared pixels belong to the nucleus on top). 0 keeps every nucleus apart
        except for the slight contact of ``touching`` ones.
    elastic
        Largest displacement, in pixels, of a smooth random deformation applied to nuclei and
        labels alike (0 = none). About a fifth of the diameter gives irregular, bean-like shapes.
    texture
        Strength of the chromatin texture (0 = flat nuclei; 0.25 is Hoechst-like, 0.6 H2B-like).
    brightness_spread
        Nucleus brightness is drawn uniformly in ``brightness * (1 +- brightness_spread)``.
    halo
        Brightness of a dim cytoplasm-like glow around each nucleus, as a fraction of its own
        brightness (GFP reporters leak into the cytoplasm); not part of the labels.
    coverage
        Fraction of the image the nuclei cover when ``n_objects`` is not given.
    uint8_peak
        For ``dtype=numpy.uint8``: the value the 99.9th percentile maps to (low values give
        dim 8-bit images that use a small part of the range).
    out_of_focus
        Number of large, blurred, very bright blobs that are not labelled (cells out of the
        focal plane, clumps of debris): they make real nuclei look dim after normalisation.

    Returns
    -------
    SyntheticNuclei
        ``image``, ``labels`` (same shape) and the nominal ``diameters``.

    Raises
    ------
    ValueError
        For a shape that is not 2D or 3D, or out-of-range options.

    Examples
    --------
    >>> sample = synthetic_nuclei((64, 64), diameter=12, seed=1)
    >>> sample.image.shape, sample.labels.dtype
    ((64, 64), dtype('uint16'))
    """
    if len(shape) not in (2, 3):
        raise ValueError(f"shape must be (Y, X) or (Z, Y, X), got {shape}")
    if min(shape) < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    if diameter <= 0:
        raise ValueError(f"diameter must be positive, got {diameter}")
    for name, value in (("touching", touching), ("overlap", overlap), ("coverage", coverage)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if dtype not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be numpy.uint8 or numpy.uint16, got {dtype}")
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    scale = np.array([z_anisotropy] + [1.0] * (ndim - 1)) if ndim == 3 else np.ones(2)
    if n_objects is None:
        unit = (np.pi / 4 if ndim == 2 else np.pi / 6) * diameter**ndim
        n_objects = max(1, int(coverage * np.prod(np.array(shape) * scale) / unit))

    labels = np.zeros(shape, dtype=np.uint16)
    signal = np.zeros(shape, dtype=np.float32)
    glow = np.zeros(shape, dtype=np.float32) if halo > 0 else None
    centres: list[np.ndarray] = []
    radii_list: list[float] = []
    areas: dict[int, int] = {}
    drawn: dict[int, float] = {}
    for index in range(1, n_objects + 1):
        d = max(3.0, diameter * (1 + diameter_spread * rng.standard_normal()))
        ecc = rng.uniform(0, eccentricity)
        semi = np.full(ndim, d / 2)
        semi[-1] *= np.sqrt(1 - ecc**2) if ndim == 2 else 1.0
        if ndim == 3:
            semi[1] *= np.sqrt(1 - ecc**2)
        # the extra draw happens only when overlap is asked for, so older seeds give older images
        on_top = bool(centres) and overlap > 0 and rng.random() < overlap
        if on_top:
            which = int(rng.integers(len(centres)))
            direction = rng.standard_normal(ndim)
            direction /= np.linalg.norm(direction) + 1e-9
            reach = (radii_list[which] + d / 2) * rng.uniform(0.55, 0.8)
            centre = centres[which] + direction * reach / scale
        elif centres and rng.random() < touching:
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
        if on_top:
            # the new nucleus covers part of others; each must stay mostly visible
            covered = np.bincount(region[mask].ravel(), minlength=1)
            if any(covered[i] > 0.45 * areas.get(int(i), 0) for i in np.nonzero(covered)[0] if i):
                continue
            drawn_here = mask
        else:
            drawn_here = mask & (region == 0)
            if drawn_here.sum() < 0.6 * mask.sum():  # mostly hidden behind others: skip it
                continue
        level = brightness * rng.uniform(1 - brightness_spread, 1 + brightness_spread)
        pattern = level * (1 + texture * ndi.gaussian_filter(rng.standard_normal(mask.shape), 1.5) * 3)
        if on_top:
            for i in np.nonzero(covered)[0]:
                if i:
                    areas[int(i)] -= int(covered[i])
            signal[box][mask] += pattern[mask].astype(np.float32)
        else:
            signal[box][drawn_here] = pattern[drawn_here].astype(np.float32)
        region[drawn_here] = index
        areas[index] = int(drawn_here.sum())
        if glow is not None:
            glow[box][mask] += level * halo
        drawn[index] = d
        centres.append(centre)
        radii_list.append(d / 2)

    if elastic > 0:
        field_sigma = max(2.0, diameter * 0.75)
        displacement = _smooth_field(shape, field_sigma, elastic, scale, rng)
        signal = _warp(signal, displacement, order=1)
        labels = _warp(labels, displacement, order=0)
        if glow is not None:
            glow = _warp(glow, displacement, order=1)
    if glow is not None:
        # a cytoplasm-sized blur of the nuclei: where the reporter leaks around each nucleus
        sigma = max(1.0, diameter * 0.35)
        signal += ndi.gaussian_filter(glow, sigma=[sigma / s for s in scale])

    for _ in range(debris):
        point = tuple(int(rng.integers(0, n)) for n in shape)
        signal[point] += brightness * rng.uniform(2, 4)
    if out_of_focus > 0:
        haze = np.zeros(shape, dtype=np.float32)
        for _ in range(out_of_focus):
            point = tuple(int(rng.integers(0, n)) for n in shape)
            haze[point] = 1.0
        sigma = diameter * rng.uniform(0.3, 0.6)
        haze = ndi.gaussian_filter(haze, [sigma / s for s in scale])
        peak = float(haze.max())
        if peak > 0:
            signal += (haze / peak * brightness * rng.uniform(2, 6)).astype(np.float32)

    signal = ndi.gaussian_filter(signal, sigma=[blur / s for s in scale]) if blur > 0 else signal
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape[-2:]], indexing="ij")
    tilt = rng.standard_normal(2)
    light = 1 + illumination * (tilt[0] * grid[0] + tilt[1] * grid[1]) / (np.abs(tilt).sum() + 1e-9)
    light = np.clip(light, 0.2, None).astype(np.float32)
    expected = (signal + background) * light
    counts = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    counts += rng.normal(0, read_noise, size=shape).astype(np.float32)

    if dtype == np.uint8:
        counts = counts / max(float(np.percentile(counts, 99.9)), 1.0) * uint8_peak
        image = np.clip(counts, 0, 255).astype(np.uint8)
    else:
        image = np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    from skimage.segmentation import relabel_sequential

    relabelled, forward, _ = relabel_sequential(labels)
    kept = [int(i) for i in np.unique(labels) if i]
    diameters = np.array([drawn[i] for i in kept], dtype=float)
    return SyntheticNuclei(image=image, labels=relabelled.astype(np.uint16), diameters=diameters)


def random_nuclei_parameters(
    rng: np.random.Generator, *, ndim: int = 2, diameter: tuple[float, float] = (12.0, 40.0)
) -> dict[str, Any]:
    """Keyword arguments for :func:`synthetic_nuclei` of a random microscope and stain.

    Covers Hoechst/DAPI-like (smooth, bright), GFP-like (flatter, with cytoplasmic glow) and
    H2B-like (strong chromatin texture) nuclei, 8- and 16-bit cameras, dim and bright
    exposures, sparse and crowded fields, with elastic shapes, touching and overlapping
    neighbours.

    Parameters
    ----------
    rng
        The random generator to draw from.
    ndim
        2 or 3 (3 also draws a Z anisotropy between 1 and 3).
    diameter
        Range of mean nucleus diameters, in pixels (drawn log-uniformly).

    Returns
    -------
    dict
        Keyword arguments (all but ``shape`` and ``seed``).
    """
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim}")
    lo, hi = diameter
    if not 0 < lo <= hi:
        raise ValueError(f"diameter must be a range (low, high) with 0 < low <= high, got {diameter}")
    d = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    stain = rng.choice(["hoechst", "gfp", "h2b"], p=[0.45, 0.3, 0.25])
    background = float(rng.choice([20.0, 100.0, 400.0, 1500.0]))
    contrast = float(np.exp(rng.uniform(np.log(0.3), np.log(15.0))))  # nucleus over background
    read_noise = float(rng.uniform(2, 25))
    params: dict[str, Any] = {
        "diameter": d,
        "diameter_spread": float(rng.uniform(0.1, 0.3)),
        "eccentricity": float(rng.uniform(0.3, 0.85)),
        "touching": float(rng.uniform(0.1, 0.6)),
        "overlap": float(rng.uniform(0.0, 0.25)),
        "coverage": float(rng.uniform(0.08, 0.45)),
        "brightness": background * contrast + 5 * read_noise,
        "brightness_spread": float(rng.uniform(0.2, 0.6)),
        "background": background,
        "illumination": float(rng.uniform(0.0, 0.6)),
        "blur": float(rng.uniform(0.5, 2.0) * max(1.0, d / 30)),
        "read_noise": read_noise,
        "debris": int(rng.integers(0, 12)),
        "elastic": float(rng.uniform(0.0, 0.2) * d),
        "texture": {"hoechst": 0.2, "gfp": 0.1, "h2b": 0.55}[str(stain)] * float(rng.uniform(0.6, 1.4)),
        "halo": float(rng.uniform(0.05, 0.3)) if stain == "gfp" else 0.0,
        "out_of_focus": int(rng.choice([0, 0, 1, 2, 4])),
    }
    if ndim == 3:
        params["z_anisotropy"] = float(rng.uniform(1.0, 3.0))
    if rng.random() < 0.4:
        params["dtype"] = np.uint8
        params["uint8_peak"] = float(rng.uniform(40, 250))
    return params


def _smooth_field(
    shape: tuple[int, ...], sigma: float, amplitude: float, scale: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A smooth random displacement field (one component per axis) whose largest step is ``amplitude``."""
    sigmas = [sigma / s for s in scale]
    components = []
    for axis in range(len(shape)):
        component = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigmas, mode="reflect")
        components.append(component / scale[axis])
    stacked = np.stack(components)
    peak = float(np.abs(stacked).max())
    return stacked * (amplitude / peak if peak > 0 else 0.0)


def _warp(array: np.ndarray, displacement: np.ndarray, order: int) -> np.ndarray:
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in array.shape], indexing="ij")
    coords = [g + d for g, d in zip(grid, displacement, strict=True)]
    return ndi.map_coordinates(array, coords, order=order, mode="nearest").astype(array.dtype)


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


@dataclass
class SyntheticNucleiGolgi:
    """A two-channel 3D stack of nuclei with their Golgi, and its ground truth.

    Attributes
    ----------
    image
        uint16 ``(2, Z, Y, X)``: channel 0 the nuclear stain, channel 1 the Golgi marker.
    nuclei, golgi
        uint16 instance labels ``(Z, Y, X)``; a Golgi carries the id of its nucleus, so
        ``golgi == k`` and ``nuclei == k`` are one pair (a nucleus whose Golgi did not fit has none).
    classes
        uint8 ``(Z, Y, X)`` class flags for a multilabel head: bit 0 nucleus, bit 1 Golgi.
    """

    image: np.ndarray
    nuclei: np.ndarray
    golgi: np.ndarray
    classes: np.ndarray

    @property
    def n_pairs(self) -> int:
        return int(len(np.unique(self.golgi)) - 1)


def synthetic_nuclei_golgi(
    shape: tuple[int, int, int] = (32, 128, 128),
    *,
    n_pairs: int | tuple[int, int] = (40, 90),
    nucleus_diameter: float = 14.0,
    golgi_diameter: float = 4.0,
    gap: tuple[float, float] = (0.0, 3.0),
    eccentricity: float = 0.4,
    z_anisotropy: float = 2.0,
    elastic: float = 2.0,
    brightness: tuple[float, float] = (800.0, 1500.0),
    background: float = 100.0,
    blur: float = 1.0,
    read_noise: float = 10.0,
    seed: int | None = 0,
) -> SyntheticNucleiGolgi:
    """Draw a nuclei + Golgi stack: ellipsoid nuclei, each with a spherical Golgi beside it.

    Each pair is a randomly oriented ellipsoid nucleus and a sphere whose centre lies in a random
    direction from the nucleus centre, ``gap`` pixels (drawn uniformly) beyond the nucleus
    surface in that direction; nuclei and Golgi never overlap other objects. The stack, both
    channels and both label images, is then elastically deformed by a smooth random field
    (largest displacement ``elastic`` pixels), blurred, and given Poisson and read noise.

    Parameters
    ----------
    shape
        ``(Z, Y, X)`` of the crop.
    n_pairs
        Pairs to place, or a ``(low, high)`` range to draw from (40-90, as in the thesis).
    nucleus_diameter, golgi_diameter
        Mean XY diameters in pixels (nuclei vary by 20 %, Golgi by 25 %).
    gap
        Range of the Golgi's distance from the nucleus surface, in XY pixels.
    eccentricity
        Nuclei are drawn up to this eccentricity.
    z_anisotropy
        Z step over XY pixel size.
    elastic, brightness, background, blur, read_noise
        Deformation amplitude (pixels), mean object intensity range, background, optical blur
        and camera noise, in counts.
    seed
        Seed of the random generator.

    Examples
    --------
    >>> stack = synthetic_nuclei_golgi((16, 64, 64), n_pairs=8, seed=1)
    >>> stack.image.shape, stack.n_pairs <= 8
    ((2, 16, 64, 64), True)
    """
    rng = np.random.default_rng(seed)
    if len(shape) != 3:
        raise ValueError(f"shape must be (Z, Y, X), got {shape}")
    target = int(rng.integers(n_pairs[0], n_pairs[1] + 1)) if isinstance(n_pairs, tuple) else int(n_pairs)
    scale = np.array([z_anisotropy, 1.0, 1.0])
    nuclei = np.zeros(shape, np.uint16)
    golgi = np.zeros(shape, np.uint16)
    signals = np.zeros((2, *shape), np.float32)
    placed = 0
    for _ in range(target * 20):
        if placed == target:
            break
        d = nucleus_diameter * max(0.5, rng.normal(1, 0.2))
        semi = d / 2 * np.array([1.0, 1.0, 1.0 - rng.uniform(0, eccentricity) ** 2]) ** 0.5
        centre = rng.uniform(0, 1, 3) * np.array(shape)
        rotation = _random_rotation(3, rng)
        mask, box = _ellipsoid_mask(shape, centre, semi, rotation, scale)
        if (
            mask is None
            or np.any(nuclei[box][mask])
            or np.any(golgi[box][mask])
            or mask.sum() < 0.5 * np.prod(semi / scale) * 4
        ):
            continue
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        # the ellipsoid's radius along `direction` (in its own frame), then the gap beyond it
        radius = 1.0 / np.sqrt((((direction @ rotation) / semi) ** 2).sum())
        g = golgi_diameter * max(0.5, rng.normal(1, 0.25))
        golgi_centre = centre + direction * (radius + rng.uniform(*gap) + g / 2) / scale
        g_mask, g_box = _ellipsoid_mask(shape, golgi_centre, np.full(3, g / 2), np.eye(3), scale)
        if g_mask is None or np.any(nuclei[g_box][g_mask]) or np.any(golgi[g_box][g_mask]):
            continue
        placed += 1
        nuclei[box][mask] = placed
        golgi[g_box][g_mask] = placed
        texture = 1 + 0.25 * ndi.gaussian_filter(rng.standard_normal(mask.shape), 1.5) * 3
        signals[0][box][mask] = (rng.uniform(*brightness) * texture)[mask]
        signals[1][g_box][g_mask] = rng.uniform(*brightness) * 1.5
    if elastic > 0:
        displacement = _smooth_field(shape, max(2.0, nucleus_diameter), elastic, scale, rng)
        signals = np.stack([_warp(s, displacement, order=1) for s in signals])
        nuclei, golgi = _warp(nuclei, displacement, order=0), _warp(golgi, displacement, order=0)
    signals[1] += 0.05 * signals[0]  # a little bleed-through of the nuclear stain
    if blur > 0:
        signals = np.stack([ndi.gaussian_filter(s, [blur / f for f in scale]) for s in signals])
    counts = rng.poisson(np.clip(signals + background, 0, None)).astype(np.float32)
    counts += rng.normal(0, read_noise, size=counts.shape).astype(np.float32)
    image = np.clip(counts, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    classes = ((nuclei > 0) * 1 + (golgi > 0) * 2).astype(np.uint8)
    return SyntheticNucleiGolgi(image=image, nuclei=nuclei, golgi=golgi, classes=classes)
