"""Training settings and results: :class:`TrainConfig`, :func:`auto_settings` (the defaults that need no thought),
:class:`TrainResult`."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from segtune.core.models.unet import new_architecture
from segtune.core.train.augment import AugmentConfig
from segtune.core.train.data import HEADS
from segtune.core.train.losses import parse_loss
from segtune.core.train.patches import normalize_patch_shape

__all__ = [
    "FINETUNE_L2SP",
    "FINETUNE_LEARNING_RATE",
    "FINETUNE_OPTIMIZER",
    "NEW_LEARNING_RATE",
    "NEW_MAX_DIAMETER",
    "NEW_OPTIMIZER",
    "OPTIMIZERS",
    "TrainConfig",
    "TrainResult",
    "auto_settings",
    "settings_from_dict",
]

# defaults that need no thought (see auto_settings); fine-tuning moves a trained model gently.
# Fine-tuning uses SGD: Adam's first steps move every weight by about the learning rate whatever
# its gradient, so a trained model taught one image it already segments well changed everywhere
# (README, *Fine-tuning*); SGD's steps follow the gradient, small where there is little to learn.
OPTIMIZERS = ("adamw", "sgd")
FINETUNE_OPTIMIZER = "sgd"
FINETUNE_LEARNING_RATE = 3e-3
FINETUNE_L2SP = 1e-3
NEW_OPTIMIZER = "adamw"
NEW_LEARNING_RATE = 2e-3
NEW_MAX_DIAMETER = 32.0


def settings_from_dict(cls: type, values: dict[str, Any], what: str, tuples: tuple[str, ...] = ()) -> Any:
    """A settings dataclass ``cls`` rebuilt from its JSON form: unknown keys refused (naming
    ``what`` settings they are), the lists of ``tuples`` made tuples again."""
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {', '.join(sorted(known))}")
    values = dict(values)
    for key in tuples:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return cls(**values)


@dataclass
class TrainConfig:
    """Everything that decides how a model trains (recorded in the model's config).

    Attributes
    ----------
    spatial_dims
        2 (2D patches, also taken from single planes of stacks) or 3 (3D patches).
    head
        ``"binary"``, ``"three_class"`` (background/interior/boundary, separates touching
        objects; the default for a new model), ``"semantic"`` or ``"multilabel"`` (non-exclusive
        classes, given as bit flags in the labels). None: the starting model's.
    n_classes
        Number of classes of a semantic head.
    patch
        Training patch size (an int for a square/cube, or one size per axis). None: chosen
        from the object size the model sees (:func:`auto_settings`).
    batch_size, epochs, steps_per_epoch
        Patches per step (None: :func:`auto_settings`), epochs, and steps per epoch (None:
        enough to cover the training pixels about once, at least 16).
    loss
        A loss spec for :func:`segtune.core.train.losses.parse_loss`, e.g. ``"bce+dice"``.
    optimizer
        ``"adamw"`` or ``"sgd"`` (Nesterov momentum 0.9). None: ``FINETUNE_OPTIMIZER`` (SGD)
        when fine-tuning, ``NEW_OPTIMIZER`` (AdamW) for a new model.
    learning_rate, weight_decay
        The optimiser's settings (learning rate None: ``NEW_LEARNING_RATE`` for a new model,
        ``FINETUNE_LEARNING_RATE`` when fine-tuning). The two optimisers' learning rates are
        not comparable: SGD's step scales with the gradient, AdamW's hardly.
    schedule
        ``"cosine"`` (with a short warm-up, annealed over the epochs or, with ``max_minutes``,
        over the time budget, whichever ends first), ``"plateau"`` (halve when the monitor
        stalls for 3 epochs) or ``"none"``.
    val_fraction
        Fraction of the images (or of the single image's area) held out for validation.
    patience
        Early stopping after this many epochs without improvement (None or 0: never).
    monitor
        ``"val_loss"``, ``"val_f1"`` (pixel F1), ``"val_iou"`` or ``"val_matched_f1"`` (instances
        matched at IoU 0.5); ``"auto"`` is the validation loss, the smoothest signal when only an
        image or two validate (the instance F1 of one image jumps between epochs and would pick
        an early, worse model). Every metric is recorded whichever decides.
    min_foreground
        Crops with less labelled foreground than this fraction are skipped (the seeds' 3 %).
    normalization, clip
        Percentiles mapped to 0 and 1 (None: the starting model's, else 1-99.8); ``clip``
        clips to [0, 1] (``(5, 98)`` with ``clip=True`` is the seeds' contrast stretch).
    object_diameter
        Rescale each image so that its objects are this many pixels across (their median
        diameter measured from its labels); recorded as the model's ``object_diameter`` so that
        prediction rescales new images the same way. None: a fine-tuned model's own; for a new
        2D instance model, objects larger than ``NEW_MAX_DIAMETER`` pixels are shrunk to it
        (more context per patch, faster), smaller ones are left as they are.
    scale
        A fixed Y/X resize factor instead of ``object_diameter``.
    augmentation
        The augmentation settings.
    architecture, encoder
        The network of a new model: ``"unet"`` or ``"unetpp"``; ``encoder`` ``"resnet18"``,
        ``"resnet34"`` or ``"resnet50"`` gives a U-Net with that ResNet encoder (see
        :func:`~segtune.core.models.unet.new_architecture`).
    depth, base_channels, norm, dropout, upsample
        The architecture of a new model (see :class:`~segtune.core.models.unet.UNet`).
    freeze_encoder
        Train only the decoder (fine-tuning on few labels).
    freeze_norm
        Keep the normalisation layers' running statistics as they are (BatchNorm in eval mode;
        their scale and shift still learn). None: on when fine-tuning, where statistics
        re-estimated from a few patches of one image would shift every feature of the model.
    l2sp
        Weight of the L2-SP penalty ``sum ||w - w_start||^2`` that keeps a fine-tuned model near
        its starting weights (forgetting less of what it knew). None: ``FINETUNE_L2SP`` when
        fine-tuning, else 0.
    keep_if_worse
        When fine-tuning with a held-out set: if the best epoch scores a lower held-out matched
        F1 (or, without instances, a higher loss) than the starting model did on the same
        held-out data, return and save the starting model instead (``TrainResult.kept_start``).
    replay
        When fine-tuning a model whose folder (or an ancestor's, by its lineage) ships a replay
        set of general training crops (:mod:`segtune.core.train.replay`), the fraction of the
        training patches drawn from it (e.g. 0.5), meant to make a model taught one image keep
        what it knew. 0 (the default): off; on this project's measurements it did not make
        one-image fine-tuning of nuclei-2d lose less (README, *Fine-tuning*).
    max_minutes
        A time budget: training stops when it is spent, keeping the best model.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cuda"``, ``"mps"`` or ``"cpu"``.
    amp
        Mixed precision on CUDA.
    seed
        Seeds Python, NumPy and torch (and the train/validation split).
    ignore_value
        A label value that marks pixels the loss ignores (e.g. 255 from pseudo-labelling).
    """

    spatial_dims: int = 2
    head: str | None = None
    n_classes: int | None = None
    patch: int | tuple[int, ...] | None = None
    batch_size: int | None = None
    epochs: int = 100
    steps_per_epoch: int | None = None
    loss: str = "bce+dice"
    optimizer: str | None = None
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    val_fraction: float = 0.2
    patience: int | None = 10
    monitor: str = "auto"
    min_foreground: float = 0.03
    normalization: tuple[float, float] | None = None
    clip: bool = False
    object_diameter: float | None = None
    scale: float | None = None
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    architecture: str = "unet"
    encoder: str | None = None
    depth: int = 4
    base_channels: int = 16
    norm: str = "batch"
    dropout: float = 0.0
    upsample: str = "transpose"
    freeze_encoder: bool = False
    freeze_norm: bool | None = None
    l2sp: float | None = None
    keep_if_worse: bool = True
    replay: float = 0.0
    max_minutes: float | None = None
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    ignore_value: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings."""
        values = asdict(self)
        values["augmentation"] = self.augmentation.to_dict()
        if isinstance(self.patch, tuple):
            values["patch"] = list(self.patch)
        if self.normalization is not None:
            values["normalization"] = list(self.normalization)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are refused."""
        if isinstance(values.get("augmentation"), dict):
            values = {**values, "augmentation": AugmentConfig.from_dict(values["augmentation"])}
        return settings_from_dict(cls, values, "training", tuples=("patch", "normalization"))

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.head is not None and self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.head in ("semantic", "multilabel") and (self.n_classes is None or self.n_classes < 2):
            raise ValueError(f"a {self.head} head needs n_classes >= 2, got {self.n_classes}")
        if self.patch is not None:
            normalize_patch_shape(self.patch, self.spatial_dims)
        for name in ("batch_size", "epochs"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.schedule not in ("cosine", "plateau", "none"):
            raise ValueError(f"schedule must be 'cosine', 'plateau' or 'none', got {self.schedule!r}")
        if self.monitor not in ("auto", "val_f1", "val_iou", "val_matched_f1", "val_loss"):
            raise ValueError(f"monitor must be auto, val_f1, val_iou, val_matched_f1 or val_loss, got {self.monitor!r}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be {' or '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.object_diameter is not None and not self.object_diameter > 0:
            raise ValueError(f"object_diameter must be positive, got {self.object_diameter}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.object_diameter is not None and self.scale is not None:
            raise ValueError("give object_diameter or scale, not both")
        parse_loss(self.loss, self.head or "binary")
        new_architecture(
            self.architecture,
            encoder=self.encoder,
            spatial_dims=self.spatial_dims,
            depth=self.depth,
            base_channels=self.base_channels,
            norm=self.norm,
            dropout=self.dropout,
            upsample=self.upsample,
        )


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes
    ----------
    model
        The network with the best weights (eval mode).
    config
        The model config (as saved in ``folder/config.json`` when there is a folder).
    history
        One dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_f1``, ``val_iou``,
        ``val_matched_f1``, ``lr``, ``steps``, ``seconds``, ``elapsed``.
    best_metrics
        The history entry of the best epoch (empty when no epoch finished).
    best_epoch
        Its epoch number (1-based), or None.
    stop_reason
        ``"completed"``, ``"early_stopping"``, ``"time_budget"`` or ``"cancelled"``.
    folder
        The model folder, or None when training in memory only.
    baseline_metrics
        The starting model's validation metrics on the same held-out data, measured before
        the first step (fine-tuning only; empty otherwise).
    kept_start
        True when fine-tuning did not beat the starting model on the held-out data and the
        starting model was kept (``TrainConfig.keep_if_worse``).
    """

    model: nn.Module
    config: dict[str, Any]
    history: list[dict[str, Any]]
    best_metrics: dict[str, Any]
    best_epoch: int | None
    stop_reason: str
    folder: Path | None = None
    baseline_metrics: dict[str, Any] = field(default_factory=dict)
    kept_start: bool = False


def auto_settings(config: TrainConfig, *, fine_tuning: bool, diameter: float | None) -> TrainConfig:
    """Fill the settings left as None from what is being trained and the object size the model
    sees (``diameter``, after rescaling), so that defaults work without thought:

    - patch: 2D about five object diameters, a multiple of 16 within 128-256 (256 when the size
      is unknown); 3D 32 x 96 x 96.
    - batch: 8 patches of up to 160 px in 2D, else 4 (2 in 3D).
    - optimiser and learning rate: SGD at ``FINETUNE_LEARNING_RATE`` when fine-tuning, else
      AdamW at ``NEW_LEARNING_RATE``.
    - frozen normalisation statistics and L2-SP when fine-tuning (see :class:`TrainConfig`).

    Returns a copy; values already set are kept.
    """
    config = copy.deepcopy(config)
    if config.patch is None:
        if config.spatial_dims == 3:
            config.patch = (32, 96, 96)
        elif diameter:
            config.patch = int(np.clip(16 * round(5 * diameter / 16), 128, 256))
        else:
            config.patch = 256
    if config.batch_size is None:
        side = max(normalize_patch_shape(config.patch, config.spatial_dims))
        config.batch_size = 2 if config.spatial_dims == 3 else (8 if side <= 160 else 4)
    if config.optimizer is None:
        config.optimizer = FINETUNE_OPTIMIZER if fine_tuning else NEW_OPTIMIZER
    if config.learning_rate is None:
        config.learning_rate = FINETUNE_LEARNING_RATE if fine_tuning else NEW_LEARNING_RATE
    if config.freeze_norm is None:
        config.freeze_norm = fine_tuning
    if config.l2sp is None:
        config.l2sp = FINETUNE_L2SP if fine_tuning else 0.0
    return config
