"""Random training patches: crops with enough foreground, 2D patches from 3D stacks, or 3D patches.

Each call of :meth:`PatchSampler.batch` draws fresh random crops, so every epoch sees new
patches. A crop whose foreground fraction is below ``min_foreground`` (3 % in the seeds) is
skipped and another drawn, up to ``max_tries`` times (then the crop with the most foreground
is kept, so images with hardly any objects still train). Images smaller than the patch are
padded: by reflection in the image, as ignored pixels in the labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segtune.core.train.augment import AugmentConfig, augment
from segtune.core.train.data import Sample, make_targets

__all__ = ["PatchSampler", "normalize_patch_shape"]


def normalize_patch_shape(patch: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``256`` -> ``(256, 256)`` (2D) or ``(256, 256, 256)`` (3D); a sequence must have ``spatial_dims`` entries."""
    if isinstance(patch, (int, np.integer)):
        shape = (int(patch),) * spatial_dims
    else:
        shape = tuple(int(n) for n in patch)
        if len(shape) == 1:
            shape = shape * spatial_dims
    if len(shape) != spatial_dims or any(n < 1 for n in shape):
        raise ValueError(
            f"patch {patch!r} must be a positive size or {spatial_dims} positive sizes for a {spatial_dims}D model"
        )
    return shape


class PatchSampler:
    """Draw random (augmented) training patches from a list of :class:`Sample`.

    Parameters
    ----------
    samples
        The training images.
    patch_shape
        ``(Y, X)`` for a 2D model (patches come from single planes of stacks) or ``(Z, Y, X)``.
    spatial_dims
        2 or 3.
    min_foreground
        Skip crops whose labelled fraction of valid pixels is below this (0 disables).
    max_tries
        How many crops to draw before accepting one below ``min_foreground``.
    rng
        The random generator (its state is saved in checkpoints for exact resumption).
    replay, replay_fraction
        Extra samples (a bundled model's general training crops) from which ``replay_fraction``
        of the crops are drawn; the rest come from ``samples``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        patch_shape: Sequence[int],
        *,
        spatial_dims: int = 2,
        min_foreground: float = 0.03,
        max_tries: int = 10,
        rng: np.random.Generator | None = None,
        replay: Sequence[Sample] = (),
        replay_fraction: float = 0.0,
    ) -> None:
        if not samples:
            raise ValueError("no training samples to draw patches from")
        self.samples = list(samples)
        self.spatial_dims = spatial_dims
        self.patch_shape = normalize_patch_shape(patch_shape, spatial_dims)
        if spatial_dims == 3:
            for sample in self.samples:
                if sample.labels.shape[0] == 1:
                    raise ValueError(f"{sample.name or 'an image'} is 2D; a 3D model needs (Z, Y, X) stacks")
        if not 0.0 <= min_foreground < 1.0:
            raise ValueError(f"min_foreground must be in [0, 1), got {min_foreground}")
        self.min_foreground = min_foreground
        self.max_tries = max(1, int(max_tries))
        self.rng = np.random.default_rng() if rng is None else rng
        # larger images give proportionally more patches
        sizes = np.array([float(s.valid.sum()) for s in self.samples])
        if sizes.sum() == 0:
            raise ValueError("every pixel of every training image is marked as ignored")
        self.weights = sizes / sizes.sum()
        if replay and replay_fraction > 0:
            replay_sizes = np.array([float(s.valid.sum()) for s in replay])
            self.samples += list(replay)
            self.weights = np.concatenate(
                [self.weights * (1 - replay_fraction), replay_sizes / replay_sizes.sum() * replay_fraction]
            )
        self.skipped = 0
        self.drawn = 0

    def _crop(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sample = self.samples[int(self.rng.choice(len(self.samples), p=self.weights))]
        image, labels, valid = sample.image, sample.labels, sample.valid
        if self.spatial_dims == 2:
            z = int(self.rng.integers(0, labels.shape[0]))
            image, labels, valid = image[:, z], labels[z], valid[z]
        index = []
        for n, p in zip(labels.shape, self.patch_shape, strict=True):
            start = int(self.rng.integers(0, n - p + 1)) if n > p else 0
            index.append(slice(start, start + p))
        index = tuple(index)
        image, labels, valid = image[(slice(None), *index)], labels[index], valid[index]
        if labels.shape != self.patch_shape:
            pads = [(0, p - n) for n, p in zip(labels.shape, self.patch_shape, strict=True)]
            image = np.pad(image, [(0, 0), *pads], mode="symmetric")
            labels = np.pad(labels, pads)
            valid = np.pad(valid, pads)
        return image, labels, valid

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One crop ``(image (C, *P), labels (*P), valid (*P))`` meeting the foreground filter if it can."""
        best, best_fraction = None, -1.0
        for _ in range(self.max_tries):
            self.drawn += 1
            crop = self._crop()
            n_valid = int(crop[2].sum())
            fraction = np.count_nonzero((crop[1] > 0) & crop[2]) / n_valid if n_valid else -1.0
            if fraction >= self.min_foreground and n_valid:
                return crop
            self.skipped += 1
            if fraction > best_fraction:
                best, best_fraction = crop, fraction
        return best  # type: ignore[return-value]

    def batch(
        self,
        batch_size: int,
        *,
        head: str,
        augmentation: AugmentConfig | None = None,
        n_classes: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch ``(images (N, C, *P) float32, targets (N, *P), valid (N, *P) bool)``.

        Crops are augmented (image and labels together), then targets for ``head`` are made
        from the augmented labels, so boundaries stay one pixel wide whatever the zoom.
        """
        images, targets, valids = [], [], []
        for _ in range(batch_size):
            image, labels, valid = self.sample()
            if augmentation is not None:
                image, (labels, valid) = augment(image, [labels, valid], self.rng, augmentation)
            images.append(image)
            targets.append(make_targets(labels, head, n_classes=n_classes))
            valids.append(valid)
        return np.stack(images).astype(np.float32, copy=False), np.stack(targets), np.stack(valids)
