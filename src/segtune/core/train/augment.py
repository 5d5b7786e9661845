"""Data augmentation for training patches: geometry applied identically to image and labels, intensity to the image.

Geometric transforms (flips, 90-degree rotations, small rotations, shifts, shear, zoom) move
the image and every label-like array (instance labels, class targets, a validity mask) in
exactly the same way: images are interpolated linearly, labels by nearest neighbour, and
pixels that come from outside the patch are filled by reflection, as the seeds' Keras
``ImageDataGenerator(fill_mode="reflect")`` did. Intensity transforms (brightness, contrast,
Gaussian blur, Gaussian noise, salt-and-pepper noise) change the image only.

In 3D (``(C, Z, Y, X)`` patches) flips act on every axis, while rotations, shear and zoom act
in the YX plane, since Z is usually sampled more coarsely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["AugmentConfig", "augment", "geometric", "intensity", "random_affine", "random_elastic"]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly (the defaults are the seeds' choices).

    Attributes
    ----------
    flip
        Random flips along every spatial axis (each with probability 1/2).
    rotate90
        Random multiples of 90 degrees in the YX plane (square YX patches only).
    rotation
        Small rotations, uniform in ``[-rotation, rotation]`` degrees.
    shift
        Shifts, uniform in ``[-shift, shift]`` times the patch size on each axis.
    shear
        Shear factor, uniform in ``[-shear, shear]``.
    zoom
        Zoom factor, uniform in ``[1 - zoom, 1 + zoom]``.
    affine_probability
        Probability that a patch gets the rotation/shift/shear/zoom warp at all.
    brightness
        Added offset, uniform in ``[-brightness, brightness]`` (images are normalised to ~[0, 1]).
    contrast
        Contrast factor about the patch mean, uniform in ``[1 - contrast, 1 + contrast]``.
    blur_probability, blur_sigma
        Probability of a Gaussian blur and the range its sigma is drawn from (pixels).
    noise_probability, noise_std
        Probability of additive Gaussian noise and the largest standard deviation.
    salt_pepper_probability, salt_pepper_amount
        Probability of salt-and-pepper noise and the fraction of pixels it sets to the patch's
        minimum or maximum.
    elastic_probability, elastic_magnitude, elastic_spacing
        Probability of an elastic deformation (Ronneberger et al. 2015: random displacements on a
        coarse grid of control points ``elastic_spacing`` pixels apart, normal with standard
        deviation ``elastic_magnitude`` pixels, interpolated smoothly over the patch), in the YX
        plane. Off by default.
    """

    flip: bool = True
    rotate90: bool = True
    rotation: float = 15.0
    shift: float = 0.1
    shear: float = 0.1
    zoom: float = 0.1
    affine_probability: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.2
    blur_probability: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_probability: float = 0.2
    noise_std: float = 0.05
    salt_pepper_probability: float = 0.1
    salt_pepper_amount: float = 0.005
    elastic_probability: float = 0.0
    elastic_magnitude: float = 4.0
    elastic_spacing: float = 32.0

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all."""
        return cls(
            flip=False,
            rotate90=False,
            rotation=0.0,
            shift=0.0,
            shear=0.0,
            zoom=0.0,
            affine_probability=0.0,
            brightness=0.0,
            contrast=0.0,
            blur_probability=0.0,
            noise_probability=0.0,
            salt_pepper_probability=0.0,
            elastic_probability=0.0,
        )

    @classmethod
    def from_dict(cls, values: dict) -> AugmentConfig:
        """Rebuild from :meth:`to_dict` (unknown keys are refused)."""
        from segtune.core.train.settings import settings_from_dict  # settings imports this module

        if "blur_sigma" in values:
            values = {**values, "blur_sigma": tuple(values["blur_sigma"])}
        return settings_from_dict(cls, values, "augmentation")

    def to_dict(self) -> dict:
        """JSON-able settings (recorded in a trained model's config)."""
        values = asdict(self)
        values["blur_sigma"] = list(self.blur_sigma)
        return values


def random_affine(
    rng: np.random.Generator, config: AugmentConfig, spatial_shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Draw a rotation/shear/zoom matrix and a shift for the YX plane, or None for no warp.

    Returns ``(matrix, offset)`` for :func:`scipy.ndimage.affine_transform`, mapping output
    coordinates to input coordinates about the patch centre, in all spatial axes.
    """
    if not (config.rotation or config.shift or config.shear or config.zoom):
        return None
    if rng.random() >= config.affine_probability:
        return None
    ndim = len(spatial_shape)
    angle = np.deg2rad(rng.uniform(-config.rotation, config.rotation))
    shear = rng.uniform(-config.shear, config.shear)
    zoom = rng.uniform(1 - config.zoom, 1 + config.zoom)
    # output -> input in (y, x): rotate, shear, then divide by the zoom (zoom > 1 enlarges)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    shearing = np.array([[1.0, 0.0], [shear, 1.0]])
    plane = rotation @ shearing / zoom
    matrix = np.eye(ndim)
    matrix[-2:, -2:] = plane
    centre = (np.asarray(spatial_shape, dtype=float) - 1) / 2
    shift = np.array([rng.uniform(-config.shift, config.shift) * n for n in spatial_shape])
    if ndim == 3:
        shift[0] = 0.0  # no shifts along the coarse Z axis
    offset = centre - matrix @ centre + shift
    return matrix, offset


def random_elastic(rng: np.random.Generator, config: AugmentConfig, spatial_shape: Sequence[int]) -> np.ndarray | None:
    """Draw a smooth displacement field for the YX plane, or None for no deformation.

    Returns a ``(2, Y, X)`` array of displacements in pixels (y then x), the same for every Z
    plane of a 3D patch: normal displacements at control points about ``elastic_spacing`` apart
    (at least 3 per axis, the outermost on the patch border), cubic-interpolated.
    """
    if not config.elastic_probability or rng.random() >= config.elastic_probability:
        return None
    plane = tuple(int(n) for n in spatial_shape[-2:])
    points = [max(3, int(round(n / config.elastic_spacing)) + 1) for n in plane]
    coarse = rng.normal(0.0, config.elastic_magnitude, size=(2, *points))
    # zoom maps the first and last control point onto the patch's first and last pixel
    zoom = [n / p for n, p in zip(plane, points, strict=True)]
    field = np.stack([ndi.zoom(c, zoom, order=3, mode="nearest", grid_mode=False) for c in coarse])
    assert field.shape[1:] == plane, (field.shape, plane)
    return field.astype(np.float32)


def _warp_coordinates(
    spatial_shape: Sequence[int], warp: tuple[np.ndarray, np.ndarray] | None, field: np.ndarray
) -> np.ndarray:
    """Input coordinates of every output pixel: the affine warp (if any), then the elastic field."""
    grid = np.indices(spatial_shape, dtype=np.float32)
    if warp is not None:
        matrix, offset = warp
        grid = np.tensordot(matrix.astype(np.float32), grid, axes=1) + offset.astype(np.float32).reshape(
            -1, *([1] * len(spatial_shape))
        )
    grid[-2:] += field.reshape(2, *([1] * (len(spatial_shape) - 2)), *field.shape[1:])  # the same in every Z plane
    return grid


def geometric(
    image: np.ndarray,
    labels: Sequence[np.ndarray],
    rng: np.random.Generator,
    config: AugmentConfig,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply the same random flips, 90-degree rotations, warp and elastic deformation to ``image`` and ``labels``.

    Parameters
    ----------
    image
        ``(C, *S)`` float array.
    labels
        Arrays of shape ``S`` (instance labels, class targets, masks), moved by nearest neighbour.
    rng
        The random generator (seeded by the caller for reproducibility).
    config
        The augmentation settings.

    Returns
    -------
    image, labels
        Transformed copies with the same shapes and dtypes.
    """
    spatial = image.shape[1:]
    for label in labels:
        if label.shape != spatial:
            raise ValueError(
                f"label-like array of shape {label.shape} does not match the image's spatial shape {spatial}"
            )
    labels = list(labels)
    ndim = len(spatial)
    if config.flip:
        for axis in range(ndim):
            if rng.random() < 0.5:
                image = np.flip(image, axis=axis + 1)
                labels = [np.flip(label, axis=axis) for label in labels]
    if config.rotate90 and spatial[-1] == spatial[-2]:
        turns = int(rng.integers(0, 4))
        if turns:
            image = np.rot90(image, turns, axes=(-2, -1))
            labels = [np.rot90(label, turns, axes=(-2, -1)) for label in labels]
    warp = random_affine(rng, config, spatial)
    field = random_elastic(rng, config, spatial)
    if field is not None:
        coordinates = _warp_coordinates(spatial, warp, field)

        def resample(array: np.ndarray, order: int) -> np.ndarray:
            return ndi.map_coordinates(array, coordinates, order=order, mode="reflect", prefilter=False)
    elif warp is not None:
        matrix, offset = warp

        def resample(array: np.ndarray, order: int) -> np.ndarray:
            return ndi.affine_transform(array, matrix, offset, order=order, mode="reflect", prefilter=False)

    if field is not None or warp is not None:
        image = np.stack([resample(channel, 1) for channel in image]).astype(image.dtype, copy=False)
        labels = [
            resample(label.view(np.uint8) if label.dtype == bool else label, 0).astype(label.dtype, copy=False)
            for label in labels
        ]
    return np.ascontiguousarray(image), [np.ascontiguousarray(label) for label in labels]


def intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """Apply random brightness, contrast, blur, Gaussian noise and salt-and-pepper noise to a ``(C, *S)`` image."""
    image = np.array(image, dtype=np.float32, copy=True)
    if config.contrast:
        factor = rng.uniform(1 - config.contrast, 1 + config.contrast)
        mean = image.mean(axis=tuple(range(1, image.ndim)), keepdims=True)
        image = (image - mean) * factor + mean
    if config.brightness:
        image += rng.uniform(-config.brightness, config.brightness)
    if config.blur_probability and rng.random() < config.blur_probability:
        sigma = rng.uniform(*config.blur_sigma)
        image = np.stack([ndi.gaussian_filter(channel, sigma, mode="reflect") for channel in image])
    if config.noise_probability and rng.random() < config.noise_probability:
        std = rng.uniform(0, config.noise_std)
        image += rng.normal(0.0, std, size=image.shape).astype(np.float32)
    if config.salt_pepper_probability and rng.random() < config.salt_pepper_probability:
        low, high = float(image.min()), float(image.max())
        hits = rng.random(image.shape) < config.salt_pepper_amount
        salt = rng.random(image.shape) < 0.5
        image[hits & salt] = high
        image[hits & ~salt] = low
    return image.astype(np.float32, copy=False)


def augment(
    image: np.ndarray,
    labels: Sequence[np.ndarray],
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Geometric augmentation of image and labels together, then intensity augmentation of the image.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image, (labels,) = augment(np.zeros((1, 32, 32), np.float32), [np.zeros((32, 32), np.uint16)], rng)
    >>> image.shape, labels.shape
    ((1, 32, 32), (32, 32))
    """
    config = AugmentConfig() if config is None else config
    image, labels = geometric(image, labels, rng, config)
    return intensity(image, rng, config), labels
