"""The settings (:class:`PretrainConfig`) and the result (:class:`PretrainResult`) of
:func:`segtune.core.train.pretrain.pretrain`, kept apart from its loop; ``segtune.core.train.pretrain``
re-exports them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from segtune.core.normalize import DEFAULT_PERCENTILES

METHODS = ("restore", "simclr", "local-contrastive", "n2n")
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
    normalization: tuple[float, float] = DEFAULT_PERCENTILES
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
            raise ValueError(
                f"SimCLR needs batch_size >= 2 (the other images are the negatives), got {self.batch_size}"
            )
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        multiple, what = 2**self.depth, f"2**depth = {2**self.depth}"
        if self.architecture != "unet" or self.encoder is not None:
            if self.method not in ("restore", "n2n"):
                raise ValueError(
                    f"{self.method} pretraining needs the plain U-Net; the ResNet U-Net and UNet++ pretrain by restore"
                )
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

        return new_architecture(
            self.architecture,
            encoder=self.encoder,
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            depth=self.depth,
            base_channels=self.base_channels,
            norm=self.norm,
            upsample=self.upsample,
        )

    def network_class(self) -> type[nn.Module]:
        from segtune.core.models.unet import architecture_class

        return architecture_class(self.new_architecture(1, 1)["name"])

    def corruption_config(self):
        from segtune.core.train.pretext import CorruptionConfig

        return CorruptionConfig(
            kinds=tuple(self.corruptions),
            mode=self.corruption_mode,
            drop_fraction=self.drop_fraction,
            blur_sigma=self.blur_sigma,
            noise_std=self.noise_std,
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        from segtune.core.train.settings import settings_from_dict

        return settings_from_dict(cls, values, "pretraining", tuples=("normalization", "corruptions"))


@dataclass
class PretrainResult:
    """What :func:`pretrain` returns: the saved model (eval mode), its config, the loss per epoch."""

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = "completed"
    folder: Path | None = None
    pretext_model: nn.Module | None = None
