"""One run of :func:`~segtune.core.train.trainer.train`: set up, the loop's hooks, the finish.

:class:`TrainingRun` builds (or takes) the network, joins a torchrun process group when there is
one, sets up the optimiser, the patch sampler and the schedule, writes the record of how the model
came to be, restores a checkpoint, and scores the starting model on the held-out data. Its
:meth:`~TrainingRun.loop` runs :func:`segtune.core.train.loop.run_epochs` with the supervised
step (L2-SP when fine-tuning), the per-step progress and time budget, and the per-epoch
validation, best-weights, checkpoint and log; :meth:`~TrainingRun.finish` restores the best
weights, or the starting ones when fine-tuning did not beat them (``keep_if_worse``).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.models.heads import FIXED_CHANNELS, class_names, out_channels
from segtune.core.models.store import WEIGHTS_NAME, default_config, save_model
from segtune.core.models.unet import build_model, new_architecture
from segtune.core.normalize import percentile_spec
from segtune.core.progress import Cancelled, CancelToken, ProgressCallback, Reporter
from segtune.core.train import ddp
from segtune.core.train.checkpoint import restore_optimizer, restore_rng, save_checkpoint
from segtune.core.train.loop import (
    EpochSummary,
    WarmupCosine,
    autocast,
    json_safe,
    projected_steps,
    run_epochs,
    seed_everything,
    write_csv_log,
)
from segtune.core.train.losses import parse_loss
from segtune.core.train.patches import PatchSampler, normalize_patch_shape
from segtune.core.train.phases import Start, TrainingData
from segtune.core.train.settings import TrainConfig, TrainResult, auto_settings
from segtune.core.train.validation import instance_options, validate, worse

logger = logging.getLogger(__name__)

__all__ = ["LOG_NAME", "LOG_COLUMNS", "TrainingRun"]

LOG_NAME = "training_log.csv"
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_f1",
    "val_iou",
    "val_matched_f1",
    "val_pq",
    "val_objects",
    "lr",
    "steps",
    "seconds",
    "elapsed",
)


class TrainingRun:
    """One run of :func:`train` from the prepared model and data: the model, optimiser and sampler
    set up (or restored from the checkpoint), the record of how the model came to be, the loop's
    hooks (:func:`~segtune.core.train.loop.run_epochs`) and the finish (best or starting weights)."""

    def __init__(
        self,
        config: TrainConfig,
        start: Start,
        data: TrainingData,
        out_folder: Path | None,
        checkpoint: Any,
        *,
        started: float,
        provenance: dict[str, Any] | None,
        progress: ProgressCallback | None,
        cancel: CancelToken | None,
    ) -> None:
        from segtune.core.device import select_device

        self.out_folder, self.started, self.progress, self.cancel = out_folder, started, progress, cancel
        self.val_samples = data.val_samples
        head = config.head
        # --- model ---
        seed_everything(config.seed)
        self.fine_tuning = fine_tuning = _is_fine_tune(start, checkpoint)
        # a resumed run's settings are its checkpoint's; a setting one does not record predates it,
        # when fine-tunes too ran with the new-model default (AdamW, no L2-SP, BatchNorm trained)
        config = auto_settings(config, fine_tuning=fine_tuning and checkpoint is None, diameter=data.model_diameter)
        self.config = config
        model = start.model
        if model is None:
            model = build_model(
                new_architecture(
                    config.architecture,
                    encoder=config.encoder,
                    spatial_dims=config.spatial_dims,
                    in_channels=data.in_channels,
                    out_channels=out_channels(head, config.n_classes),
                    depth=config.depth,
                    base_channels=config.base_channels,
                    norm=config.norm,
                    dropout=config.dropout,
                    upsample=config.upsample,
                )
            )
        architecture = getattr(model, "architecture", None) or dict(start.base_config.get("architecture", {}))
        if int(architecture.get("in_channels", data.in_channels)) != data.in_channels:
            raise ValueError(
                f"the model takes {architecture.get('in_channels')} channel(s) but the images have {data.in_channels}"
            )
        # torchrun: join the process group and train on this rank's GPU (a single process: no-op)
        self.dist = dist = ddp.init_from_env(config.device)
        self.device = device = dist.device or select_device(config.device)
        model.to(device)
        self.model = model
        self.use_amp = bool(config.amp and device.type == "cuda")
        patch_shape = normalize_patch_shape(config.patch, config.spatial_dims)
        _check_batch_fits(patch_shape, config.batch_size, int(architecture.get("base_channels", 32)), device)
        self.requires_grad = [p.requires_grad for p in model.parameters()]
        if config.freeze_encoder:
            if not hasattr(model, "encoder_parameters"):
                raise ValueError("freeze_encoder needs a model with encoder_parameters() (a segtune UNet)")
            for parameter in model.encoder_parameters():
                parameter.requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # L2-SP anchors: the starting weights (a resumed run's come from its checkpoint)
        self.anchors = [(p, p.detach().clone()) for p in trainable] if config.l2sp else []
        self.train_model = ddp.wrap_model(model)  # DDP under torchrun: gradients averaged over processes
        self.optimizer = make_optimizer(config, trainable)
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.loss_fn = parse_loss(config.loss, head)
        self.rng = np.random.default_rng(ddp.rank_seed(config.seed))  # each process its own patches
        self.sampler = PatchSampler(
            data.train_samples,
            patch_shape,
            spatial_dims=config.spatial_dims,
            min_foreground=config.min_foreground,
            rng=self.rng,
            replay=data.replay_samples,  # loaded only when config.replay asks for them
            replay_fraction=config.replay,
        )
        train_pixels = sum(int(s.valid.sum()) for s in data.train_samples)
        patch_pixels = int(np.prod(patch_shape))
        steps_per_epoch = config.steps_per_epoch or max(
            16, math.ceil(train_pixels / (patch_pixels * config.batch_size))
        )
        self.steps_per_epoch = ddp.shard_steps(steps_per_epoch)  # N processes take N batches a step
        self.total_steps = self.steps_per_epoch * config.epochs
        self.monitor, self.larger_is_better = _monitor_name(config, bool(data.val_samples))
        self.plateau = None
        if config.schedule == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max" if self.larger_is_better else "min", factor=0.5, patience=3
            )
        self.training_record, self.model_config = _record(
            config, start, data, architecture, patch_shape, self.monitor, device, dist, provenance, fine_tuning
        )
        self.instance_options = instance_options(head, start.base_config, data.model_diameter)
        # --- state, possibly restored ---
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.first_epoch, self.global_step = 1, 0
        self.elapsed_before = 0.0
        self.created_folder = False  # a folder this run made (removed again if no epoch completes)
        if checkpoint is not None:
            self._restore(*checkpoint)
        elif out_folder is not None and dist.is_main:
            # the folder is a loadable model from the very start (the starting weights)
            self.created_folder = not (out_folder.is_dir() and any(out_folder.iterdir()))
            save_model(model, self.model_config, out_folder, overwrite=True)
        self.initial_state = _state_copy(model) if checkpoint is None else self._saved_start(checkpoint[0])
        # the starting model's score on the same held-out data: what fine-tuning has to beat
        self.baseline: dict[str, Any] = {}
        if checkpoint is not None:
            self.baseline = checkpoint[1].get("baseline") or {}
        elif fine_tuning and self.val_samples:
            self.baseline = json_safe(ddp.on_main(self.validate_now))
        if self.baseline:
            self.training_record["baseline"] = self.baseline
        # the budget is the whole run's: a resumed run has what its earlier part left
        budget = config.max_minutes * 60.0 if config.max_minutes else None
        self.budget, self.deadline = budget, (started + budget - self.elapsed_before if budget else None)
        # under torchrun rank 0 reports, and a cancel is shared at each step so that every process stops alike
        self.report = Reporter(
            progress if dist.is_main else None, None if dist.active else cancel, stage="train", total=self.total_steps
        )
        self.last_validation_seconds = 0.0

    def _saved_start(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """A resumed fine-tune's starting weights from its checkpoint (None in older checkpoints),
        also made its L2-SP anchors again."""
        start = {k[len("start/") :]: v for k, v in tensors.items() if k.startswith("start/")}
        if not start:
            return None
        names = {id(parameter): name for name, parameter in self.model.named_parameters()}
        for parameter, anchor in self.anchors:
            anchor.copy_(start[names[id(parameter)]])
        return start

    def _restore(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        """Continue exactly where the checkpoint's epoch left off."""
        model, config, dist = self.model, self.config, self.dist
        model.load_state_dict({k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")})
        model.to(self.device)
        restore_optimizer(self.optimizer, tensors, header)
        if self.plateau is not None and header.get("plateau"):
            self.plateau.load_state_dict(header["plateau"])
        if self.scaler is not None and header.get("scaler"):
            self.scaler.load_state_dict(header["scaler"])
        restore_rng(tensors, header, self.rng)
        if dist.rank:  # the checkpoint holds rank 0's generator; other processes draw their own patches
            self.rng.bit_generator.state = np.random.default_rng(
                [config.seed, dist.rank, int(header["epoch"])]
            ).bit_generator.state
        self.history = header["history"]
        self.best_value, self.best_epoch, self.bad_epochs = (
            header["best_value"],
            header["best_epoch"],
            header["bad_epochs"],
        )
        self.first_epoch, self.global_step = header["epoch"] + 1, header["global_step"]
        self.elapsed_before = float(header.get("elapsed", 0.0))
        self.training_record["started"] = header.get("started", self.training_record["started"])
        self.training_record["resumed"] = [
            *header.get("resumed", []),
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        ]
        if self.best_epoch is not None and (self.out_folder / WEIGHTS_NAME).is_file():
            from safetensors.torch import load_file

            self.best_state = load_file(str(self.out_folder / WEIGHTS_NAME), device="cpu")
        logger.info("resuming %s after epoch %d", self.out_folder, header["epoch"])

    def validate_now(self) -> dict[str, float]:
        config = self.config
        return validate(
            self.model,
            self.val_samples,
            head=config.head,
            n_classes=config.n_classes,
            loss_fn=self.loss_fn,
            device=self.device,
            spatial_dims=config.spatial_dims,
            amp=self.use_amp,
            instance_options=self.instance_options,
        )

    def elapsed(self) -> float:
        """Seconds trained, those before a resume included."""
        return self.elapsed_before + time.monotonic() - self.started

    # --- the loop and its hooks ---

    def loop(self) -> str:
        config = self.config
        schedule = None
        if config.schedule == "cosine":
            schedule = WarmupCosine(
                self.optimizer,
                config.learning_rate,
                self.total_steps,
                self.elapsed,
                self.budget,
            )
        stop_reason, self.global_step = run_epochs(
            range(self.first_epoch, config.epochs + 1),
            self.steps_per_epoch,
            self.optimizer,
            begin_epoch=self.begin_epoch,
            step_loss=self.step_loss,
            after_step=self.after_step,
            end_epoch=self.end_epoch,
            schedule=schedule,
            scaler=self.scaler,
            global_step=self.global_step,
        )
        return stop_reason

    def begin_epoch(self) -> None:
        self.model.train()
        if self.config.freeze_norm:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.config.freeze_encoder:
            for module in self.model.encoder_modules():
                module.eval()  # keep the frozen encoder's normalisation statistics too

    def step_loss(self, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        config, device = self.config, self.device
        x, y, valid = self.sampler.batch(
            config.batch_size, head=config.head, augmentation=config.augmentation, n_classes=config.n_classes
        )
        x_t = torch.from_numpy(x).to(device, non_blocking=True)
        y_t = torch.from_numpy(y).to(device, non_blocking=True)
        valid_t = torch.from_numpy(valid).to(device, non_blocking=True)
        with autocast(device, self.use_amp):
            logits = self.train_model(x_t)
        loss = self.loss_fn(logits.float(), y_t, valid_t)
        total = loss
        if self.anchors:
            total = loss + config.l2sp * sum(((p - a) ** 2).sum() for p, a in self.anchors)
        return loss, total

    def after_step(self, epoch: int, step: int, global_step: int, mean_loss: float) -> bool:
        self.report.step(
            global_step,
            total=projected_steps(global_step, self.total_steps, self.elapsed(), self.budget),
            message=f"epoch {epoch}",
            epoch=epoch,
            step=step + 1,
            steps_per_epoch=self.steps_per_epoch,
            loss=mean_loss,
            lr=self.optimizer.param_groups[0]["lr"],
        )
        late = (
            self.deadline is not None and time.monotonic() + self.last_validation_seconds * 1.2 + 1.0 >= self.deadline
        )
        if self.dist.active:  # one small collective a step: every process stops at the same step
            if ddp.any_rank(self.cancel is not None and self.cancel.cancelled):
                raise Cancelled
            late = ddp.any_rank(late)
        return late

    def end_epoch(self, summary: EpochSummary) -> str | None:
        """Validate, keep the best weights, step the plateau schedule, save the checkpoint and
        the log; the reason to stop, if any."""
        epoch, model, config = summary.epoch, self.model, self.config
        self.global_step = summary.global_step
        validation_start = time.monotonic()
        ddp.sync_buffers(model)  # rank 0's normalisation statistics everywhere: one model
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": ddp.all_reduce_mean(summary.mean_loss)}
        if self.val_samples:  # validated by rank 0, the result shared: every process decides alike
            entry.update(ddp.on_main(self.validate_now))
        self.last_validation_seconds = time.monotonic() - validation_start
        entry.update(
            lr=self.optimizer.param_groups[0]["lr"],
            steps=summary.steps,
            seconds=time.monotonic() - summary.started,
            elapsed=self.elapsed(),
        )
        self.history.append(json_safe(entry))
        value = entry.get(self.monitor)
        improved = (
            value is not None
            and math.isfinite(value)
            and (
                self.best_value is None
                or (value > self.best_value if self.larger_is_better else value < self.best_value)
            )
        )
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = float(value), epoch, 0
            self.best_state = _state_copy(model)
            self.save_best(self.history[-1])
        else:
            self.bad_epochs += 1
        if self.plateau is not None and value is not None and math.isfinite(value):
            self.plateau.step(value)
        if self.out_folder is not None and self.dist.is_main:
            save_checkpoint(
                self.out_folder,
                model,
                self.optimizer,
                self.scaler,
                self.checkpoint_state(epoch),
                self.rng,
                # a fine-tune's starting weights: what L2-SP pulls toward and keep_if_worse falls back to
                start_state=self.initial_state if (self.anchors or self.baseline) else None,
            )
            _write_log(self.out_folder, self.history)
        if self.progress is not None:
            self.report.child("validate", total=config.epochs).step(epoch, message=f"epoch {epoch}", **self.history[-1])
        if summary.out_of_time:
            return "time_budget"
        if config.patience and self.bad_epochs >= config.patience:
            return "early_stopping"
        if ddp.any_rank(self.deadline is not None and time.monotonic() >= self.deadline):
            return "time_budget"
        return None

    def save_best(self, metrics: dict[str, Any]) -> None:
        if self.out_folder is None or not self.dist.is_main:
            return
        self.model_config["metrics"] = json_safe(metrics)
        save_model(self.model, self.model_config, self.out_folder, overwrite=True)

    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "train_config": self.config.to_dict(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "elapsed": self.elapsed(),
            "started": self.training_record["started"],
            "resumed": self.training_record.get("resumed", []),
            "baseline": self.baseline,
        }

    # --- the end ---

    def finish(self, stop_reason: str) -> TrainResult:
        """The best weights (or the starting ones, when fine-tuning did not beat them) into the
        model, the record closed, the folder saved."""
        model, history, best_epoch, baseline = self.model, self.history, self.best_epoch, self.baseline
        for parameter, flag in zip(model.parameters(), self.requires_grad, strict=True):
            parameter.requires_grad_(flag)  # the caller's module leaves as it came (frozen or not)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        elif stop_reason == "cancelled" and self.initial_state is not None:
            model.load_state_dict(self.initial_state)  # nothing validated yet: keep the starting weights
        best_metrics = next((h for h in history if h["epoch"] == best_epoch), {}) if best_epoch is not None else {}
        kept_start = bool(
            self.config.keep_if_worse
            and baseline
            and self.initial_state is not None
            and best_metrics
            and worse(best_metrics, baseline)
        )
        if kept_start:
            # fine-tuning made the held-out score worse: the starting model stays, and says so
            model.load_state_dict(self.initial_state)
            self.training_record["kept_start"] = True
            logger.info("fine-tuning did not beat the starting model on the held-out data; keeping the starting model")
        model.eval()
        self.training_record.update(
            status="finished" if stop_reason != "cancelled" else "cancelled",
            stop_reason=stop_reason,
            best_epoch=best_epoch,
            epochs_run=len(history),
            seconds=round(self.elapsed(), 1),
            finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        model_config = self.model_config
        model_config["metrics"] = json_safe(baseline if kept_start else best_metrics)
        if self.out_folder is not None and self.dist.is_main:
            save_model(model, model_config, self.out_folder, overwrite=True)
            if history:
                _write_log(self.out_folder, history)
        logger.info("training stopped (%s) after %d epoch(s); best epoch %s", stop_reason, len(history), best_epoch)
        ddp.release()  # leave a process group this call joined
        return TrainResult(
            model,
            model_config,
            history,
            best_metrics,
            best_epoch,
            stop_reason,
            self.out_folder,
            baseline_metrics=baseline,
            kept_start=kept_start,
        )


# config entries a fine-tuned (or resumed) model keeps from the model it started from: its description,
# and prediction settings that training does not decide (a bundled nuclei model's distance-peak split
# of touching objects: dropping it made every fine-tuned nuclei-2d merge touching nuclei again; whether
# its objects are darker than the background, which the automatic diameter is estimated on)
INHERITED_KEYS = ("description", "split_instances", "dark_objects")


def _is_fine_tune(start: Start, checkpoint: Any) -> bool:
    """Whether this run trains on from a starting model, also when it resumes one that did: the
    interrupted run's own record says so (``training.fine_tuned``; older records do not, but their
    checkpoint holds the starting weights or their lineage names a starting model)."""
    if checkpoint is None:
        return start.model is not None
    recorded = start.base_config.get("training", {}).get("fine_tuned")
    if recorded is not None:
        return bool(recorded)
    return any(key.startswith("start/") for key in checkpoint[0]) or bool(start.base_config.get("lineage"))


def _record(
    config: TrainConfig,
    start: Start,
    data: TrainingData,
    architecture: dict[str, Any],
    patch_shape: tuple[int, ...],
    monitor: str,
    device: torch.device,
    dist: Any,
    provenance: dict[str, Any] | None,
    fine_tuning: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record of how this model came to be, and the model's config that carries it."""
    from segtune import __version__

    head, base_config, model_diameter, scale = config.head, start.base_config, data.model_diameter, data.scale
    classes = (
        list(FIXED_CHANNELS[head])
        if head in FIXED_CHANNELS
        else (base_config.get("classes") or class_names(head, out_channels(head, config.n_classes)))
    )
    lineage = list(base_config.get("lineage", []))
    if start.resumed_config is None and (start.base_name is not None or base_config):
        lineage.append(
            {
                "from": start.base_name,
                "training": base_config.get("training", {}).get("data"),
                "metrics": base_config.get("metrics", {}),
                "segtune_version": base_config.get("segtune_version"),
            }
        )
    training_record: dict[str, Any] = {
        **(provenance or {}),
        "data": {
            "images": data.names,
            "train": [s.name for s in data.train_samples],
            "validation": [s.name for s in data.val_samples],
            **(
                {"replay": {"file": str(data.replay_path), "crops": len(data.replay_samples), "share": config.replay}}
                if data.replay_samples
                else {}
            ),
        },
        "settings": config.to_dict(),
        "monitor": monitor,
        "fine_tuned": fine_tuning,
        "device": str(device),
        **({"processes": dist.world_size} if dist.active else {}),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }
    model_config = default_config(
        architecture,
        head=head,
        classes=classes,
        normalization=percentile_spec(config.normalization[0], config.normalization[1], config.clip),
        tile_shape=list(patch_shape),
        # a starting model that sees images at their own scale (EM membranes) keeps doing so
        object_diameter=round(model_diameter, 3)
        if model_diameter and (scale != 1.0 or not fine_tuning or base_config.get("object_diameter"))
        else None,
        input_scale=scale,
        # trained on images zoomed to an object size: prediction must zoom new images to it too
        # (segtune predict --diameter auto estimates their diameter when this is set), also when
        # the median image happened to need no zoom
        auto_diameter=bool(model_diameter and (scale != 1.0 or (config.scale is None and config.object_diameter))),
        training=training_record,
        metrics={},
        lineage=lineage,
        segtune_version=__version__,
    )
    for key in INHERITED_KEYS:  # how the starting model is described and predicts stays as it was
        if key in base_config:
            model_config[key] = base_config[key]
    return training_record, model_config


def make_optimizer(config: TrainConfig, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` names (filled by :func:`auto_settings`)."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _monitor_name(config: TrainConfig, has_validation: bool) -> tuple[str, bool]:
    """The metric deciding the best epoch and whether larger is better."""
    if not has_validation:
        return "train_loss", False
    name = "val_loss" if config.monitor == "auto" else config.monitor
    return name, name != "val_loss"


def _write_log(folder: Path, history: list[dict[str, Any]]) -> None:
    write_csv_log(folder / LOG_NAME, LOG_COLUMNS, history)


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
