"""Adversarial training of 3D segmenters: Vox2Vox (paired) and CycleGAN from synthetic masks (unpaired).

``vox2vox`` (Cirillo et al. 2020, a 3D pix2pix)
    a 3D U-Net generator maps an image to mask logits; a PatchGAN discriminator sees the image
    beside a mask (the true one or the generator's) and says, per patch, which it is. The
    generator minimises Dice + BCE against the true mask plus ``adversarial_weight`` times the
    least-squares GAN loss (Mao et al. 2017) of fooling the discriminator.
``cyclegan`` (Zhu et al. 2017), trained between unpaired real stacks and synthetic masks
    two 3D U-Net generators (image -> mask, mask -> image) and two PatchGAN discriminators
    (real vs generated images, synthetic vs generated masks), with least-squares adversarial
    losses and the cycle-consistency L1 loss (``cycle_weight``) image -> mask -> image and
    mask -> image -> mask. No hand-drawn label is used: the masks come from a recipe
    (:func:`segtune.core.synthetic.synthetic_nuclei` with the given arguments), the images are
    the user's unlabelled stacks. The image -> mask generator is the segmenter.

Both write an ordinary model folder (a binary-head 3D U-Net, ``config.json`` +
``weights.safetensors``) that ``segtune predict`` uses like any other; the other networks are
kept beside it in ``gan.safetensors`` (loading the model ignores it). The folder is rewritten
after every epoch, so it is valid at every moment; Ctrl-C / Cancel saves the networks as they are.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segtune.core.normalize import DEFAULT_PERCENTILES
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter

__all__ = [
    "GAN_METHODS",
    "GanConfig",
    "GanResult",
    "PatchDiscriminator",
    "parse_mask_recipe",
    "synthetic_masks",
    "train_gan",
]

GAN_METHODS = ("vox2vox", "cyclegan")
GAN_WEIGHTS = "gan.safetensors"


@dataclass
class GanConfig:
    """How to train (recorded in the model's config).

    Attributes
    ----------
    method
        ``"vox2vox"`` or ``"cyclegan"``.
    patch, batch_size, epochs, steps_per_epoch
        ``(Z, Y, X)`` patches, patches per step, and the length of training.
    learning_rate
        Adam (beta1 0.5, as in pix2pix and CycleGAN) for generators and discriminators.
    adversarial_weight
        Weight of the generator's adversarial loss (Vox2Vox; CycleGAN weighs it 1).
    cycle_weight
        Weight of the cycle-consistency L1 loss (CycleGAN).
    depth, base_channels, norm
        The generators (3D U-Nets) and the discriminators' first width.
    mask_recipe
        CycleGAN: keyword arguments of :func:`segtune.core.synthetic.synthetic_nuclei` for the
        synthetic masks (their ``shape`` is the patch).
    normalization
        Percentiles mapped to 0 and 1 (recorded for prediction).
    max_minutes, device, seed
        Time budget, where to compute, the seed.
    """

    method: str = "vox2vox"
    patch: tuple[int, int, int] = (16, 64, 64)
    batch_size: int = 2
    epochs: int = 20
    steps_per_epoch: int = 20
    learning_rate: float = 2e-4
    adversarial_weight: float = 0.1
    cycle_weight: float = 10.0
    depth: int = 3
    base_channels: int = 8
    norm: str = "instance"
    mask_recipe: dict[str, Any] = field(default_factory=lambda: {"diameter": 14.0, "z_anisotropy": 2.0})
    normalization: tuple[float, float] = DEFAULT_PERCENTILES
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        if self.method not in GAN_METHODS:
            raise ValueError(f"method must be one of {', '.join(GAN_METHODS)}, got {self.method!r}")
        if len(tuple(self.patch)) != 3 or any(int(p) < 8 for p in self.patch):
            raise ValueError(f"patch must be (Z, Y, X), each at least 8, got {self.patch}")
        multiple = 2**self.depth
        if any(int(p) % multiple for p in self.patch):
            raise ValueError(f"patch {tuple(self.patch)} must be a multiple of 2**depth = {multiple} on every axis")
        for name in ("batch_size", "epochs", "steps_per_epoch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


@dataclass
class GanResult:
    """The segmenter (eval mode), its config, one dict of mean losses per epoch, why it stopped."""

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, float]]
    stop_reason: str
    folder: Path | None = None


class PatchDiscriminator(nn.Module):
    """A 3D PatchGAN (Isola et al. 2017): strided 4^3 convolutions to one real/fake score per patch.

    Three downsamplings (a 70-pixel-like receptive field in 3D), instance norm, LeakyReLU 0.2.
    """

    def __init__(self, in_channels: int, base_channels: int = 16, levels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width, previous = base_channels, in_channels
        for level in range(levels):
            layers += [nn.Conv3d(previous, width, 4, stride=2, padding=1)]
            if level:
                layers.append(nn.InstanceNorm3d(width, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            previous, width = width, width * 2
        layers.append(nn.Conv3d(previous, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def parse_mask_recipe(text: str) -> dict[str, Any]:
    """``"diameter=14,z_anisotropy=2,touching=0.3"`` -> keyword arguments for ``synthetic_nuclei``.

    Raises
    ------
    ValueError
        A malformed entry or a name ``synthetic_nuclei`` does not take.
    """
    import inspect

    from segtune.core.synthetic import synthetic_nuclei

    known = set(inspect.signature(synthetic_nuclei).parameters) - {"shape", "seed", "dtype"}
    recipe: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in known:
            raise ValueError(
                f"mask recipe entry {item!r} is not NAME=VALUE with NAME one of {', '.join(sorted(known))}"
            )
        try:
            recipe[name.strip()] = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"mask recipe entry {item!r}: {value!r} is not a number") from e
    return recipe


def synthetic_masks(recipe: dict[str, Any], shape: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` binary nucleus masks ``(n, 1, *shape)`` float32 drawn from ``recipe``."""
    from segtune.core.synthetic import synthetic_nuclei

    masks = [synthetic_nuclei(tuple(shape), seed=int(rng.integers(2**31)), **recipe).labels > 0 for _ in range(n)]
    return np.stack(masks)[:, None].astype(np.float32)


def _lsgan(prediction: torch.Tensor, real: bool) -> torch.Tensor:
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if real else 0.0))


def _dice(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    intersection = (probabilities * target).sum()
    return 1 - (2 * intersection + 1) / (probabilities.sum() + target.sum() + 1)


def _generator(in_channels: int, out_channels: int, config: GanConfig) -> nn.Module:
    from segtune.core.models.unet import UNet

    return UNet(
        3,
        in_channels,
        out_channels,
        depth=config.depth,
        base_channels=config.base_channels,
        norm=config.norm,
        upsample="resize",
    )


def train_gan(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None = None,
    config: GanConfig | None = None,
    *,
    names: Sequence[str] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> GanResult:
    """Train a 3D segmenter adversarially (see the module docstring).

    Parameters
    ----------
    images
        ``(Z, Y, X)`` or ``(C, Z, Y, X)`` stacks.
    labels
        Vox2Vox: one label stack per image (non-zero is foreground). CycleGAN: None.
    config
        The settings (:class:`GanConfig`).
    out, overwrite
        The model folder to write (rewritten after every epoch), and whether it may exist.

    Returns
    -------
    GanResult

    Raises
    ------
    ValueError
        Bad settings, labels missing for Vox2Vox or given for CycleGAN, images of differing channels.
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    from segtune import __version__
    from segtune.core.device import select_device
    from segtune.core.models.store import atomic_write_bytes, default_config, save_model
    from segtune.core.normalize import percentile_spec
    from segtune.core.train.data import make_sample
    from segtune.core.train.loop import seed_everything as _seed_everything
    from segtune.core.train.patches import PatchSampler

    started = time.monotonic()
    config = copy.deepcopy(config) if config is not None else GanConfig()
    config.validate()
    cyclegan = config.method == "cyclegan"
    images = [np.asarray(image) for image in images]
    if not images:
        raise ValueError("no images to train on")
    if cyclegan and labels is not None:
        raise ValueError("CycleGAN trains without labels (its masks come from the synthetic-mask recipe)")
    if not cyclegan and (labels is None or len(labels) != len(images)):
        raise ValueError(
            f"Vox2Vox needs one label stack per image: {len(images)} image(s), "
            f"{0 if labels is None else len(labels)} label stack(s)"
        )
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    folder = Path(out) if out is not None else None
    if folder is not None and folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"model folder {folder} already exists; pass --overwrite to replace it")

    _seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    stacks = [image if image.ndim == 4 else image[None] for image in images]
    label_stacks = (
        [np.asarray(lab) for lab in labels] if labels is not None else [np.zeros(s.shape[1:], np.uint8) for s in stacks]
    )
    samples = [
        make_sample(s, lab, normalization=tuple(config.normalization), name=name)
        for s, lab, name in zip(stacks, label_stacks, names, strict=True)
    ]
    channels = samples[0].image.shape[0]
    if any(s.image.shape[0] != channels for s in samples):
        raise ValueError(f"the images have differing channel counts: {[s.image.shape[0] for s in samples]}")
    sampler = PatchSampler(
        samples, tuple(config.patch), spatial_dims=3, min_foreground=0.0 if cyclegan else 0.01, rng=rng
    )
    device = select_device(config.device)

    segmenter = _generator(channels, 1, config)
    networks: dict[str, nn.Module] = {"segmenter": segmenter}
    if cyclegan:
        networks["painter"] = _generator(1, channels, config)  # mask -> image
        networks["image_critic"] = PatchDiscriminator(channels, config.base_channels)
        networks["mask_critic"] = PatchDiscriminator(1, config.base_channels)
    else:
        networks["critic"] = PatchDiscriminator(channels + 1, config.base_channels)
    modules = nn.ModuleDict(networks).to(device)
    generators = [p for k, m in networks.items() if k in ("segmenter", "painter") for p in m.parameters()]
    critics = [p for k, m in networks.items() if "critic" in k for p in m.parameters()]
    g_optimizer = torch.optim.Adam(generators, lr=config.learning_rate, betas=(0.5, 0.999))
    d_optimizer = torch.optim.Adam(critics, lr=config.learning_rate, betas=(0.5, 0.999))

    # CycleGAN's masks: a pool drawn once from the recipe (drawing costs more than a step),
    # shown in random flips; unpaired: nothing ties a mask to the image patch beside it
    pool = synthetic_masks(config.mask_recipe, config.patch, 32, rng) if cyclegan else None

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, y, _ = sampler.batch(config.batch_size, head="binary", augmentation=None)
        if pool is not None:
            y = pool[rng.integers(len(pool), size=config.batch_size)]
            for axis in (2, 3, 4):
                if rng.random() < 0.5:
                    y = np.flip(y, axis)
            y = np.ascontiguousarray(y)
        else:
            y = y[:, None] if y.ndim == 4 else y
        return torch.from_numpy(x).to(device), torch.from_numpy(np.asarray(y, np.float32)).to(device)

    def step() -> dict[str, float]:
        x, y = batch()
        if cyclegan:
            painter, image_critic, mask_critic = networks["painter"], networks["image_critic"], networks["mask_critic"]
            fake_mask = torch.sigmoid(segmenter(x))
            fake_image = painter(y)
            g_adv = _lsgan(mask_critic(fake_mask), True) + _lsgan(image_critic(fake_image), True)
            cycle = F.l1_loss(painter(fake_mask), x) + F.l1_loss(torch.sigmoid(segmenter(fake_image)), y)
            g_loss = g_adv + config.cycle_weight * cycle
            terms = {"adversarial": g_adv.item(), "cycle": cycle.item()}
        else:
            critic = networks["critic"]
            logits = segmenter(x)
            fake_mask = torch.sigmoid(logits)
            g_adv = _lsgan(critic(torch.cat([x, fake_mask], 1)), True)
            supervised = _dice(fake_mask, y) + F.binary_cross_entropy_with_logits(logits, y)
            g_loss = supervised + config.adversarial_weight * g_adv
            terms = {"adversarial": g_adv.item(), "dice_bce": supervised.item()}
        g_optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        g_optimizer.step()
        # the critics learn from the generators' outputs of this step, detached
        if cyclegan:
            d_loss = (
                _lsgan(mask_critic(y), True)
                + _lsgan(mask_critic(fake_mask.detach()), False)
                + _lsgan(image_critic(x), True)
                + _lsgan(image_critic(fake_image.detach()), False)
            ) / 2
        else:
            d_loss = (
                _lsgan(critic(torch.cat([x, y], 1)), True)
                + _lsgan(critic(torch.cat([x, fake_mask.detach()], 1)), False)
            ) / 2
        d_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        d_optimizer.step()
        return {"generator": g_loss.item(), "critic": d_loss.item(), **terms}

    history: list[dict[str, float]] = []
    training_record = {
        **(provenance or {}),
        "data": {"images": names, "method": config.method},
        "settings": {**asdict(config), "patch": list(config.patch), "normalization": list(config.normalization)},
        "device": str(device),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }

    def save(status: str) -> dict[str, Any]:
        model_config = default_config(
            segmenter.architecture,
            head="binary",
            normalization=percentile_spec(*config.normalization),
            tile_shape=list(config.patch),
            training={**training_record, "status": status, "history": history},
            metrics=history[-1] if history else {},
            segtune_version=__version__,
            description=f"3D binary segmenter trained by {config.method}",
        )
        if folder is not None:
            from safetensors.torch import save as save_tensors

            save_model(segmenter, model_config, folder, overwrite=True)
            tensors = {
                f"{name}/{key}": value.detach().cpu().contiguous().clone()
                for name, module in networks.items()
                if name != "segmenter"
                for key, value in module.state_dict().items()
            }
            atomic_write_bytes(
                folder / GAN_WEIGHTS, save_tensors(tensors, metadata={"format": "segtune-gan", "method": config.method})
            )
        return model_config

    model_config = save("running")
    report = Reporter(progress, cancel, stage=config.method, total=config.epochs * config.steps_per_epoch)
    deadline = started + config.max_minutes * 60 if config.max_minutes else None
    stop_reason, done = "completed", 0
    try:
        for epoch in range(1, config.epochs + 1):
            modules.train()
            sums: dict[str, float] = {}
            for _ in range(config.steps_per_epoch):
                for key, value in step().items():
                    sums[key] = sums.get(key, 0.0) + value
                done += 1
                report.step(done, message=f"epoch {epoch}")
            history.append(
                {
                    "epoch": epoch,
                    **{k: v / config.steps_per_epoch for k, v in sums.items()},
                    "elapsed": time.monotonic() - started,
                }
            )
            if not all(math.isfinite(v) for v in history[-1].values()):
                raise FloatingPointError(f"{config.method} diverged at epoch {epoch}: {history[-1]}")
            model_config = save("running")
            if deadline is not None and time.monotonic() > deadline:
                stop_reason = "time_budget"
                break
    except Cancelled:
        stop_reason = "cancelled"
    model_config = save(stop_reason)
    return GanResult(segmenter.cpu().eval(), model_config, history, stop_reason, folder)
