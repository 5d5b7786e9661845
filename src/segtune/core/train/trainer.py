"""Training and fine-tuning a U-Net: the loop, validation, early stopping, checkpoints, resume, time budget.

The one entry point is :func:`train`, which takes arrays in memory (the napari widget passes
layer data) and returns a :class:`TrainResult`; :func:`train_files` reads image and label
files first (the ``segtune train`` command). With ``out`` the model folder is written as it
trains and is loadable at every moment, even after ``kill -9``:

``out/config.json``, ``out/weights.safetensors``
    the best model so far (by the validation monitor), rewritten atomically when it improves;
    the untrained (or starting) model until the first validation.
``out/training_log.csv``
    one row per epoch: losses, validation metrics, learning rate, time.
``out/checkpoint/last.safetensors``
    everything needed to continue exactly where the last finished epoch left off (current
    weights, optimizer moments, random states, history; no pickle: tensors plus a JSON
    header), rewritten atomically after every epoch. ``resume=True`` picks it up.

Training stops when the epochs are done, when the monitored metric has not improved for
``patience`` epochs (early stopping), when ``max_minutes`` runs out, or when the cancel token
is set; in every case the best weights are restored into the returned model and saved.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.metrics import as_labels
from segtune.core.models.store import (
    WEIGHTS_NAME,
    atomic_write_bytes,
    atomic_write_text,
    default_config,
    save_model,
)
from segtune.core.models.unet import build_model, new_architecture
from segtune.core.normalize import check_pixels
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter
from segtune.core.train import ddp
from segtune.core.train.augment import AugmentConfig
from segtune.core.train.data import HEADS, make_sample, make_targets, split_samples
from segtune.core.train.losses import parse_loss
from segtune.core.train.patches import PatchSampler, normalize_patch_shape

logger = logging.getLogger(__name__)

__all__ = ["STOP_REASONS", "TrainConfig", "TrainResult", "auto_settings", "held_out_summary", "train", "train_files"]

STOP_REASONS = ("completed", "early_stopping", "time_budget", "cancelled")
# defaults that need no thought (see auto_settings); fine-tuning moves a trained model gently
FINETUNE_L2SP = 1e-3
FINETUNE_LEARNING_RATE = 3e-4
NEW_LEARNING_RATE = 2e-3
NEW_MAX_DIAMETER = 32.0
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_NAME = "last.safetensors"
LOG_NAME = "training_log.csv"
_LOG_COLUMNS = ("epoch", "train_loss", "val_loss", "val_f1", "val_iou", "val_matched_f1", "val_objects", "lr", "steps", "seconds", "elapsed")


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
    learning_rate, weight_decay
        AdamW settings (learning rate None: ``NEW_LEARNING_RATE`` for a new model,
        ``FINETUNE_LEARNING_RATE`` when fine-tuning).
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
        Rescale images so that their objects are this many pixels across (their median
        diameter measured from the labels); recorded as the model's ``object_diameter`` so that
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
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        values = dict(values)
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = AugmentConfig.from_dict(values["augmentation"])
        if isinstance(values.get("patch"), list):
            values["patch"] = tuple(values["patch"])
        if isinstance(values.get("normalization"), list):
            values["normalization"] = tuple(values["normalization"])
        return cls(**values)

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
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.object_diameter is not None and not self.object_diameter > 0:
            raise ValueError(f"object_diameter must be positive, got {self.object_diameter}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"scale must be positive, got {self.scale}")
        if self.object_diameter is not None and self.scale is not None:
            raise ValueError("give object_diameter or scale, not both")
        parse_loss(self.loss, self.head or "binary")
        new_architecture(self.architecture, encoder=self.encoder, spatial_dims=self.spatial_dims, depth=self.depth,
                         base_channels=self.base_channels, norm=self.norm, dropout=self.dropout, upsample=self.upsample)


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


# --- helpers ---------------------------------------------------------------------------------


def auto_settings(config: TrainConfig, *, fine_tuning: bool, diameter: float | None) -> TrainConfig:
    """Fill the settings left as None from what is being trained and the object size the model
    sees (``diameter``, after rescaling), so that defaults work without thought:

    - patch: 2D about five object diameters, a multiple of 16 within 128-256 (256 when the size
      is unknown); 3D 32 x 96 x 96.
    - batch: 8 patches of up to 160 px in 2D, else 4 (2 in 3D).
    - learning rate: ``FINETUNE_LEARNING_RATE`` when fine-tuning, else ``NEW_LEARNING_RATE``.
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
    if config.learning_rate is None:
        config.learning_rate = FINETUNE_LEARNING_RATE if fine_tuning else NEW_LEARNING_RATE
    if config.freeze_norm is None:
        config.freeze_norm = fine_tuning
    if config.l2sp is None:
        config.l2sp = FINETUNE_L2SP if fine_tuning else 0.0
    return config


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- third-party code may still use the legacy RNG
    torch.manual_seed(seed)


def _out_channels(head: str, n_classes: int | None) -> int:
    return {"binary": 1, "three_class": 3}.get(head, n_classes or 2)


def _head_of(out_channels: int) -> str:
    return "binary" if out_channels == 1 else "three_class" if out_channels == 3 else "semantic"


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _instance_options(head: str, model_config: dict[str, Any], diameter: float | None) -> dict[str, Any]:
    """How validation turns probabilities into instances: as prediction does for this model
    (distance-peak split when its config asks for it, seeds and smallest object from its object
    size), so that the held-out score is the one the user will get."""
    from segtune.core.postprocess import default_min_size, default_seed_distance

    return {
        "split": bool(model_config.get("split_instances", False)),
        "min_distance": default_seed_distance(diameter, head),
        "min_size": default_min_size(diameter, 2),
    }


def _instances(probabilities: np.ndarray, head: str, options: dict[str, Any] | None = None) -> np.ndarray | None:
    """Instance labels for validation: a seeded watershed (three_class) or components (binary)."""
    from segtune.core.postprocess import postprocess

    if head not in ("binary", "three_class"):
        return None
    return postprocess(probabilities, head, instances=True, **(options or {"min_size": 4}))


def _worse(metrics: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """Whether ``metrics`` score below ``baseline`` on the held-out data: by matched F1 where
    both have one and it differs, else by validation loss."""
    for key, larger_is_better in (("val_matched_f1", True), ("val_loss", False)):
        value, reference = metrics.get(key), baseline.get(key)
        if isinstance(value, float) and isinstance(reference, float) and math.isfinite(value) and math.isfinite(reference) \
                and value != reference:
            return value < reference if larger_is_better else value > reference
    return False


@torch.no_grad()
def _forward(model: nn.Module, image: np.ndarray, device: torch.device, spatial_dims: int, amp: bool, tile: int = 1024) -> torch.Tensor:
    """Logits ``(K, *S)`` for one ``(C, *S)`` image; large 2D images go through in overlapping tiles."""
    x = torch.from_numpy(np.ascontiguousarray(image))
    spatial = x.shape[1:]
    margin = 64
    if spatial_dims == 3 or max(spatial) <= tile:
        with _autocast(device, amp):
            return model(x[None].to(device)).float()[0].cpu()
    out = None
    step = tile - 2 * margin
    for y0 in range(0, spatial[0], step):
        for x0 in range(0, spatial[1], step):
            ys, xs = max(0, y0 - margin), max(0, x0 - margin)
            ye, xe = min(spatial[0], y0 + step + margin), min(spatial[1], x0 + step + margin)
            with _autocast(device, amp):
                logits = model(x[None, :, ys:ye, xs:xe].to(device)).float()[0].cpu()
            if out is None:
                out = torch.zeros((logits.shape[0], *spatial))
            out[:, y0 : min(y0 + step, spatial[0]), x0 : min(x0 + step, spatial[1])] = logits[
                :, y0 - ys : y0 - ys + min(step, spatial[0] - y0), x0 - xs : x0 - xs + min(step, spatial[1] - x0)
            ]
    return out


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def _validate(model, samples, *, head, n_classes, loss_fn, device, spatial_dims, amp, instance_options=None) -> dict[str, float]:
    """Loss, pixel F1/IoU of the foreground, and instance F1 at IoU 0.5 over the validation samples."""
    from segtune.core.metrics import matched_metrics

    model.eval()
    losses, weights = [], []
    tp = fp = fn = 0
    matched: list[float] = []
    objects = 0
    for sample in samples:
        planes = range(sample.labels.shape[0]) if spatial_dims == 2 else [None]
        for z in planes:
            image = sample.image[:, z] if z is not None else sample.image
            labels = sample.labels[z] if z is not None else sample.labels
            valid = sample.valid[z] if z is not None else sample.valid
            logits = _forward(model, image, device, spatial_dims, amp)
            target = torch.from_numpy(make_targets(labels, head, n_classes=n_classes))[None]
            valid_t = torch.from_numpy(valid)[None]
            if valid.any():
                losses.append(float(loss_fn(logits[None], target, valid_t)))
                weights.append(float(valid.sum()))
            if head in ("binary", "multilabel"):
                probabilities = torch.sigmoid(logits).numpy()
                predicted_fg = (probabilities > 0.5).any(0)
            else:
                probabilities = torch.softmax(logits, 0).numpy()
                predicted_fg = probabilities.argmax(0) > 0
            truth_fg = labels > 0
            tp += int(np.count_nonzero(predicted_fg & truth_fg & valid))
            fp += int(np.count_nonzero(predicted_fg & ~truth_fg & valid))
            fn += int(np.count_nonzero(~predicted_fg & truth_fg & valid))
            instances = _instances(probabilities, head, instance_options)
            if instances is not None:
                truth = labels * valid  # ignored pixels count as background on both sides
                scores = matched_metrics(instances * valid, truth, thresholds=(0.5,))
                matched.append(scores["f1_at_0.5"])
                objects += int(scores["n_truth"])
    metrics = {
        "val_loss": float(np.average(losses, weights=weights)) if losses else float("nan"),
        "val_f1": 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0,
        "val_iou": tp / (tp + fp + fn) if (tp + fp + fn) else 1.0,
    }
    metrics["val_matched_f1"] = float(np.mean(matched)) if matched else float("nan")
    metrics["val_objects"] = objects
    return metrics


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


def _write_log(folder: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_LOG_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row[k])) for k in _LOG_COLUMNS})
    atomic_write_text(folder / LOG_NAME, buffer.getvalue())


# --- checkpoints ------------------------------------------------------------------------------


def _save_checkpoint(folder: Path, model: nn.Module, optimizer, scaler, state: dict[str, Any], rng: np.random.Generator) -> None:
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {f"model/{k}": v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                opt_scalars.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = cuda_state
    python_state = random.getstate()
    header = {
        **state,
        "optimizer_param_groups": opt_state["param_groups"],
        "optimizer_scalars": opt_scalars,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "numpy_rng": rng.bit_generator.state,
        "python_rng": [python_state[0], list(python_state[1]), python_state[2]],
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    data = save(tensors, metadata={"format": "segtune-checkpoint", "state": json.dumps(_json_safe(header))})
    (folder / CHECKPOINT_DIR).mkdir(exist_ok=True)
    atomic_write_bytes(folder / CHECKPOINT_DIR / CHECKPOINT_NAME, data)


def _load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    path = folder / CHECKPOINT_DIR / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {path} to resume from (a run killed before its first epoch ended leaves none); "
            f"start again without resume (and with overwrite)"
        )
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 -- safe_open has no iterator
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a valid checkpoint: {e}") from e
    if metadata.get("format") != "segtune-checkpoint" or "state" not in metadata:
        raise ValueError(f"{path} is not a segtune checkpoint")
    return tensors, json.loads(metadata["state"])


def _restore_optimizer(optimizer, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in header.get("optimizer_scalars", {}).items():
        state.setdefault(int(index), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": header["optimizer_param_groups"]})


def _restore_rng(tensors: dict[str, torch.Tensor], header: dict[str, Any], rng: np.random.Generator) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    rng.bit_generator.state = header["numpy_rng"]
    version, internal, gauss = header["python_rng"]
    random.setstate((version, tuple(internal), gauss))


# --- the loop ---------------------------------------------------------------------------------


def _lr_factor(config: TrainConfig, step: int, total_steps: int, elapsed: float, budget: float | None) -> float:
    """Learning-rate multiplier of the cosine schedule: warm-up, then annealing over steps or time."""
    if config.schedule != "cosine":
        return 1.0
    warmup = min(20, max(1, total_steps // 20))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if budget:
        progress = max(progress, elapsed / budget)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _projected_steps(done: int, total: int, elapsed: float, budget: float | None) -> int:
    """The steps training will have run when it stops: all of them, or with a time budget as many
    as fit in it at the pace so far (so a progress bar's end and time left mean the budget)."""
    if not budget or elapsed <= 0 or done < 1:
        return total
    return int(min(total, max(done, round(done * budget / elapsed))))


def _monitor_name(config: TrainConfig, has_validation: bool) -> tuple[str, bool]:
    """The metric deciding the best epoch and whether larger is better."""
    if not has_validation:
        return "train_loss", False
    name = "val_loss" if config.monitor == "auto" else config.monitor
    return name, name != "val_loss"


def train(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    masks: Sequence[np.ndarray | None] | None = None,
    names: Sequence[str] | None = None,
    validation: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
    model: nn.Module | str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    provenance: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train a new U-Net, or fine-tune one, on images and labels held in memory.

    Parameters
    ----------
    images
        One array per image: ``(Y, X)`` or ``(Z, Y, X)``, optionally with a channel axis first
        or last (matched against the labels' shape).
    labels
        One integer array per image, of the image's spatial shape: a binary mask, instance
        ids, or class indices for a semantic head.
    config
        The training settings (:class:`TrainConfig`; defaults when None).
    masks
        Optional per-image arrays: pixels where the mask is 0 are ignored by the loss.
    names
        Names of the images (for messages, the split record and the model's provenance).
    validation
        Optional ``(images, labels)`` held out by the caller: they alone validate (rescaled and
        normalised like the training images) and ``val_fraction`` is not applied.
    model
        None for a new model; a module, a ``(module, config)`` pair, a bundled model name or a
        model folder to fine-tune. A starting model's head, normalisation and object diameter
        are kept: training images are zoomed to the object size it predicts at.
    out
        The model folder to write while training (see the module docstring); None keeps the
        model in memory only.
    overwrite
        Allow ``out`` to exist already (its model is replaced).
    resume
        Continue from ``out/checkpoint/`` (same data and settings; ``epochs`` and
        ``max_minutes`` may be raised).
    provenance
        Extra facts to record under ``config["training"]`` (the command line, file names).
    progress, cancel
        Progress callback and cancel token (:mod:`segtune.core.progress`). Progress events:
        stage ``"train"`` per step (metrics ``epoch``, ``step``, ``loss``, ``lr``) and stage
        ``"validate"`` per epoch (the epoch's history entry). Cancelling stops at the next step
        and returns with ``stop_reason == "cancelled"``, the best model saved.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        Mismatched image/label shapes or counts, labels without any foreground, bad settings,
        or a starting model that does not fit the data.
    FileExistsError
        ``out`` exists and neither ``overwrite`` nor ``resume`` is given.
    FileNotFoundError
        ``resume`` without a checkpoint in ``out``.

    Examples
    --------
    >>> result = train([image], [labels], TrainConfig(epochs=5, patch=128), out="my_model")  # doctest: +SKIP
    >>> result.stop_reason, result.best_metrics["val_matched_f1"]                               # doctest: +SKIP
    ('completed', 0.91)
    """
    from segtune import __version__
    from segtune.core.device import select_device
    from segtune.core.diameter import labels_diameter
    from segtune.core.models.store import load_model

    started = time.monotonic()
    config = copy.deepcopy(config) if config is not None else TrainConfig()
    config.validate()
    images, labels = list(images), list(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s); give one label image per image")
    if not images:
        raise ValueError("no training images given")
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise ValueError(f"{len(masks)} mask(s) for {len(images)} image(s)")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    out_folder = Path(out) if out is not None else None
    if resume and out_folder is None:
        raise ValueError("resume needs the model folder (out) that holds the checkpoint")
    checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    if out_folder is not None:
        if resume:
            checkpoint = _load_checkpoint(out_folder)
        elif out_folder.exists() and not out_folder.is_dir():
            raise FileExistsError(f"{out_folder} is an existing file, not a model folder; choose another name for the model")
        elif out_folder.exists() and any(out_folder.iterdir()) and not overwrite:
            raise FileExistsError(f"model folder {out_folder} already exists; pass --overwrite to replace it or --resume to continue it")
    if checkpoint is not None:
        saved = TrainConfig.from_dict(checkpoint[1]["train_config"])
        # the data pipeline and the model must be those of the interrupted run; budgets may change
        config = TrainConfig.from_dict({**saved.to_dict(), "epochs": config.epochs, "max_minutes": config.max_minutes,
                                        "patience": config.patience, "device": config.device})

    # --- the starting model decides the input pipeline of a fine-tuned one ---
    base_config: dict[str, Any] = {}
    base_name = None
    resumed_config: dict[str, Any] | None = None
    if checkpoint is not None:
        from segtune.core.models.store import read_config

        # the interrupted run's own folder says what the network is and where it came from
        resumed_config = read_config(out_folder)
        if model is not None:
            logger.warning("resuming %s: its checkpoint replaces the starting model given", out_folder)
        model = build_model(resumed_config["architecture"])
        base_config = resumed_config
    if isinstance(model, (str, os.PathLike)):
        base_name = str(model)
        model, base_config = load_model(model, device="cpu")
    elif isinstance(model, tuple) and len(model) == 2 and isinstance(model[1], dict):
        model, base_config = model[0], dict(model[1])  # a module with its config (the widget's model)
        base_name = base_config.get("name")
    if model is not None and not isinstance(model, nn.Module):
        raise ValueError(f"model must be None, a torch module, a (module, config) pair, a bundled model name or a folder, "
                         f"got {type(model).__name__}")
    if model is not None:
        architecture = getattr(model, "architecture", None) or base_config.get("architecture", {})
        model_head = base_config.get("head") or _head_of(int(architecture.get("out_channels", 1)))
        if config.head is not None and config.head != model_head:
            raise ValueError(f"the starting model has a {model_head} head; it cannot be trained as {config.head}")
        config.head = model_head
        if architecture.get("spatial_dims", config.spatial_dims) != config.spatial_dims:
            raise ValueError(f"the starting model is {architecture.get('spatial_dims')}D but spatial_dims={config.spatial_dims}")
        if model_head in ("semantic", "multilabel"):
            config.n_classes = int(architecture.get("out_channels", config.n_classes or 2))
        base_norm = base_config.get("normalization") or {}
        if config.normalization is None and "low" in base_norm:
            config.normalization = (float(base_norm["low"]), float(base_norm["high"]))
            config.clip = bool(base_norm.get("clip", False))
        if config.object_diameter is None and config.scale is None and base_config.get("object_diameter"):
            config.object_diameter = float(base_config["object_diameter"])
    head = config.head or "three_class"
    config.head = head
    normalization = config.normalization or (1.0, 99.8)
    config.normalization = tuple(normalization)
    parse_loss(config.loss, head)

    # --- data ---
    label_arrays = [np.asarray(lab) for lab in labels]
    for image, lab, name in zip(images, label_arrays, names, strict=True):
        check_pixels(image, source=name)  # NaN or inf would make the loss NaN at the first step
        try:
            as_labels(lab, "labels")
        except ValueError as e:
            raise ValueError(f"the labels of {name}: {e}") from None
    if not any(np.any(lab != 0) if config.ignore_value is None else np.any((lab != 0) & (lab != config.ignore_value)) for lab in label_arrays):
        raise ValueError(f"the labels are empty: none of the {len(label_arrays)} label image(s) has a labelled pixel")
    data_diameter = None
    if head not in ("semantic", "multilabel"):
        diameters = [labels_diameter(np.where(lab == config.ignore_value, 0, lab) if config.ignore_value is not None else lab) for lab in label_arrays]
        diameters = [d for d in diameters if np.isfinite(d)]
        data_diameter = float(np.median(diameters)) if diameters else None
    if (model is None and checkpoint is None and config.object_diameter is None and config.scale is None
            and config.spatial_dims == 2 and head != "semantic" and data_diameter and data_diameter > NEW_MAX_DIAMETER):
        config.object_diameter = NEW_MAX_DIAMETER
    scale = 1.0
    if config.scale is not None:
        scale = float(config.scale)
    elif config.object_diameter is not None and data_diameter:
        scale = float(config.object_diameter) / data_diameter
    samples = [
        make_sample(image, lab, mask=mask, ignore_value=config.ignore_value, normalization=normalization,
                    clip=config.clip, scale=scale, name=name)
        for image, lab, mask, name in zip(images, label_arrays, masks, names, strict=True)
    ]
    in_channels = samples[0].image.shape[0]
    for sample in samples[1:]:
        if sample.image.shape[0] != in_channels:
            raise ValueError(f"{sample.name} has {sample.image.shape[0]} channel(s) but {samples[0].name} has {in_channels}")
    if validation is not None:
        train_samples = samples
        val_samples = [
            make_sample(image, np.asarray(lab), ignore_value=config.ignore_value, normalization=normalization,
                        clip=config.clip, scale=scale, name=f"validation {i}")
            for i, (image, lab) in enumerate(zip(*validation, strict=True))
        ]
    else:
        train_samples, val_samples = split_samples(samples, config.val_fraction, seed=config.seed)
    model_diameter = data_diameter * scale if data_diameter else None

    # --- model ---
    _seed_everything(config.seed)
    fine_tuning = model is not None and checkpoint is None
    config = auto_settings(config, fine_tuning=fine_tuning, diameter=model_diameter)
    if model is None:
        model = build_model(new_architecture(
            config.architecture, encoder=config.encoder, spatial_dims=config.spatial_dims, in_channels=in_channels,
            out_channels=_out_channels(head, config.n_classes), depth=config.depth, base_channels=config.base_channels,
            norm=config.norm, dropout=config.dropout, upsample=config.upsample))
    architecture = getattr(model, "architecture", None) or dict(base_config.get("architecture", {}))
    if int(architecture.get("in_channels", in_channels)) != in_channels:
        raise ValueError(f"the model takes {architecture.get('in_channels')} channel(s) but the images have {in_channels}")
    # torchrun: join the process group and train on this rank's GPU (a single process: no-op)
    dist = ddp.init_from_env(config.device)
    device = dist.device or select_device(config.device)
    model.to(device)
    use_amp = bool(config.amp and device.type == "cuda")
    patch_shape = normalize_patch_shape(config.patch, config.spatial_dims)
    _check_batch_fits(patch_shape, config.batch_size, int(architecture.get("base_channels", 32)), device)
    requires_grad = [p.requires_grad for p in model.parameters()]
    if config.freeze_encoder:
        if not hasattr(model, "encoder_parameters"):
            raise ValueError("freeze_encoder needs a model with encoder_parameters() (a segtune UNet)")
        for parameter in model.encoder_parameters():
            parameter.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # L2-SP anchors: the starting weights (a resumed run anchors to where it resumed)
    anchors = [(p, p.detach().clone()) for p in trainable] if config.l2sp else []
    train_model = ddp.wrap_model(model)  # DDP under torchrun: gradients averaged over processes
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    loss_fn = parse_loss(config.loss, head)
    rng = np.random.default_rng(ddp.rank_seed(config.seed))  # each process its own patches
    sampler = PatchSampler(train_samples, patch_shape, spatial_dims=config.spatial_dims,
                           min_foreground=config.min_foreground, rng=rng)
    train_pixels = sum(int(s.valid.sum()) for s in train_samples)
    patch_pixels = int(np.prod(patch_shape))
    steps_per_epoch = config.steps_per_epoch or max(16, math.ceil(train_pixels / (patch_pixels * config.batch_size)))
    steps_per_epoch = ddp.shard_steps(steps_per_epoch)  # N processes take N batches a step
    total_steps = steps_per_epoch * config.epochs
    monitor, larger_is_better = _monitor_name(config, bool(val_samples))
    plateau = None
    if config.schedule == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if larger_is_better else "min", factor=0.5, patience=3)

    # --- the record of how this model came to be ---
    classes = {"binary": ["background", "foreground"], "three_class": ["background", "interior", "boundary"]}.get(
        head, base_config.get("classes") or [f"class_{i}" for i in range(_out_channels(head, config.n_classes))]
    )
    lineage = list(base_config.get("lineage", []))
    if resumed_config is None and (base_name is not None or base_config):
        lineage.append({"from": base_name, "training": base_config.get("training", {}).get("data"),
                        "metrics": base_config.get("metrics", {}), "segtune_version": base_config.get("segtune_version")})
    training_record: dict[str, Any] = {
        **(provenance or {}),
        "data": {"images": names, "train": [s.name for s in train_samples], "validation": [s.name for s in val_samples]},
        "settings": config.to_dict(),
        "monitor": monitor,
        "device": str(device),
        **({"processes": dist.world_size} if dist.active else {}),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    model_config = default_config(
        architecture, head=head, classes=classes,
        normalization={"method": "percentile", "low": float(normalization[0]), "high": float(normalization[1]), "clip": bool(config.clip)},
        tile_shape=list(patch_shape),
        # a starting model that sees images at their own scale (EM membranes) keeps doing so
        object_diameter=round(model_diameter, 3) if model_diameter and (scale != 1.0 or not fine_tuning
                                                                         or base_config.get("object_diameter")) else None,
        input_scale=scale,
        # trained on rescaled images: prediction must zoom new images to this object size too
        # (segtune predict --diameter auto estimates their diameter when this is set)
        auto_diameter=bool(scale != 1.0 and model_diameter),
        training=training_record, metrics={}, lineage=lineage, segtune_version=__version__,
    )
    if "description" in base_config:
        model_config["description"] = base_config["description"]

    # --- state, possibly restored ---
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs = 0
    first_epoch = 1
    global_step = 0
    elapsed_before = 0.0
    created_folder = False  # a folder this run made (removed again if no epoch completes)
    if checkpoint is not None:
        tensors, header = checkpoint
        model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
        model.to(device)
        _restore_optimizer(optimizer, tensors, header)
        if plateau is not None and header.get("plateau"):
            plateau.load_state_dict(header["plateau"])
        if scaler is not None and header.get("scaler"):
            scaler.load_state_dict(header["scaler"])
        _restore_rng(tensors, header, rng)
        if dist.rank:  # the checkpoint holds rank 0's generator; other processes draw their own patches
            rng.bit_generator.state = np.random.default_rng([config.seed, dist.rank, int(header['epoch'])]).bit_generator.state
        history = header["history"]
        best_value, best_epoch, bad_epochs = header["best_value"], header["best_epoch"], header["bad_epochs"]
        first_epoch, global_step = header["epoch"] + 1, header["global_step"]
        elapsed_before = float(header.get("elapsed", 0.0))
        training_record["started"] = header.get("started", training_record["started"])
        training_record["resumed"] = [*header.get("resumed", []), datetime.now(timezone.utc).isoformat(timespec="seconds")]
        if best_epoch is not None and (out_folder / WEIGHTS_NAME).is_file():
            from safetensors.torch import load_file

            best_state = load_file(str(out_folder / WEIGHTS_NAME), device="cpu")
        logger.info("resuming %s after epoch %d", out_folder, header["epoch"])
    elif out_folder is not None and dist.is_main:
        # the folder is a loadable model from the very start (the starting weights)
        created_folder = not (out_folder.is_dir() and any(out_folder.iterdir()))
        save_model(model, model_config, out_folder, overwrite=True)
    initial_state = _state_copy(model) if checkpoint is None else None
    instance_options = _instance_options(head, base_config, model_diameter)

    def validate_now() -> dict[str, float]:
        return _validate(model, val_samples, head=head, n_classes=config.n_classes, loss_fn=loss_fn, device=device,
                         spatial_dims=config.spatial_dims, amp=use_amp, instance_options=instance_options)

    # the starting model's score on the same held-out data: what fine-tuning has to beat
    baseline: dict[str, Any] = {}
    if fine_tuning and val_samples:
        baseline = _json_safe(ddp.on_main(validate_now))
        training_record["baseline"] = baseline
    elif checkpoint is not None:
        baseline = checkpoint[1].get("baseline") or {}

    budget = config.max_minutes * 60.0 if config.max_minutes else None
    deadline = started + budget if budget else None
    # under torchrun rank 0 reports, and a cancel is shared at each step so that every process stops alike
    report = Reporter(progress if dist.is_main else None, None if dist.active else cancel, stage="train", total=total_steps)
    stop_reason = "completed"
    last_validation_seconds = 0.0

    def save_best(metrics: dict[str, Any]) -> None:
        if out_folder is None or not dist.is_main:
            return
        model_config["metrics"] = _json_safe(metrics)
        save_model(model, model_config, out_folder, overwrite=True)

    def finish_record(reason: str) -> None:
        training_record.update(
            status="finished" if reason != "cancelled" else "cancelled",
            stop_reason=reason, best_epoch=best_epoch, epochs_run=len(history),
            seconds=round(elapsed_before + time.monotonic() - started, 1),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )

    def checkpoint_state(epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "global_step": global_step, "history": history, "best_value": best_value,
            "best_epoch": best_epoch, "bad_epochs": bad_epochs, "train_config": config.to_dict(),
            "plateau": plateau.state_dict() if plateau is not None else None,
            "elapsed": elapsed_before + time.monotonic() - started, "started": training_record["started"],
            "resumed": training_record.get("resumed", []), "baseline": baseline,
        }

    epoch = first_epoch - 1
    try:
        if first_epoch > config.epochs:
            stop_reason = "completed"
        for epoch in range(first_epoch, config.epochs + 1):
            epoch_start = time.monotonic()
            model.train()
            if config.freeze_norm:
                for module in model.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
            if config.freeze_encoder:
                for module in model.encoder_modules():
                    module.eval()  # keep the frozen encoder's normalisation statistics too
            running, steps_done, out_of_time = 0.0, 0, False
            for step in range(steps_per_epoch):
                factor = _lr_factor(config, global_step, total_steps, elapsed_before + time.monotonic() - started,
                                    (elapsed_before + budget) if budget else None)
                if config.schedule == "cosine":
                    for group in optimizer.param_groups:
                        group["lr"] = config.learning_rate * factor
                x, y, valid = sampler.batch(config.batch_size, head=head, augmentation=config.augmentation, n_classes=config.n_classes)
                x_t = torch.from_numpy(x).to(device, non_blocking=True)
                y_t = torch.from_numpy(y).to(device, non_blocking=True)
                valid_t = torch.from_numpy(valid).to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with _autocast(device, use_amp):
                    logits = train_model(x_t)
                loss = loss_fn(logits.float(), y_t, valid_t)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the training loss became {loss.item()} at epoch {epoch}, step {step + 1}; lower the learning rate")
                total = loss
                if anchors:
                    total = loss + config.l2sp * sum(((p - a) ** 2).sum() for p, a in anchors)
                if scaler is not None:
                    scaler.scale(total).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    total.backward()
                    optimizer.step()
                global_step += 1
                steps_done += 1
                running += float(loss.detach())
                report.step(global_step, total=_projected_steps(global_step, total_steps, time.monotonic() - started, budget),
                            message=f"epoch {epoch}", epoch=epoch, step=step + 1, steps_per_epoch=steps_per_epoch,
                            loss=running / steps_done, lr=optimizer.param_groups[0]["lr"])
                late = deadline is not None and time.monotonic() + last_validation_seconds * 1.2 + 1.0 >= deadline
                if dist.active:  # one small collective a step: every process stops at the same step
                    if ddp.any_rank(cancel is not None and cancel.cancelled):
                        raise Cancelled
                    late = ddp.any_rank(late)
                if late:
                    out_of_time = True
                    break
            validation_start = time.monotonic()
            ddp.sync_buffers(model)  # rank 0's normalisation statistics everywhere: one model
            entry: dict[str, Any] = {"epoch": epoch, "train_loss": ddp.all_reduce_mean(running / max(1, steps_done))}
            if val_samples:  # validated by rank 0, the result shared: every process decides alike
                entry.update(ddp.on_main(validate_now))
            last_validation_seconds = time.monotonic() - validation_start
            entry.update(lr=optimizer.param_groups[0]["lr"], steps=steps_done, seconds=time.monotonic() - epoch_start,
                         elapsed=elapsed_before + time.monotonic() - started)
            history.append(_json_safe(entry))
            value = entry.get(monitor)
            improved = value is not None and math.isfinite(value) and (
                best_value is None or (value > best_value if larger_is_better else value < best_value)
            )
            if improved:
                best_value, best_epoch, bad_epochs = float(value), epoch, 0
                best_state = _state_copy(model)
                save_best(history[-1])
            else:
                bad_epochs += 1
            if plateau is not None and value is not None and math.isfinite(value):
                plateau.step(value)
            if out_folder is not None and dist.is_main:
                _save_checkpoint(out_folder, model, optimizer, scaler, checkpoint_state(epoch), rng)
                _write_log(out_folder, history)
            if progress is not None:
                report.child("validate", total=config.epochs).step(epoch, message=f"epoch {epoch}", **history[-1])
            if out_of_time:
                stop_reason = "time_budget"
                break
            if config.patience and bad_epochs >= config.patience:
                stop_reason = "early_stopping"
                break
            if ddp.any_rank(deadline is not None and time.monotonic() >= deadline):
                stop_reason = "time_budget"
                break
    except Cancelled:
        # the checkpoint of the last finished epoch stays as it is: resume repeats this epoch
        stop_reason = "cancelled"
    except BaseException:
        if created_folder and not history:  # a folder no epoch completed would only block a rerun
            shutil.rmtree(out_folder, ignore_errors=True)
        raise

    for parameter, flag in zip(model.parameters(), requires_grad, strict=True):
        parameter.requires_grad_(flag)  # the caller's module leaves as it came (frozen or not)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif stop_reason == "cancelled" and initial_state is not None:
        model.load_state_dict(initial_state)  # nothing validated yet: keep the starting weights
    best_metrics = next((h for h in history if h["epoch"] == best_epoch), {}) if best_epoch is not None else {}
    kept_start = bool(config.keep_if_worse and baseline and initial_state is not None and best_metrics
                      and _worse(best_metrics, baseline))
    if kept_start:
        # fine-tuning made the held-out score worse: the starting model stays, and says so
        model.load_state_dict(initial_state)
        training_record["kept_start"] = True
        logger.info("fine-tuning did not beat the starting model on the held-out data; keeping the starting model")
    model.eval()
    finish_record(stop_reason)
    model_config["metrics"] = _json_safe(baseline if kept_start else best_metrics)
    if out_folder is not None and dist.is_main:
        save_model(model, model_config, out_folder, overwrite=True)
        if history:
            _write_log(out_folder, history)
    logger.info("training stopped (%s) after %d epoch(s); best epoch %s", stop_reason, len(history), best_epoch)
    ddp.release()  # leave a process group this call joined
    return TrainResult(model, model_config, history, best_metrics, best_epoch, stop_reason, out_folder,
                       baseline_metrics=baseline, kept_start=kept_start)


# float32 values a U-Net keeps per input pixel and base channel for the backward pass (the
# full-resolution encoder and decoder maps; the coarser levels add about as much again). A lower
# bound: a batch that needs more than this is sure not to fit.
_ACTIVATIONS_PER_PIXEL_AND_CHANNEL = 16


def _check_batch_fits(patch_shape: tuple[int, ...], batch_size: int, base_channels: int, device: torch.device) -> None:
    """Refuse a patch and batch size whose activations cannot fit before allocating anything."""
    from segtune.core.device import available_memory

    needed = 4.0 * batch_size * math.prod(patch_shape) * base_channels * _ACTIVATIONS_PER_PIXEL_AND_CHANNEL
    available = available_memory(device)
    if needed > available:
        raise ValueError(
            f"--patch {' '.join(map(str, patch_shape))} with --batch-size {batch_size} needs at least "
            f"{needed / 1e9:.1f} GB for one training step, more than the {available / 1e9:.1f} GB free on {device}; "
            "use a smaller patch or batch size"
        )


def train_files(
    image_paths: Sequence[str | os.PathLike],
    label_paths: Sequence[str | os.PathLike],
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    command: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """:func:`train` on image and label files (any format :func:`segtune.core.io.open_image` reads).

    Images and labels are paired in the order given. The paths and the command line are
    recorded in the model's config.
    """
    from segtune.core.train.data import load_pairs

    images, labels, names = load_pairs(image_paths, label_paths)
    provenance = {"label_files": [str(p) for p in label_paths]}
    if command is not None:
        provenance["command"] = command
    return train(images, labels, config, names=names, model=model, out=out, overwrite=overwrite, resume=resume,
                 provenance=provenance, progress=progress, cancel=cancel)


def held_out_summary(result: TrainResult) -> str:
    """The line a person reads after training: the held-out score of the starting model and of
    the trained one (on images or a region training never saw, at the scale the model predicts
    at), and whether the starting model was kept."""
    best, base = result.best_metrics, result.baseline_metrics
    key = next((k for k in ("val_matched_f1", "val_f1") if isinstance(best.get(k), float) and math.isfinite(best[k])), None)
    if key is None:
        return "held-out score: none (no held-out data; give more images or a larger held-out fraction)"
    name = "matched F1 at IoU 0.5" if key == "val_matched_f1" else "pixel F1"
    objects = best.get("val_objects")
    where = f"held-out data, {objects} objects, not trained on" if objects else "held-out data, not trained on"
    if not base or not isinstance(base.get(key), float):
        return f"held-out {name} {best[key]:.3f} ({where})"
    line = f"held-out {name} {base[key]:.3f} -> {best[key]:.3f} (starting model -> trained, {where})"
    if result.kept_start:
        line += "; that is worse, so the starting model was kept"
    return line


def read_log(folder: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a model folder's ``training_log.csv``."""
    with open(Path(folder) / LOG_NAME, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))

