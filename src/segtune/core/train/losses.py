"""Training losses (BCE/CE, Dice, IoU, focal, SSIM, MAE) and their sums named as ``"bce+dice"``.

Every loss takes raw network outputs (logits) and a target, for one of the three heads:

binary
    logits ``(N, 1, *S)``, target ``(N, 1, *S)`` or ``(N, *S)`` of 0/1; probabilities are
    ``sigmoid(logits)``.
three_class, semantic
    logits ``(N, K, *S)``, target ``(N, *S)`` of class indices; probabilities are
    ``softmax(logits)`` and the target is compared as one-hot.
multilabel
    K non-exclusive classes: logits ``(N, K, *S)``, target ``(N, K, *S)`` of 0/1; each channel
    is a binary head (``sigmoid``), Dice and IoU are the mean over the K classes.

and an optional ``valid`` mask ``(N, *S)`` (or ``(N, 1, *S)``): pixels where it is 0 take no
part in the loss (pseudo-labelling marks uncertain pixels so; patches padded beyond an image
edge too). :func:`parse_loss` turns ``"bce+dice"``, ``"ssim+mae"``, ``"focal"`` or weighted
sums such as ``"0.5*bce+dice"`` into one callable.

Definitions (``p`` probabilities, ``t`` targets, sums over all valid pixels of the batch):

* ``bce`` / ``ce``: mean binary cross-entropy (binary head) or categorical cross-entropy
  (multi-class heads); the two names mean the same thing for a given head.
* ``dice``: ``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` with smoothing ``s = 1``; for
  multi-class heads the mean over classes 1..K-1 (class 0 is background).
* ``iou`` (``jaccard``): ``1 - (sum(p t) + s) / (sum(p) + sum(t) - sum(p t) + s)``, classes as for Dice.
* ``focal``: ``mean(-alpha_t (1 - p_t)^gamma log p_t)`` with ``gamma = 2``, ``alpha = 0.5``
  (``alpha_t = alpha`` on foreground, ``1 - alpha`` on background; for multi-class heads ``alpha``
  weighs every class).
* ``ssim``: ``1 - SSIM(p, t)`` with an 11-tap Gaussian window (sigma 1.5), ``K1 = 0.01``,
  ``K2 = 0.03``, data range 1, averaged over the window positions that lie fully inside the
  patch: the definition of Wang et al. (2004) as ``skimage.metrics.structural_similarity``
  computes it with ``gaussian_weights=True, use_sample_covariance=False, data_range=1``.
  Multi-class heads average over all K one-hot channels.
* ``mae``: ``mean |p - t|`` (over classes too for multi-class heads).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from segtune.core.models.heads import ACTIVATIONS, SEGMENTATION_HEADS

__all__ = [
    "LOSSES",
    "LossFunction",
    "bce_loss",
    "dice_loss",
    "focal_loss",
    "iou_loss",
    "mae_loss",
    "parse_loss",
    "ssim",
    "ssim_loss",
]

LossFunction = Callable[..., torch.Tensor]


def _prepare(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, head: str):
    """Probabilities, one-hot/float targets and a float weight map, all ``(N, K, *S)``."""
    if logits.ndim < 3:
        raise ValueError(f"logits must have shape (N, K, *spatial), got {tuple(logits.shape)}")
    n, k, *spatial = logits.shape
    if ACTIVATIONS.get(head) == "sigmoid":
        if head == "binary" and k != 1:
            raise ValueError(f"a binary head has 1 output channel, the logits have {k}")
        if target.ndim == logits.ndim - 1:
            target = target.unsqueeze(1)
        if tuple(target.shape) != tuple(logits.shape):
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        target = target.to(logits.dtype)
    else:
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if tuple(target.shape) != (n, *spatial):
            raise ValueError(
                f"target shape {tuple(target.shape)} must be (N, *spatial) = {(n, *spatial)} for a {head} head"
            )
        target = target.long()
    if valid is None:
        weight = torch.ones((n, 1, *spatial), dtype=logits.dtype, device=logits.device)
    else:
        if valid.ndim == logits.ndim - 1:
            valid = valid.unsqueeze(1)
        if tuple(valid.shape) != (n, 1, *spatial):
            raise ValueError(f"valid mask shape {tuple(valid.shape)} must be (N, *spatial) = {(n, *spatial)}")
        weight = valid.to(logits.dtype)
    return target, weight


def _probabilities_and_onehot(logits, target, head):
    if ACTIVATIONS.get(head) == "sigmoid":
        return torch.sigmoid(logits), target
    k = logits.shape[1]
    # indices outside 0..K-1 (an ignore value) only occur under valid == 0; clamp them away
    onehot = F.one_hot(target.clamp(0, k - 1), k).movedim(-1, 1).to(logits.dtype)
    return torch.softmax(logits, dim=1), onehot


def bce_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, head: str = "binary"
) -> torch.Tensor:
    """Binary (one channel) or categorical (K channels) cross-entropy, averaged over valid pixels."""
    target, weight = _prepare(logits, target, valid, head)
    if ACTIVATIONS.get(head) == "sigmoid":
        per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, target.clamp(0, logits.shape[1] - 1), reduction="none").unsqueeze(1)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0) / per_pixel.shape[1]


def _overlap_terms(logits, target, valid, head):
    target, weight = _prepare(logits, target, valid, head)
    probs, onehot = _probabilities_and_onehot(logits, target, head)
    dims = [0, *range(2, logits.ndim)]
    intersection = (probs * onehot * weight).sum(dims)
    p_sum = (probs * weight).sum(dims)
    t_sum = (onehot * weight).sum(dims)
    if ACTIVATIONS.get(head) != "sigmoid" and logits.shape[1] > 1:
        intersection, p_sum, t_sum = intersection[1:], p_sum[1:], t_sum[1:]
    return intersection, p_sum, t_sum


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    head: str = "binary",
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft Dice loss with additive smoothing, over the whole batch (see the module docstring)."""
    intersection, p_sum, t_sum = _overlap_terms(logits, target, valid, head)
    return (1 - (2 * intersection + smooth) / (p_sum + t_sum + smooth)).mean()


def iou_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    head: str = "binary",
    smooth: float = 1.0,
) -> torch.Tensor:
    """Soft IoU (Jaccard) loss with additive smoothing, over the whole batch."""
    intersection, p_sum, t_sum = _overlap_terms(logits, target, valid, head)
    return (1 - (intersection + smooth) / (p_sum + t_sum - intersection + smooth)).mean()


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    head: str = "binary",
    gamma: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017), ``gamma = 2``, ``alpha = 0.5`` by default."""
    target, weight = _prepare(logits, target, valid, head)
    if ACTIVATIONS.get(head) == "sigmoid":
        log_p = F.logsigmoid(logits)
        log_not_p = F.logsigmoid(-logits)
        log_pt = torch.where(target > 0.5, log_p, log_not_p)
        alpha_t = torch.where(target > 0.5, torch.full_like(logits, alpha), torch.full_like(logits, 1 - alpha))
    else:
        log_probs = torch.log_softmax(logits, dim=1)
        log_pt = log_probs.gather(1, target.clamp(0, logits.shape[1] - 1).unsqueeze(1))
        alpha_t = torch.full_like(log_pt, alpha)
    per_pixel = -alpha_t * (1 - log_pt.exp()).pow(gamma) * log_pt
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0) / per_pixel.shape[1]


def mae_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, head: str = "binary"
) -> torch.Tensor:
    """Mean absolute error between probabilities and (one-hot) targets over valid pixels."""
    target, weight = _prepare(logits, target, valid, head)
    probs, onehot = _probabilities_and_onehot(logits, target, head)
    per_pixel = (probs - onehot).abs().mean(1, keepdim=True)
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1.0)


def _gaussian_window(sigma: float, truncate: float, dtype, device) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    window = torch.exp(-(x**2) / (2 * sigma**2))
    return (window / window.sum()).to(dtype=dtype, device=device)


def _separable_filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Filter every channel of ``(N, C, *S)`` with ``window`` along each spatial axis, 'valid' mode."""
    spatial_dims = x.ndim - 2
    channels = x.shape[1]
    conv = F.conv2d if spatial_dims == 2 else F.conv3d
    for axis in range(spatial_dims):
        shape = [channels, 1] + [1] * spatial_dims
        shape[2 + axis] = window.numel()
        x = conv(x, window.reshape(shape), groups=channels)
    return x


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_range: float = 1.0,
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean structural similarity of ``x`` and ``y``, both ``(N, C, *S)`` with 2 or 3 spatial axes.

    Gaussian-weighted local statistics (Wang et al. 2004) over the window positions lying fully
    inside the image; equal to ``skimage.metrics.structural_similarity(x, y, data_range=...,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` per image and channel.
    ``weight`` ``(N, 1, *S)`` (0/1) drops the windows that touch a zero pixel.

    Raises
    ------
    ValueError
        If a spatial axis is shorter than the window (``2 * int(truncate * sigma + 0.5) + 1``).
    """
    if x.shape != y.shape or x.ndim not in (4, 5):
        raise ValueError(
            "ssim takes two (N, C, *S) tensors of one shape with 2 or 3 spatial axes, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    window = _gaussian_window(sigma, truncate, x.dtype, x.device)
    if min(x.shape[2:]) < window.numel():
        raise ValueError(
            f"ssim needs every spatial axis to be at least {window.numel()} pixels, got shape {tuple(x.shape[2:])}"
        )
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_x = _separable_filter(x, window)
    mu_y = _separable_filter(y, window)
    xx = _separable_filter(x * x, window) - mu_x**2
    yy = _separable_filter(y * y, window) - mu_y**2
    xy = _separable_filter(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (xx + yy + c2))
    if weight is None:
        return ssim_map.mean()
    # a window counts only when every pixel under it is valid (the box sum of the mask is full)
    box = torch.ones(window.numel(), dtype=x.dtype, device=x.device)
    full = _separable_filter(weight.to(x.dtype), box) >= window.numel() ** (x.ndim - 2) - 0.5
    full = full.expand_as(ssim_map).to(x.dtype)
    return (ssim_map * full).sum() / full.sum().clamp_min(1.0)


def ssim_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, head: str = "binary"
) -> torch.Tensor:
    """``1 - SSIM`` between probabilities and (one-hot) targets (see :func:`ssim`)."""
    target, weight = _prepare(logits, target, valid, head)
    probs, onehot = _probabilities_and_onehot(logits, target, head)
    return 1 - ssim(probs, onehot, weight=None if valid is None else weight)


LOSSES: dict[str, LossFunction] = {
    "bce": bce_loss,
    "ce": bce_loss,
    "crossentropy": bce_loss,
    "dice": dice_loss,
    "iou": iou_loss,
    "jaccard": iou_loss,
    "focal": focal_loss,
    "ssim": ssim_loss,
    "mae": mae_loss,
}

_TERM = re.compile(r"^\s*(?:(?P<weight>\d+(?:\.\d*)?|\.\d+)\s*\*\s*)?(?P<name>[a-z_]+)\s*$")


class CombinedLoss:
    """A weighted sum of named losses; call it like one loss: ``loss(logits, target, valid)``."""

    def __init__(self, terms: Sequence[tuple[float, str]], head: str) -> None:
        self.terms = list(terms)
        self.head = head

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return self.parts(logits, target, valid)["loss"]

    def parts(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each term's value (unweighted) and their weighted sum under ``"loss"``."""
        values = {name: LOSSES[name](logits, target, valid, head=self.head) for _, name in self.terms}
        values["loss"] = sum(weight * values[name] for weight, name in self.terms)
        return values

    def __repr__(self) -> str:
        return f"CombinedLoss({self.spec!r}, head={self.head!r})"

    @property
    def spec(self) -> str:
        return "+".join(name if weight == 1 else f"{weight:g}*{name}" for weight, name in self.terms)


def parse_loss(spec: str, head: str = "binary") -> CombinedLoss:
    """Turn ``"bce+dice"``, ``"ssim+mae"``, ``"focal"`` or ``"0.5*bce+dice"`` into a loss.

    Parameters
    ----------
    spec
        Names from :data:`LOSSES` joined by ``+``, each optionally weighted ``w*name``.
    head
        ``"binary"``, ``"three_class"`` or ``"semantic"`` (see the module docstring).

    Raises
    ------
    ValueError
        An unknown name, a malformed term, or an unknown head.

    Examples
    --------
    >>> parse_loss("bce+dice").spec
    'bce+dice'
    """
    if head not in SEGMENTATION_HEADS:
        raise ValueError(f"head must be one of {', '.join(SEGMENTATION_HEADS)}, got {head!r}")
    terms = []
    for term in str(spec).lower().split("+"):
        match = _TERM.match(term)
        if not match or match["name"] not in LOSSES:
            raise ValueError(
                f"loss {spec!r}: {term.strip()!r} is not a known loss; use names from "
                f"{', '.join(LOSSES)} joined by '+', optionally weighted as '0.5*dice'"
            )
        name = {"ce": "bce", "crossentropy": "bce", "jaccard": "iou"}.get(match["name"], match["name"])
        terms.append((float(match["weight"]) if match["weight"] else 1.0, name))
    return CombinedLoss(terms, head)
