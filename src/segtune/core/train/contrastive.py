"""Contrastive pretraining: SimCLR's NT-Xent with two augmented views, and a local supervised contrastive loss.

Two stages, after Hu et al. (2021, "Semi-supervised contrastive learning for label-efficient
medical image segmentation") as the seed thesis ran them:

global stage (SimCLR, Chen et al. 2020), no labels
    the U-Net's encoder plus :class:`ProjectionHead` (average pool over space, two linear
    layers, a 256-d output) embeds two views of each image made by :func:`simclr_views`
    (translate and zoom first, then brightness, blur and Gaussian or salt-and-pepper noise in
    random order); :func:`nt_xent_loss` (temperature 0.5) pulls the two views of an image
    together and pushes the other images of the batch away.
local stage, with labels
    the whole U-Net plus :class:`PixelProjectionHead` embeds every pixel;
    :func:`local_supervised_contrastive_loss` (temperature 0.07) divides the embedding map
    into blocks (16 x 16) and, inside each block, pulls pixels of the same class together and
    pushes pixels of other classes away. Background pixels are never anchors (they dominate
    and carry no structure of their own) but serve as negatives. The encoder comes from the
    global stage, frozen or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segtune.core.train.pretext import gaussian_blur

__all__ = [
    "PixelProjectionHead",
    "ProjectionHead",
    "ViewConfig",
    "encode",
    "local_supervised_contrastive_loss",
    "nt_xent_loss",
    "simclr_views",
    "unet_features",
]


# --- losses -----------------------------------------------------------------------------------


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over a batch of view pairs.

    With ``z = normalize([z1; z2])`` (2N unit vectors) and ``s_ij = z_i . z_j / temperature``,
    the loss is ``mean over all 2N anchors i of -log(exp(s_ij) / sum_{k != i} exp(s_ik))`` where
    ``j`` is the other view of ``i``'s image.

    Parameters
    ----------
    z1, z2
        ``(N, D)`` embeddings of the first and the second view of N images (N >= 2).
    temperature
        0.5 in the thesis.

    Examples
    --------
    >>> z = torch.eye(2)
    >>> round(float(nt_xent_loss(z, z, temperature=1.0)), 4)  # -log(e / (e + 1 + 1))
    0.5514
    """
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must both be (N, D) with the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"NT-Xent needs at least 2 images in a batch (others are the negatives), got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, positives)


def local_supervised_contrastive_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    block_size: int = 16,
    temperature: float = 0.07,
    background: int | None = 0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020) between the pixels of each block.

    For every block (``block_size`` pixels along each spatial axis; the map is cropped to whole
    blocks) and every anchor pixel ``i`` of it that is valid, not ``background`` and has at
    least one positive::

        loss_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a in A(i)} exp(z_i.z_a / t) )

    with ``z`` the L2-normalised embeddings, ``A(i)`` the other valid pixels of the block and
    ``P(i)`` those of them with ``i``'s label. The loss is the mean of ``loss_i`` over all
    anchors of the batch (0 when there are none).

    Parameters
    ----------
    embeddings
        ``(N, D, *S)`` per-pixel embeddings (2 or 3 spatial axes).
    labels
        ``(N, *S)`` integer class labels.
    block_size
        Side of the blocks (16 in the thesis).
    temperature
        0.07 in the thesis.
    background
        Label value whose pixels are never anchors (None: every class anchors).
    valid
        ``(N, *S)`` mask; invalid pixels (e.g. unlabelled) take no part at all.

    Examples
    --------
    >>> e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]).T.reshape(1, 2, 2, 2)
    >>> y = torch.tensor([[[1, 1], [0, 0]]])
    >>> round(float(local_supervised_contrastive_loss(e, y, block_size=2, temperature=1.0)), 4)
    0.5514
    """
    if embeddings.ndim not in (4, 5):
        raise ValueError(f"embeddings must be (N, D, *S) with 2 or 3 spatial axes, got shape {tuple(embeddings.shape)}")
    n, d, *spatial = embeddings.shape
    if tuple(labels.shape) != (n, *spatial):
        raise ValueError(f"labels shape {tuple(labels.shape)} must be (N, *S) = {(n, *spatial)}")
    if valid is not None and tuple(valid.shape) != (n, *spatial):
        raise ValueError(f"valid shape {tuple(valid.shape)} must be (N, *S) = {(n, *spatial)}")
    if block_size < 1 or any(s < block_size for s in spatial):
        raise ValueError(
            f"block_size {block_size} must be at least 1 and at most the smallest spatial size {min(spatial)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    z = F.normalize(embeddings, dim=1)
    blocks_z = _blocks(z, block_size)  # (B, P, D)
    blocks_y = _blocks(labels.unsqueeze(1), block_size)[..., 0]  # (B, P)
    blocks_v = _blocks(valid.unsqueeze(1).to(torch.uint8), block_size)[..., 0].bool()
    pixels = blocks_y.shape[1]
    similarity = blocks_z @ blocks_z.transpose(1, 2) / temperature  # (B, P, P)
    eye = torch.eye(pixels, dtype=torch.bool, device=z.device)
    others = blocks_v.unsqueeze(1) & ~eye  # a in A(i): valid and not i itself
    similarity = similarity.masked_fill(~others, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=2, keepdim=True)
    positive = others & (blocks_y.unsqueeze(1) == blocks_y.unsqueeze(2))
    n_positive = positive.sum(2)
    anchor = blocks_v & (n_positive > 0)
    if background is not None:
        anchor &= blocks_y != background
    if not anchor.any():
        return embeddings.sum() * 0.0  # keeps the graph: a batch without anchors adds nothing
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(2) / n_positive.clamp_min(1)
    return per_anchor[anchor].mean()


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """``(N, C, *S)`` -> ``(N * blocks, block**dims, C)``: whole blocks only, row-major inside."""
    n, c, *spatial = x.shape
    counts = [s // block for s in spatial]
    x = x[(slice(None), slice(None), *(slice(0, k * block) for k in counts))]
    if len(spatial) == 2:
        x = x.reshape(n, c, counts[0], block, counts[1], block).permute(0, 2, 4, 3, 5, 1)
    else:
        x = x.reshape(n, c, counts[0], block, counts[1], block, counts[2], block).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return x.reshape(n * math.prod(counts), block ** len(spatial), c)


# --- heads and features -------------------------------------------------------------------------


class ProjectionHead(nn.Module):
    """SimCLR's head: global average pool, Linear, ReLU, Linear to ``out_dim`` (256)."""

    def __init__(self, in_channels: int, hidden: int = 256, out_dim: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.flatten(2).mean(2)
        return self.net(pooled)


class PixelProjectionHead(nn.Module):
    """Per-pixel head of the local stage: 1x1 conv, ReLU, 1x1 conv to ``out_dim`` (64)."""

    def __init__(self, in_channels: int, hidden: int | None = None, out_dim: int = 64, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        hidden = hidden or in_channels
        self.net = nn.Sequential(conv(in_channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, out_dim, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def encode(unet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The bottleneck features of a :class:`~segtune.core.models.unet.UNet`'s encoder for ``x``.

    Runs the contracting path (blocks and pooling) only; spatial sizes should be multiples of
    ``unet.size_multiple``.
    """
    depth = len(unet.encoder) - 1
    for level, block in enumerate(unet.encoder):
        x = block(x)
        if level < depth:
            x = unet.pool(x)
    return x


def unet_features(unet: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last decoder features of a U-Net (the input of its 1x1 output head), cropped to ``x``'s size.

    Captured with a forward hook on ``unet.head``, so the U-Net's own forward pass (its
    padding included) is what runs.
    """
    captured: list[torch.Tensor] = []
    handle = unet.head.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        unet(x)
    finally:
        handle.remove()
    features = captured[0]
    return features[(..., *(slice(0, n) for n in x.shape[2:]))]


# --- SimCLR views -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewConfig:
    """Strengths of the SimCLR augmentations (per image, drawn uniformly in the ranges).

    ``translate`` is a fraction of the image size; ``zoom`` a scale range; ``brightness`` an
    additive shift range and ``contrast`` a multiplicative range (in normalised units);
    ``blur_sigma`` a range in pixels; ``noise_std`` the Gaussian noise range;
    ``salt_pepper`` the fraction of pixels set to the batch minimum or maximum. Each of
    brightness, blur and noise is applied with probability ``p`` and their order is shuffled
    per image; noise is Gaussian or salt-and-pepper with equal chance.
    """

    translate: float = 0.1
    zoom: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.75, 1.25)
    blur_sigma: tuple[float, float] = (0.5, 1.5)
    noise_std: tuple[float, float] = (0.02, 0.1)
    salt_pepper: float = 0.02
    p: float = 0.8


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _translate_zoom(x: torch.Tensor, config: ViewConfig, generator: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    scale = torch.tensor([_uniform(*config.zoom, generator) for _ in range(n)], dtype=x.dtype)
    shift = (torch.rand((n, 2), generator=generator, dtype=x.dtype) * 2 - 1) * config.translate * 2  # grid units
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1 / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def simclr_views(
    x: torch.Tensor, config: ViewConfig | None = None, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of a batch of 2D images ``(N, C, Y, X)``.

    Translate and zoom come first (one affine resampling, mirrored edges), then brightness /
    contrast, Gaussian blur and noise (Gaussian or salt-and-pepper) in an order shuffled per
    image, each with probability ``config.p``.
    """
    config = config if config is not None else ViewConfig()
    if x.ndim != 4:
        raise ValueError(f"SimCLR views are made of 2D batches (N, C, Y, X), got shape {tuple(x.shape)}")
    return _view(x, config, generator), _view(x, config, generator)


def _view(x: torch.Tensor, config: ViewConfig, generator: torch.Generator | None) -> torch.Tensor:
    out = _translate_zoom(x, config, generator)
    low, high = float(x.min()), float(x.max())
    images = []
    for image in out:
        image = image.unsqueeze(0)
        for step in torch.randperm(3, generator=generator).tolist():
            if float(torch.rand((), generator=generator)) >= config.p:
                continue
            if step == 0:
                image = image * _uniform(*config.contrast, generator) + _uniform(
                    -config.brightness, config.brightness, generator
                )
            elif step == 1:
                image = gaussian_blur(image, _uniform(*config.blur_sigma, generator))
            elif float(torch.rand((), generator=generator)) < 0.5:
                std = _uniform(*config.noise_std, generator)
                image = image + std * torch.randn(image.shape, generator=generator).to(image.device)
            else:
                draw = torch.rand(image.shape, generator=generator).to(image.device)
                image = torch.where(draw < config.salt_pepper / 2, torch.full_like(image, low), image)
                image = torch.where(draw > 1 - config.salt_pepper / 2, torch.full_like(image, high), image)
        images.append(image)
    return torch.cat(images)
