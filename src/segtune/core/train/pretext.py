"""Self-supervised pretext tasks: image corruptions to restore, Noise2Noise slice pairs, encoder transfer.

Restoration pretext (the seed thesis's self-supervised pretraining): a batch of normalised
patches is corrupted by :func:`corrupt` and a U-Net with one linear output per channel learns
to give back the original, with :func:`restoration_loss` (``1 - SSIM`` or ``1 - SSIM + L1``).
Its encoder then starts a segmentation model (:func:`transfer_encoder`), frozen or not.

The corruptions, on ``(N, C, *S)`` float tensors of 2 or 3 spatial axes (one is drawn per
image from the configured list, or all are applied in order with ``mode="all"``):

``drop``
    each pixel is set to 0 with probability ``drop_fraction`` (0.25);
``blur``
    Gaussian blur of standard deviation ``blur_sigma`` (2 px), truncated at 4 sigma, with the
    image mirrored at its edges (``scipy.ndimage.gaussian_filter(mode="mirror")``);
``sobel``
    the Sobel gradient magnitude, exactly ``skimage.filters.sobel`` (mirrored edges): the net
    must infer intensities from edges;
``noise``
    additive Gaussian noise of standard deviation ``noise_std`` (0.2, in normalised units).

Noise2Noise (Lehtinen et al. 2018) needs pairs of images with independent noise on the same
signal; adjacent z-slices of a stack are such pairs where the structure changes little from
slice to slice. :func:`n2n_pairs` lists them and :func:`denoise` applies a trained denoiser.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "CORRUPTIONS",
    "CorruptionConfig",
    "corrupt",
    "denoise",
    "gaussian_blur",
    "n2n_pairs",
    "restoration_loss",
    "sobel",
    "transfer_encoder",
]

CORRUPTIONS = ("drop", "blur", "sobel", "noise")
RESTORATION_LOSSES = ("ssim", "ssim+l1")


@dataclass(frozen=True)
class CorruptionConfig:
    """Which corruptions the restoration pretext uses, and how strong they are.

    Attributes
    ----------
    kinds
        Names from :data:`CORRUPTIONS`.
    mode
        ``"one"``: each image gets one of ``kinds`` at random; ``"all"``: every image gets all
        of them, in the order given.
    drop_fraction, blur_sigma, noise_std
        Strengths (see the module docstring).
    """

    kinds: tuple[str, ...] = CORRUPTIONS
    mode: str = "one"
    drop_fraction: float = 0.25
    blur_sigma: float = 2.0
    noise_std: float = 0.2

    def __post_init__(self) -> None:
        kinds = tuple(self.kinds)
        object.__setattr__(self, "kinds", kinds)
        if not kinds:
            raise ValueError(f"kinds must name at least one corruption of {', '.join(CORRUPTIONS)}")
        unknown = [k for k in kinds if k not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}")
        if self.mode not in ("one", "all"):
            raise ValueError(f"mode must be 'one' or 'all', got {self.mode!r}")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ValueError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if not self.blur_sigma > 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must not be negative, got {self.noise_std}")


def _spatial_dims(x: torch.Tensor) -> int:
    if x.ndim not in (4, 5):
        raise ValueError(f"expected a (N, C, Y, X) or (N, C, Z, Y, X) tensor, got shape {tuple(x.shape)}")
    return x.ndim - 2


def _filter_axis(x: torch.Tensor, weights: torch.Tensor, axis: int) -> torch.Tensor:
    """Correlate every channel of ``x`` with the 1D ``weights`` along spatial ``axis``, mirrored edges."""
    spatial_dims = x.ndim - 2
    radius = (weights.numel() - 1) // 2
    pads = [0, 0] * spatial_dims
    # F.pad lists pads from the last axis backwards
    pads[2 * (spatial_dims - 1 - axis)] = radius
    pads[2 * (spatial_dims - 1 - axis) + 1] = radius
    if x.shape[2 + axis] <= radius:
        raise ValueError(f"axis {axis} of size {x.shape[2 + axis]} is too short for a filter of radius {radius}")
    padded = F.pad(x, pads, mode="reflect")
    channels = x.shape[1]
    shape = [1, 1] + [1] * spatial_dims
    shape[2 + axis] = weights.numel()
    kernel = weights.to(x.dtype).reshape(shape).expand(channels, *shape[1:]).contiguous()
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    return conv(padded, kernel, groups=channels)


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian blur of every channel; equals ``scipy.ndimage.gaussian_filter(mode="mirror")``."""
    _spatial_dims(x)
    radius = int(truncate * float(sigma) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=x.device)
    weights = torch.exp(-0.5 * (offsets / float(sigma)) ** 2)
    weights = weights / weights.sum()
    for axis in range(x.ndim - 2):
        x = _filter_axis(x, weights, axis)
    return x


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of every channel; equals ``skimage.filters.sobel`` (mirrored edges).

    Along each axis the derivative ``[1, 0, -1]`` is combined with the smoothing ``[1, 2, 1] / 4``
    along every other axis; the magnitude is ``sqrt(sum of squares / number of axes)``.
    """
    spatial_dims = _spatial_dims(x)
    derivative = torch.tensor([1.0, 0.0, -1.0], device=x.device)
    smooth = torch.tensor([1.0, 2.0, 1.0], device=x.device) / 4
    total = torch.zeros_like(x)
    for axis in range(spatial_dims):
        gradient = x
        for other in range(spatial_dims):
            gradient = _filter_axis(gradient, derivative if other == axis else smooth, other)
        total = total + gradient**2
    return torch.sqrt(total / spatial_dims)


def _apply(kind: str, x: torch.Tensor, config: CorruptionConfig, generator: torch.Generator | None) -> torch.Tensor:
    if kind == "drop":
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= config.drop_fraction
        return x * keep
    if kind == "blur":
        return gaussian_blur(x, config.blur_sigma)
    if kind == "sobel":
        return sobel(x)
    return x + config.noise_std * torch.randn(x.shape, generator=generator, device=x.device)


def corrupt(
    x: torch.Tensor, config: CorruptionConfig | None = None, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Corrupt a batch for the restoration pretext.

    Parameters
    ----------
    x
        ``(N, C, *S)`` normalised images.
    config
        Which corruptions and how strong (:class:`CorruptionConfig`).
    generator
        Random generator (on ``x``'s device) for reproducible corruptions.

    Returns
    -------
    corrupted : torch.Tensor
        Same shape as ``x``.
    applied : list of str
        What each image got (``"blur"``, or ``"drop+noise"`` with ``mode="all"``).

    Examples
    --------
    >>> x = torch.ones(2, 1, 16, 16)
    >>> y, applied = corrupt(x, CorruptionConfig(kinds=("drop",), drop_fraction=0.5))
    >>> applied, 0.2 < float((y == 0).float().mean()) < 0.8
    (['drop', 'drop'], True)
    """
    config = config if config is not None else CorruptionConfig()
    _spatial_dims(x)
    if config.mode == "all":
        out = x
        for kind in config.kinds:
            out = _apply(kind, out, config, generator)
        return out, ["+".join(config.kinds)] * x.shape[0]
    choice = torch.randint(len(config.kinds), (x.shape[0],), generator=generator, device=x.device).cpu().tolist()
    out = torch.empty_like(x)
    for index, kind in enumerate(config.kinds):
        members = [i for i, c in enumerate(choice) if c == index]
        if members:
            out[members] = _apply(kind, x[members], config, generator)
    return out, [config.kinds[c] for c in choice]


def restoration_loss(
    output: torch.Tensor, target: torch.Tensor, kind: str = "ssim", *, l1_weight: float = 1.0
) -> torch.Tensor:
    """``1 - SSIM(output, target)`` (``"ssim"``), plus ``l1_weight * mean|output - target|`` (``"ssim+l1"``).

    SSIM is :func:`segtune.core.train.losses.ssim` with data range 1 (images normalised to
    about [0, 1]); the output is compared as it comes out of the network (a linear head).
    """
    from segtune.core.train.losses import ssim

    if kind not in RESTORATION_LOSSES:
        raise ValueError(f"restoration loss must be one of {', '.join(RESTORATION_LOSSES)}, got {kind!r}")
    loss = 1 - ssim(output, target)
    if kind == "ssim+l1":
        loss = loss + l1_weight * (output - target).abs().mean()
    return loss


def n2n_pairs(n_slices: int, *, both_directions: bool = True) -> list[tuple[int, int]]:
    """Noise2Noise training pairs ``(input_slice, target_slice)`` of adjacent z-slices.

    Examples
    --------
    >>> n2n_pairs(3)
    [(0, 1), (1, 0), (1, 2), (2, 1)]
    """
    if n_slices < 2:
        raise ValueError(f"Noise2Noise needs stacks of at least 2 z-slices, got {n_slices}")
    pairs = []
    for z in range(n_slices - 1):
        pairs.append((z, z + 1))
        if both_directions:
            pairs.append((z + 1, z))
    return pairs


def transfer_encoder(
    src_model: nn.Module, dst_model: nn.Module, *, freeze: bool = False, strict: bool = True
) -> list[str]:
    """Copy the encoder weights of one U-Net into another, optionally freezing them there.

    Parameters
    ----------
    src_model, dst_model
        :class:`~segtune.core.models.unet.UNet` instances (anything with an ``encoder`` module).
        The destination's encoder must have the source's layer shapes (same ``in_channels``,
        ``base_channels``, ``norm``); its ``depth`` may be larger (the extra levels keep their
        initial weights) and its decoder and head are untouched.
    freeze
        Set ``requires_grad = False`` on the destination's encoder parameters. (A training loop
        should also keep a frozen encoder's batch-norm statistics fixed, by putting its modules
        in eval mode.)
    strict
        Raise when a source tensor has no counterpart of the same shape; otherwise skip it.

    Returns
    -------
    list of str
        The state-dict keys copied (``encoder.0.0.weight`` ...).

    Raises
    ------
    ValueError
        Either model has no ``encoder``, or (``strict``) shapes do not match.

    Examples
    --------
    >>> from segtune.core.models.unet import UNet
    >>> a, b = UNet(depth=1, base_channels=4), UNet(depth=1, base_channels=4, out_channels=3)
    >>> len(transfer_encoder(a, b, freeze=True)) > 0, any(p.requires_grad for p in b.encoder.parameters())
    (True, False)
    """
    for name, model in (("src_model", src_model), ("dst_model", dst_model)):
        if not isinstance(getattr(model, "encoder", None), nn.Module):
            raise ValueError(f"{name} ({type(model).__name__}) has no 'encoder' module to transfer")
    source = src_model.encoder.state_dict()
    destination = dst_model.encoder.state_dict()
    copied, problems = [], []
    for key, tensor in source.items():
        target = destination.get(key)
        if target is None or target.shape != tensor.shape:
            problems.append(
                f"encoder.{key}: {tuple(tensor.shape)} -> {None if target is None else tuple(target.shape)}"
            )
            continue
        destination[key] = tensor.detach().clone().to(target.device, target.dtype)
        copied.append(f"encoder.{key}")
    if problems and strict:
        raise ValueError(
            "the encoders do not match (in_channels, base_channels and norm must be equal, depth at least "
            f"the source's): {'; '.join(problems[:4])}{' ...' if len(problems) > 4 else ''}"
        )
    dst_model.encoder.load_state_dict(destination)
    if freeze:
        for parameter in dst_model.encoder.parameters():
            parameter.requires_grad_(False)
    logger.debug("transferred %d encoder tensors (%d skipped), freeze=%s", len(copied), len(problems), freeze)
    return copied


@torch.no_grad()
def denoise(
    model: nn.Module,
    image: np.ndarray,
    *,
    config: dict | None = None,
    normalization: Sequence[float] | None = None,
    residual: bool | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
) -> np.ndarray:
    """Apply a denoiser (or restoration model) to every plane of an image, back in its intensities.

    Parameters
    ----------
    model
        A 2D U-Net mapping ``(N, C, Y, X)`` normalised planes to denoised ones (``segtune
        pretrain --method n2n``).
    image
        ``(Y, X)``, ``(C, Y, X)`` or ``(..., C, Y, X)`` with ``C`` the model's input channels
        (a single-channel model also takes ``(Z, Y, X)`` stacks plane by plane).
    config
        The model's config: its ``normalization`` percentiles and whether it is residual
        (``pretext.residual``, as ``segtune pretrain --method n2n`` makes them).
    normalization
        Percentiles to normalise with, overriding the config's (default 1, 99.8).
    residual
        The denoised image is the input plus the network's output; overrides the config's.
    device
        Where to compute.
    batch_size
        Planes per forward pass.

    Returns
    -------
    numpy.ndarray
        float32, the input's shape, in the input's intensity scale (the normalisation undone).
    """
    from segtune.core.device import select_device
    from segtune.core.normalize import model_percentiles, percentiles

    config = config or {}
    if normalization is None:
        normalization = model_percentiles(config)[:2]
    if residual is None:
        residual = bool((config.get("pretext") or {}).get("residual", False))
    device = select_device(device)
    in_channels = int(getattr(model, "in_channels", 1))
    image = np.asarray(image)
    shape = image.shape
    if image.ndim < 2:
        raise ValueError(f"image must have at least 2 axes (Y, X), got shape {shape}")
    if in_channels == 1:
        planes = image.reshape(-1, 1, *shape[-2:])
    else:
        if image.ndim < 3 or shape[-3] != in_channels:
            raise ValueError(f"the denoiser takes {in_channels} channels as axis -3, the image has shape {shape}")
        planes = image.reshape(-1, in_channels, *shape[-2:])
    lows, highs = [], []
    for c in range(planes.shape[1]):
        lo, hi = percentiles(planes[:, c], normalization[0], normalization[1])
        lows.append(lo)
        highs.append(max(hi, lo + 1e-6))
    lo = np.asarray(lows, np.float32)[None, :, None, None]
    hi = np.asarray(highs, np.float32)[None, :, None, None]
    normalized = (planes.astype(np.float32) - lo) / (hi - lo)
    was_training = model.training
    model.eval()
    model.to(device)
    out = np.empty_like(normalized)
    for start in range(0, len(normalized), batch_size):
        batch = torch.from_numpy(normalized[start : start + batch_size]).to(device)
        result = model(batch).float()
        if residual:
            result = result + batch
        out[start : start + batch_size] = result.cpu().numpy()
    model.train(was_training)
    return (out * (hi - lo) + lo).reshape(shape).astype(np.float32)
