"""Pretraining loops: restoration pretext, SimCLR, local supervised contrastive, and Noise2Noise denoising.

:func:`pretrain` (arrays) and :func:`pretrain_files` (files, the ``segtune pretrain``
command) run one of four methods and write a model folder:

``restore``, ``simclr``, ``local-contrastive``
    a segmentation model ready for fine-tuning (``segtune train --from FOLDER``): a U-Net with
    the requested ``head`` whose encoder (and, after the local stage, decoder) carry the
    pretrained weights and whose 1x1 output layer is freshly initialised. The pretext network
    itself (the restoration U-Net, or the projection heads) is kept beside it in
    ``pretext.safetensors`` (loading the model ignores it). ``config["pretext"]`` says what
    was done; ``training["data"]["pretext"]`` names the method, so the lineage of a model
    fine-tuned from the folder records it.
``n2n``
    a denoiser: a U-Net with an ``"image"`` head trained with L2 loss to predict one z-slice
    from its neighbour (Noise2Noise); apply it with :func:`segtune.core.train.pretext.denoise`
    before segmenting.

The loops use the training engine's pieces: samples and patches (:mod:`.data`,
:mod:`.patches`, :mod:`.augment`), device choice, AdamW with a cosine schedule, the progress
and cancel protocol, atomic model folders. The folder is rewritten after every epoch, so it is
valid at every moment; cancelling keeps the last finished epoch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "PretrainConfig", "PretrainResult", "pretrain", "pretrain_files", "read_images"]

METHODS = ("restore", "simclr", "local-contrastive", "n2n")
PRETEXT_WEIGHTS = "pretext.safetensors"
LOG_NAME = "pretrain_log.csv"
_DEFAULT_TEMPERATURE = {"simclr": 0.5, "local-contrastive": 0.07}


@dataclass
class PretrainConfig:
    """How to pretrain (recorded in the model's config).

    Attributes
    ----------
    method
        ``"restore"``, ``"simclr"``, ``"local-contrastive"`` or ``"n2n"``.
    epochs, steps_per_epoch, batch_size, patch
        Length of training, patches per step and their size (square, 2D). ``steps_per_epoch``
        None: enough to cover the images' pixels about once (at least 8).
    learning_rate, weight_decay
        AdamW settings (cosine-annealed over the run).
    normalization, clip
        Percentiles mapped to 0 and 1 (``(5, 98)`` with ``clip=True`` is the contrast stretch);
        recorded as the model's normalisation, so fine-tuning and prediction use the same.
    head, n_classes
        The segmentation head of the saved model (not used by ``n2n``); None: the head of
        ``from_model``, else ``"three_class"`` (as for a new model in ``segtune train``).
    architecture, encoder
        ``"unet"`` or ``"unetpp"``, and a ResNet ``encoder`` for a ResNet-encoder U-Net (see
        :func:`~segtune.core.models.unet.new_architecture`); the UNet++ and ResNet U-Net are
        pretrained by ``restore`` only.
    depth, base_channels, norm, upsample
        The U-Net (ignored when starting ``from_model``, whose architecture is kept).
    corruptions, corruption_mode, drop_fraction, blur_sigma, noise_std, restore_loss, l1_weight
        The restoration pretext (see :class:`~segtune.core.train.pretext.CorruptionConfig`).
    temperature
        Of the contrastive losses; None: 0.5 for SimCLR, 0.07 for the local stage.
    projection_dim, pixel_projection_dim
        Output size of SimCLR's projection head (256) and of the per-pixel head (64).
    block_size
        Block side of the local contrastive loss (16).
    freeze_encoder
        Local stage: keep the encoder from ``from_model`` fixed.
    min_foreground
        Local stage: skip crops with less labelled foreground than this.
    max_minutes
        Time budget; the run stops after the epoch in which it is spent.
    device, seed
        Where to compute and the seed of every random choice.
    """

    method: str = "restore"
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 8
    patch: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    normalization: tuple[float, float] = (1.0, 99.8)
    clip: bool = False
    head: str | None = None
    n_classes: int | None = None
    architecture: str = "unet"
    encoder: str | None = None
    depth: int = 4
    base_channels: int = 32
    norm: str = "batch"
    upsample: str = "transpose"
    corruptions: tuple[str, ...] = ("drop", "blur", "sobel", "noise")
    corruption_mode: str = "one"
    drop_fraction: float = 0.25
    blur_sigma: float = 2.0
    noise_std: float = 0.2
    restore_loss: str = "ssim"
    l1_weight: float = 1.0
    temperature: float | None = None
    projection_dim: int = 256
    pixel_projection_dim: int = 64
    block_size: int = 16
    freeze_encoder: bool = False
    min_foreground: float = 0.03
    max_minutes: float | None = None
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["normalization"] = list(self.normalization)
        values["corruptions"] = list(self.corruptions)
        values["temperature"] = self.effective_temperature
        return values

    @property
    def effective_temperature(self) -> float | None:
        return self.temperature if self.temperature is not None else _DEFAULT_TEMPERATURE.get(self.method)

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        from segtune.core.train.pretext import RESTORATION_LOSSES

        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.method == "simclr" and self.batch_size < 2:
            raise ValueError(f"SimCLR needs batch_size >= 2 (the other images are the negatives), got {self.batch_size}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        multiple, what = 2**self.depth, f"2**depth = {2**self.depth}"
        if self.architecture != "unet" or self.encoder is not None:
            if self.method not in ("restore", "n2n"):
                raise ValueError(f"{self.method} pretraining needs the plain U-Net; the ResNet U-Net and UNet++ pretrain by restore")
            multiple = self.network_class().size_multiple
            what = f"{multiple} (the network's downsampling)"
        if self.patch < 16 or self.patch % multiple:
            raise ValueError(f"patch must be at least 16 and a multiple of {what}, got {self.patch}")
        if self.method == "local-contrastive" and self.patch % self.block_size:
            raise ValueError(f"patch {self.patch} must be a multiple of block_size {self.block_size}")
        if self.head is not None and self.head not in ("binary", "three_class", "semantic"):
            raise ValueError(f"head must be binary, three_class or semantic, got {self.head!r}")
        if self.head == "semantic" and (self.n_classes is None or self.n_classes < 2):
            raise ValueError(f"a semantic head needs n_classes >= 2, got {self.n_classes}")
        if self.restore_loss not in RESTORATION_LOSSES:
            raise ValueError(f"restore_loss must be one of {', '.join(RESTORATION_LOSSES)}, got {self.restore_loss!r}")
        if self.effective_temperature is not None and not self.effective_temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        low, high = self.normalization
        if not 0 <= low < high <= 100:
            raise ValueError(f"normalization percentiles must satisfy 0 <= low < high <= 100, got {self.normalization}")
        self.corruption_config()  # validates the corruption settings

    def new_architecture(self, in_channels: int, out_channels: int) -> dict[str, Any]:
        """The architecture dict of a new 2D network with these settings."""
        from segtune.core.models.unet import new_architecture

        return new_architecture(self.architecture, encoder=self.encoder, spatial_dims=2, in_channels=in_channels,
                                out_channels=out_channels, depth=self.depth, base_channels=self.base_channels,
                                norm=self.norm, upsample=self.upsample)

    def network_class(self) -> type[nn.Module]:
        from segtune.core.models.unet import architecture_class

        return architecture_class(self.new_architecture(1, 1)["name"])

    def corruption_config(self):
        from segtune.core.train.pretext import CorruptionConfig

        return CorruptionConfig(kinds=tuple(self.corruptions), mode=self.corruption_mode, drop_fraction=self.drop_fraction,
                                blur_sigma=self.blur_sigma, noise_std=self.noise_std)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown pretraining settings {sorted(unknown)}")
        values = dict(values)
        for key in ("normalization", "corruptions"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the saved model (eval mode), its config, the loss per epoch."""

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"
    folder: Path | None = None
    pretext_model: nn.Module | None = None


# --- data ---------------------------------------------------------------------------------------


def _as_czyx(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        return image[None, None]
    if image.ndim == 3:
        return image[None]
    if image.ndim == 4:
        return image
    raise ValueError(f"{name}: an image must be (Y, X), (Z, Y, X) or (C, Z, Y, X), got shape {image.shape}")


def _unlabelled_sample(image: np.ndarray, normalization: Sequence[float], clip: bool, name: str):
    from segtune.core.normalize import percentile_normalize
    from segtune.core.train.data import Sample

    image = _as_czyx(image, name)
    normalized = np.stack([percentile_normalize(c, normalization[0], normalization[1], clip=clip) for c in image]).astype(np.float32)
    shape = normalized.shape[1:]
    return Sample(np.ascontiguousarray(normalized), np.zeros(shape, np.uint8), np.ones(shape, bool), name)


def read_images(paths: Sequence[str | os.PathLike], channel: int | None = None) -> tuple[list[np.ndarray], list[str]]:
    """Read image files as ``(C, Z, Y, X)`` arrays, one per file and time point.

    ``channel`` picks one channel (all channels otherwise).
    """
    from segtune.core.io import open_image

    arrays, names = [], []
    for path in paths:
        image = open_image(path)
        data = image.data  # TCZYX
        n_channels = data.shape[1]
        if channel is not None and not 0 <= channel < n_channels:
            raise ValueError(f"channel {channel} is out of range: {path} has {n_channels} channel(s)")
        for t in range(data.shape[0]):
            array = np.asarray(data[t].compute())
            if channel is not None:
                array = array[channel : channel + 1]
            arrays.append(array)
            names.append(str(path) if data.shape[0] == 1 else f"{path}[t={t}]")
    return arrays, names


def _n2n_batch(samples, pairs, patch: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` (input, target) crops from adjacent z-slices, with the same random flips."""
    inputs, targets = [], []
    for _ in range(batch_size):
        sample_index, z_in, z_out = pairs[int(rng.integers(len(pairs)))]
        image = samples[sample_index].image
        _, _, height, width = image.shape
        y = int(rng.integers(0, max(1, height - patch + 1)))
        x = int(rng.integers(0, max(1, width - patch + 1)))
        a = image[:, z_in, y : y + patch, x : x + patch]
        b = image[:, z_out, y : y + patch, x : x + patch]
        if a.shape[-2:] != (patch, patch):
            pads = [(0, 0), (0, patch - a.shape[-2]), (0, patch - a.shape[-1])]
            a, b = np.pad(a, pads, mode="symmetric"), np.pad(b, pads, mode="symmetric")
        for axis in (-1, -2):
            if rng.random() < 0.5:
                a, b = np.flip(a, axis), np.flip(b, axis)
        inputs.append(np.ascontiguousarray(a))
        targets.append(np.ascontiguousarray(b))
    return np.stack(inputs).astype(np.float32), np.stack(targets).astype(np.float32)


# --- saving ---------------------------------------------------------------------------------------


def _segmentation_model(pretext_unet: nn.Module, config: PretrainConfig, *, with_decoder: bool) -> nn.Module:
    """A fresh U-Net with the segmentation head and the pretext network's encoder (and decoder)."""
    from segtune.core.models.unet import build_model
    from segtune.core.train.pretext import transfer_encoder

    out_channels = {"binary": 1, "three_class": 3}.get(config.head, config.n_classes or 2)
    architecture = {**pretext_unet.architecture, "out_channels": out_channels}
    model = build_model(architecture)
    transfer_encoder(pretext_unet, model)
    if with_decoder:
        state = {k: v for k, v in pretext_unet.state_dict().items() if not k.startswith(("encoder.", "head."))}
        model.load_state_dict(state, strict=False)
    return model


def _save_pretext_weights(folder: Path, modules: dict[str, nn.Module], architectures: dict[str, Any]) -> None:
    from safetensors.torch import save

    from segtune.core.models.store import atomic_write_bytes

    tensors = {
        f"{name}/{key}": value.detach().to("cpu").contiguous().clone()
        for name, module in modules.items()
        for key, value in module.state_dict().items()
    }
    data = save(tensors, metadata={"format": "segtune-pretext", "architectures": json.dumps(architectures)})
    atomic_write_bytes(folder / PRETEXT_WEIGHTS, data)


def _write_log(folder: Path, history: list[dict[str, Any]]) -> None:
    from segtune.core.models.store import atomic_write_text

    lines = ["epoch,loss,lr,steps,seconds"]
    lines += [f"{h['epoch']},{h['loss']:.6g},{h['lr']:.6g},{h['steps']},{h['seconds']:.1f}" for h in history]
    atomic_write_text(folder / LOG_NAME, "\n".join(lines) + "\n")


# --- the loop -------------------------------------------------------------------------------------


def pretrain(
    images: Sequence[np.ndarray],
    config: PretrainConfig | None = None,
    *,
    labels: Sequence[np.ndarray] | None = None,
    names: Sequence[str] | None = None,
    from_model: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    ignore_value: int | None = None,
    provenance: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PretrainResult:
    """Pretrain a U-Net on ``images`` (and, for the local stage, ``labels``).

    Parameters
    ----------
    images
        Arrays ``(Y, X)``, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (2D planes of stacks are used;
        ``n2n`` needs stacks of at least two z-slices).
    config
        :class:`PretrainConfig`.
    labels
        ``local-contrastive`` only: integer labels of each image's spatial shape (binary
        masks or instance ids: the classes are foreground and background; class indices with a
        semantic head).
    names
        Names of the images, for messages and the record.
    from_model
        ``local-contrastive``: the global (SimCLR) stage's folder whose encoder starts the U-Net
        (its architecture is kept). Other methods: a model folder whose architecture and
        encoder to start from.
    out
        Model folder to write (rewritten after every epoch); None keeps the model in memory.
    overwrite
        Replace an existing ``out``.
    ignore_value
        A label value the local stage ignores.
    provenance
        Extra facts recorded under ``config["training"]`` (the command line).
    progress, cancel
        See :mod:`segtune.core.progress` (stage ``"pretrain"``, one event per step with the
        running ``loss``). Cancelling keeps the last finished epoch's folder and returns with
        ``stop_reason == "cancelled"``.

    Returns
    -------
    PretrainResult

    Raises
    ------
    ValueError
        Bad settings, missing labels for the local stage, stacks too thin for ``n2n``.
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    from segtune import __version__
    from segtune.core.device import select_device
    from segtune.core.models.store import default_config, load_model, save_model
    from segtune.core.models.unet import UNet, build_model
    from segtune.core.train.contrastive import (
        PixelProjectionHead,
        ProjectionHead,
        encode,
        local_supervised_contrastive_loss,
        nt_xent_loss,
        simclr_views,
        unet_features,
    )
    from segtune.core.train.data import make_sample
    from segtune.core.train.patches import PatchSampler
    from segtune.core.train.pretext import corrupt, n2n_pairs, restoration_loss, transfer_encoder
    from segtune.core.train.trainer import _autocast, _seed_everything

    started = time.monotonic()
    config = copy.deepcopy(config) if config is not None else PretrainConfig()
    config.validate()
    method = config.method
    images = list(images)
    if not images:
        raise ValueError("no images to pretrain on")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    out_folder = Path(out) if out is not None else None
    if out_folder is not None and out_folder.exists() and (not out_folder.is_dir() or any(out_folder.iterdir())) and not overwrite:
        raise FileExistsError(f"model folder {out_folder} already exists; pass --overwrite to replace it")
    if method == "local-contrastive":
        if labels is None:
            raise ValueError("local-contrastive pretraining needs labels (--labels), one per image")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s); give one label image per image")
    elif labels is not None:
        logger.warning("labels are only used by local-contrastive pretraining; %s ignores them", method)

    # --- the starting model ---
    base_config: dict[str, Any] = {}
    base_model: nn.Module | None = None
    if from_model is not None:
        base_model, base_config = load_model(from_model, device="cpu")
        if base_config.get("head") == "image" and method != "n2n":
            raise ValueError(f"{from_model} is a denoiser (an image head), not an encoder to start {method} from")
        arch = base_config["architecture"]
        config.depth, config.base_channels = int(arch.get("depth", config.depth)), int(arch.get("base_channels", config.base_channels))
        config.norm, config.upsample = arch.get("norm", config.norm), arch.get("upsample", config.upsample)
        config.architecture = "unetpp" if arch.get("name") == "unetpp" else "unet"
        config.encoder = arch.get("encoder") if arch.get("name") == "resnet_unet" else None
        if config.head is None and base_config.get("head") in ("binary", "three_class", "semantic"):
            config.head = base_config["head"]
            if config.head == "semantic":
                config.n_classes = int(arch["out_channels"])
        norm = base_config.get("normalization") or {}
        if "low" in norm:
            config.normalization = (float(norm["low"]), float(norm["high"]))
            config.clip = bool(norm.get("clip", False))
        config.validate()
    elif method == "local-contrastive":
        logger.warning("local-contrastive pretraining without a global stage (--from): the encoder starts at random")
    if config.head is None:
        config.head = "three_class"

    # --- data ---
    if method == "local-contrastive":
        samples = [
            make_sample(image, np.asarray(lab), ignore_value=ignore_value, normalization=config.normalization, clip=config.clip, name=name)
            for image, lab, name in zip(images, labels, names, strict=True)
        ]
    else:
        samples = [_unlabelled_sample(image, config.normalization, config.clip, name) for image, name in zip(images, names, strict=True)]
    in_channels = samples[0].image.shape[0]
    for sample in samples[1:]:
        if sample.image.shape[0] != in_channels:
            raise ValueError(f"{sample.name} has {sample.image.shape[0]} channel(s) but {samples[0].name} has {in_channels}")
    if base_model is not None and int(base_config["architecture"]["in_channels"]) != in_channels:
        raise ValueError(f"{from_model} takes {base_config['architecture']['in_channels']} channel(s), the images have {in_channels}")

    _seed_everything(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = select_device(config.device)
    pairs: list[tuple[int, int, int]] = []
    sampler = None
    if method == "n2n":
        for index, sample in enumerate(samples):
            if sample.image.shape[1] >= 2:
                pairs += [(index, a, b) for a, b in n2n_pairs(sample.image.shape[1])]
        if not pairs:
            raise ValueError("Noise2Noise needs z-stacks (at least 2 slices); every image given is a single plane")
    else:
        sampler = PatchSampler(samples, (config.patch, config.patch), spatial_dims=2,
                               min_foreground=config.min_foreground if method == "local-contrastive" else 0.0, rng=rng)

    # --- networks ---
    temperature = config.effective_temperature
    image_out = in_channels  # restore / n2n predict the image
    if base_model is not None and method in ("restore", "n2n"):
        unet = build_model({**base_model.architecture, "out_channels": image_out})
        transfer_encoder(base_model, unet)
    elif base_model is not None:
        unet = base_model  # the global stage's network (its encoder is the SimCLR encoder)
        if method == "local-contrastive":
            fresh = UNet(**{k: v for k, v in base_model.architecture.items() if k != "name"})
            transfer_encoder(base_model, fresh, freeze=config.freeze_encoder)
            unet = fresh
    else:
        out_channels = image_out if method in ("restore", "n2n") else {"binary": 1, "three_class": 3}.get(config.head, config.n_classes or 2)
        unet = build_model(config.new_architecture(in_channels, out_channels))
        if method == "local-contrastive" and config.freeze_encoder:
            logger.warning("freeze_encoder without a global stage freezes a random encoder")
            for parameter in unet.encoder_parameters():
                parameter.requires_grad_(False)
    if method in ("restore", "n2n"):
        # image outputs start at zero (He-initialised heads start far off the intensity range)
        nn.init.zeros_(unet.head.weight)
        nn.init.zeros_(unet.head.bias)
    heads: dict[str, nn.Module] = {}
    if method == "simclr":
        heads["projection"] = ProjectionHead(config.base_channels * 2**config.depth, hidden=config.projection_dim, out_dim=config.projection_dim)
    elif method == "local-contrastive":
        heads["pixel_projection"] = PixelProjectionHead(config.base_channels, out_dim=config.pixel_projection_dim)
    networks = nn.ModuleDict({"unet": unet, **heads}).to(device)
    trainable = [p for p in networks.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_pixels = sum(int(np.prod(s.image.shape[1:])) for s in samples)
    steps_per_epoch = config.steps_per_epoch or max(8, math.ceil(total_pixels / (config.patch**2 * config.batch_size)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=config.learning_rate * 0.02)
    use_amp = device.type == "cuda"
    corruption = config.corruption_config()
    from segtune.core.train.augment import AugmentConfig

    augmentation = AugmentConfig()

    def step_loss() -> torch.Tensor:
        if method == "n2n":
            x, y = _n2n_batch(samples, pairs, config.patch, config.batch_size, rng)
            x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with _autocast(device, use_amp):
                output = unet(x_t)
            # residual: the network learns the noise to take away, starting from the identity
            return torch.mean((x_t + output.float() - y_t) ** 2)
        if method == "local-contrastive":
            x, y, valid = sampler.batch(config.batch_size, head="semantic" if config.head == "semantic" else "binary",
                                        augmentation=augmentation, n_classes=config.n_classes)
            x_t = torch.from_numpy(x).to(device)
            with _autocast(device, use_amp):
                embeddings = heads["pixel_projection"](unet_features(unet, x_t))
            return local_supervised_contrastive_loss(embeddings.float(), torch.from_numpy(np.asarray(y, np.int64)).to(device),
                                                     block_size=config.block_size, temperature=temperature,
                                                     valid=torch.from_numpy(valid).to(device))
        x, _, _ = sampler.batch(config.batch_size, head="binary", augmentation=None)
        x_t = torch.from_numpy(x)
        if method == "restore":
            corrupted, _ = corrupt(x_t, corruption, generator=generator)
            with _autocast(device, use_amp):
                output = unet(corrupted.to(device))
            return restoration_loss(output.float(), x_t.to(device), config.restore_loss, l1_weight=config.l1_weight)
        view1, view2 = simclr_views(x_t, generator=generator)
        with _autocast(device, use_amp):
            z1 = heads["projection"](encode(unet, view1.to(device)))
            z2 = heads["projection"](encode(unet, view2.to(device)))
        return nt_xent_loss(z1.float(), z2.float(), temperature=temperature)

    # --- the record ---
    lineage = list(base_config.get("lineage", []))
    if from_model is not None:
        lineage.append({"from": str(from_model), "training": base_config.get("training", {}).get("data"),
                        "metrics": base_config.get("metrics", {}), "segtune_version": base_config.get("segtune_version"),
                        "pretext": (base_config.get("pretext") or {}).get("method")})
    transfer = {"restore": "encoder", "simclr": "encoder", "local-contrastive": "encoder+decoder", "n2n": None}[method]
    training_record: dict[str, Any] = {
        **(provenance or {}),
        "data": {"images": names, "pretext": method,
                 **({"labels": list(provenance.get("label_files", []))} if provenance and "label_files" in provenance else {})},
        "settings": config.to_dict(),
        "device": str(device),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    pretext_record: dict[str, Any] = {"method": method, "transfer": transfer, "loss": _loss_name(config), "history": []}
    if method == "n2n":
        pretext_record["residual"] = True  # the denoised image is input + network output
    if method != "n2n":
        pretext_record["weights"] = PRETEXT_WEIGHTS
    normalization = {"method": "percentile", "low": float(config.normalization[0]), "high": float(config.normalization[1]), "clip": bool(config.clip)}
    history: list[dict[str, Any]] = []

    def output_model() -> tuple[nn.Module, dict[str, Any]]:
        if method == "n2n":
            model = copy.deepcopy(unet).cpu()
            head = "image"
            classes = [f"channel_{c}" for c in range(in_channels)]
        else:
            model = _segmentation_model(unet, config, with_decoder=method == "local-contrastive").cpu()
            head = config.head
            classes = None
        model_config = default_config(model.architecture, head=head, normalization=normalization,
                                      tile_shape=[config.patch, config.patch], training=training_record,
                                      metrics={"pretext_loss": history[-1]["loss"]} if history else {},
                                      lineage=lineage, pretext={**pretext_record, "history": history},
                                      segtune_version=__version__)
        if classes is not None:
            model_config["classes"] = classes
        model_config["description"] = _description(method, config)
        return model.eval(), model_config

    def save(model: nn.Module, model_config: dict[str, Any]) -> None:
        if out_folder is None:
            return
        save_model(model, model_config, out_folder, overwrite=True)
        if method != "n2n":
            architectures = {"unet": unet.architecture, **{name: type(module).__name__ for name, module in heads.items()}}
            _save_pretext_weights(out_folder, {"unet": unet, **heads}, architectures)
        _write_log(out_folder, history)

    if out_folder is not None:
        save(*output_model())  # a valid folder from the start

    report = Reporter(progress, cancel, stage="pretrain", total=total_steps)
    deadline = started + config.max_minutes * 60 if config.max_minutes else None
    stop_reason = "completed"
    global_step = 0
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.monotonic()
            networks.train()
            if config.freeze_encoder and method == "local-contrastive":
                for module in unet.encoder_modules():
                    module.eval()
            running, steps_done, out_of_time = 0.0, 0, False
            for step in range(steps_per_epoch):
                optimizer.zero_grad(set_to_none=True)
                loss = step_loss()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the {method} loss became {loss.item()} at epoch {epoch}, step {step + 1}; lower the learning rate")
                loss.backward()
                optimizer.step()
                scheduler.step()
                global_step += 1
                running += float(loss.detach())
                steps_done += 1
                report.step(global_step, message=f"{method} epoch {epoch}/{config.epochs}", epoch=epoch, loss=running / steps_done)
                if deadline is not None and time.monotonic() >= deadline:
                    out_of_time = True
                    break
            history.append({"epoch": epoch, "loss": running / steps_done, "lr": optimizer.param_groups[0]["lr"],
                            "steps": steps_done, "seconds": time.monotonic() - epoch_start})
            save(*output_model())
            if out_of_time:
                stop_reason = "time_budget"
                break
    except Cancelled:
        stop_reason = "cancelled"  # the folder keeps the last finished epoch

    training_record.update(status="cancelled" if stop_reason == "cancelled" else "finished", stop_reason=stop_reason,
                           epochs_run=len(history), seconds=round(time.monotonic() - started, 1),
                           finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    model, model_config = output_model()
    if out_folder is not None and (history or stop_reason != "cancelled"):
        save(model, model_config)
    networks.eval()
    logger.info("%s pretraining stopped (%s) after %d epoch(s)", method, stop_reason, len(history))
    return PretrainResult(model, model_config, history, stop_reason, out_folder, pretext_model=networks)


def _loss_name(config: PretrainConfig) -> str:
    return {
        "restore": config.restore_loss,
        "simclr": f"nt-xent (temperature {config.effective_temperature})",
        "local-contrastive": f"local supervised contrastive (block {config.block_size}, temperature {config.effective_temperature})",
        "n2n": "l2",
    }[config.method]


def _description(method: str, config: PretrainConfig) -> str:
    return {
        "restore": f"U-Net encoder pretrained by restoring corrupted images ({', '.join(config.corruptions)}); fine-tune with segtune train --from",
        "simclr": "U-Net encoder pretrained with SimCLR (NT-Xent); start the local stage or fine-tune from it",
        "local-contrastive": "U-Net pretrained with a local supervised contrastive loss; fine-tune with segtune train --from",
        "n2n": "Noise2Noise denoiser trained on adjacent z-slices; apply before segmenting",
    }[method]


def pretrain_files(
    image_paths: Sequence[str | os.PathLike],
    config: PretrainConfig | None = None,
    *,
    label_paths: Sequence[str | os.PathLike] | None = None,
    channel: int | None = None,
    out: str | os.PathLike,
    from_model: str | os.PathLike | None = None,
    overwrite: bool = False,
    ignore_value: int | None = None,
    command: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PretrainResult:
    """:func:`pretrain` on image (and label) files; every time point of a file is one image.

    ``channel`` picks one channel of multi-channel files. With ``label_paths`` (local stage)
    images and labels are paired in the order given, one label file per image file.
    """
    from segtune.core.io import read_labels

    images, names = read_images(image_paths, channel=channel)
    labels = None
    provenance: dict[str, Any] = {"image_files": [str(p) for p in image_paths]}
    if command is not None:
        provenance["command"] = command
    if label_paths is not None:
        if len(label_paths) != len(image_paths):
            raise ValueError(f"{len(image_paths)} image file(s) but {len(label_paths)} label file(s); give one label file per image")
        if len(images) != len(image_paths):
            raise ValueError("local-contrastive pretraining on files takes single time point images")
        labels = []
        for image, label_path in zip(images, label_paths, strict=True):
            label = read_labels(label_path)
            spatial = image.shape[1:] if image.shape[1] > 1 else image.shape[2:]
            if label.shape != spatial:
                raise ValueError(f"labels {label_path} (shape {label.shape}) do not match the image (spatial shape {spatial})")
            labels.append(label)
        images = [image if image.shape[1] > 1 else image[:, 0] for image in images]
        images = [image[0] if image.shape[0] == 1 else image for image in images]
        provenance["label_files"] = [str(p) for p in label_paths]
    return pretrain(images, config, labels=labels, names=names, from_model=from_model, out=out, overwrite=overwrite,
                    ignore_value=ignore_value, provenance=provenance, progress=progress, cancel=cancel)


def load_pretext_weights(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and architectures of a pretrained folder's ``pretext.safetensors`` (no pickle)."""
    from safetensors import safe_open

    path = Path(folder) / PRETEXT_WEIGHTS
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 -- safe_open has no iterator
    return tensors, json.loads(metadata.get("architectures", "{}"))

