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

The methods' networks and step losses are in :mod:`.pretrain_methods`; they run in the one
training loop (:func:`segtune.core.train.loop.run_epochs`) with the training engine's pieces:
samples and patches (:mod:`.data`, :mod:`.patches`, :mod:`.augment`), device choice, AdamW
with a cosine schedule, the progress and cancel protocol, atomic model folders. The folder is
rewritten after every epoch, so it is valid at every moment; cancelling keeps the last
finished epoch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.normalize import model_percentiles
from segtune.core.progress import CancelToken, ProgressCallback, Reporter
from segtune.core.train.loop import (
    EpochSummary,
    TorchSchedule,
    run_epochs,
    seed_everything,
    write_csv_log,
)
from segtune.core.train.pretrain_methods import (
    PRETEXT_WEIGHTS,
    build_networks,
    make_step_loss,
    output_model,
)
from segtune.core.train.pretrain_settings import (  # re-exported: pretrain()'s public names
    LOG_NAME,
    METHODS,
    PretrainConfig,
    PretrainResult,
)

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "PretrainConfig", "PretrainResult", "pretrain", "pretrain_files", "read_images"]

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
    normalized = np.stack(
        [percentile_normalize(c, normalization[0], normalization[1], clip=clip) for c in image]
    ).astype(np.float32)
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


# --- saving ---------------------------------------------------------------------------------------


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


# --- pretrain() and its phases ---------------------------------------------------------------------


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
    from segtune.core.device import select_device
    from segtune.core.train.patches import PatchSampler
    from segtune.core.train.pretext import n2n_pairs

    started = time.monotonic()
    config = copy.deepcopy(config) if config is not None else PretrainConfig()
    config.validate()
    method = config.method
    images = list(images)
    if not images:
        raise ValueError("no images to pretrain on")
    names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
    out_folder = Path(out) if out is not None else None
    if (
        out_folder is not None
        and out_folder.exists()
        and (not out_folder.is_dir() or any(out_folder.iterdir()))
        and not overwrite
    ):
        raise FileExistsError(f"model folder {out_folder} already exists; pass --overwrite to replace it")
    if method == "local-contrastive":
        if labels is None:
            raise ValueError("local-contrastive pretraining needs labels (--labels), one per image")
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} image(s) but {len(labels)} label image(s); give one label image per image")
    elif labels is not None:
        logger.warning("labels are only used by local-contrastive pretraining; %s ignores them", method)
    base_model, base_config = _resolve_start(config, from_model)
    samples = _prepare_samples(images, labels, names, config, ignore_value)
    in_channels = samples[0].image.shape[0]
    if base_model is not None and int(base_config["architecture"]["in_channels"]) != in_channels:
        raise ValueError(
            f"{from_model} takes {base_config['architecture']['in_channels']} channel(s), the images have {in_channels}"
        )

    # --- the batches, the networks, the optimiser ---
    seed_everything(config.seed)
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
        sampler = PatchSampler(
            samples,
            (config.patch, config.patch),
            spatial_dims=2,
            min_foreground=config.min_foreground if method == "local-contrastive" else 0.0,
            rng=rng,
        )
    unet, heads = build_networks(config, base_model, in_channels)
    networks = nn.ModuleDict({"unet": unet, **heads}).to(device)
    trainable = [p for p in networks.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_pixels = sum(int(np.prod(s.image.shape[1:])) for s in samples)
    steps_per_epoch = config.steps_per_epoch or max(8, math.ceil(total_pixels / (config.patch**2 * config.batch_size)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=total_steps, eta_min=config.learning_rate * 0.02
    )
    step_loss = make_step_loss(
        config, unet, heads, samples=samples, pairs=pairs, sampler=sampler, rng=rng, generator=generator, device=device
    )

    # --- the record, and the folder valid from the start ---
    training_record = _record(config, names, base_config, from_model, device, provenance)
    history: list[dict[str, Any]] = []

    def current_model() -> tuple[nn.Module, dict[str, Any]]:
        return output_model(config, unet, in_channels, training_record, base_config, from_model, history)

    def save(model: nn.Module, model_config: dict[str, Any]) -> None:
        if out_folder is not None:
            _save(out_folder, model, model_config, method, unet, heads, history)

    if out_folder is not None:
        save(*current_model())

    # --- the loop ---
    report = Reporter(progress, cancel, stage="pretrain", total=total_steps)
    deadline = started + config.max_minutes * 60 if config.max_minutes else None

    def begin_epoch() -> None:
        networks.train()
        if config.freeze_encoder and method == "local-contrastive":
            for module in unet.encoder_modules():
                module.eval()

    def after_step(epoch: int, step: int, global_step: int, mean_loss: float) -> bool:
        report.step(global_step, message=f"{method} epoch {epoch}/{config.epochs}", epoch=epoch, loss=mean_loss)
        return deadline is not None and time.monotonic() >= deadline

    def end_epoch(summary: EpochSummary) -> str | None:
        history.append(
            {
                "epoch": summary.epoch,
                "loss": summary.mean_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "steps": summary.steps,
                "seconds": time.monotonic() - summary.started,
            }
        )
        save(*current_model())
        return "time_budget" if summary.out_of_time else None

    def both(epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        loss = step_loss()
        return loss, loss

    # a cancel keeps the folder of the last finished epoch
    stop_reason, _ = run_epochs(
        range(1, config.epochs + 1),
        steps_per_epoch,
        optimizer,
        step_loss=both,
        after_step=after_step,
        end_epoch=end_epoch,
        begin_epoch=begin_epoch,
        schedule=TorchSchedule(scheduler),
        loss_name=method,
    )

    training_record.update(
        status="cancelled" if stop_reason == "cancelled" else "finished",
        stop_reason=stop_reason,
        epochs_run=len(history),
        seconds=round(time.monotonic() - started, 1),
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    model, model_config = current_model()
    if out_folder is not None and (history or stop_reason != "cancelled"):
        save(model, model_config)
    networks.eval()
    logger.info("%s pretraining stopped (%s) after %d epoch(s)", method, stop_reason, len(history))
    return PretrainResult(model, model_config, history, stop_reason, out_folder, pretext_model=networks)


def _resolve_start(
    config: PretrainConfig, from_model: str | os.PathLike | None
) -> tuple[nn.Module | None, dict[str, Any]]:
    """The starting model and its config; its architecture, head and normalisation become the
    run's (``config`` is updated)."""
    from segtune.core.models.store import load_model

    method = config.method
    base_config: dict[str, Any] = {}
    base_model: nn.Module | None = None
    if from_model is not None:
        base_model, base_config = load_model(from_model, device="cpu")
        if base_config.get("head") == "image" and method != "n2n":
            raise ValueError(f"{from_model} is a denoiser (an image head), not an encoder to start {method} from")
        arch = base_config["architecture"]
        config.depth, config.base_channels = (
            int(arch.get("depth", config.depth)),
            int(arch.get("base_channels", config.base_channels)),
        )
        config.norm, config.upsample = arch.get("norm", config.norm), arch.get("upsample", config.upsample)
        config.architecture = "unetpp" if arch.get("name") == "unetpp" else "unet"
        config.encoder = arch.get("encoder") if arch.get("name") == "resnet_unet" else None
        if config.head is None and base_config.get("head") in ("binary", "three_class", "semantic"):
            config.head = base_config["head"]
            if config.head == "semantic":
                config.n_classes = int(arch["out_channels"])
        stated = model_percentiles(base_config, default=None)
        if stated is not None:
            config.normalization, config.clip = stated[:2], stated[2]
        config.validate()
    elif method == "local-contrastive":
        logger.warning("local-contrastive pretraining without a global stage (--from): the encoder starts at random")
    if config.head is None:
        config.head = "three_class"
    return base_model, base_config


def _prepare_samples(
    images: list,
    labels: Sequence[np.ndarray] | None,
    names: list[str],
    config: PretrainConfig,
    ignore_value: int | None,
) -> list:
    """Normalised samples (labelled for the local stage), all with the same number of channels."""
    from segtune.core.train.data import make_sample

    if config.method == "local-contrastive":
        samples = [
            make_sample(
                image,
                np.asarray(lab),
                ignore_value=ignore_value,
                normalization=config.normalization,
                clip=config.clip,
                name=name,
            )
            for image, lab, name in zip(images, labels, names, strict=True)
        ]
    else:
        samples = [
            _unlabelled_sample(image, config.normalization, config.clip, name)
            for image, name in zip(images, names, strict=True)
        ]
    in_channels = samples[0].image.shape[0]
    for sample in samples[1:]:
        if sample.image.shape[0] != in_channels:
            raise ValueError(
                f"{sample.name} has {sample.image.shape[0]} channel(s) but {samples[0].name} has {in_channels}"
            )
    return samples


def _record(
    config: PretrainConfig,
    names: list[str],
    base_config: dict[str, Any],
    from_model: Any,
    device: torch.device,
    provenance: dict[str, Any] | None,
) -> dict[str, Any]:
    """The training record of the run (``config["training"]``)."""
    return {
        **(provenance or {}),
        "data": {
            "images": names,
            "pretext": config.method,
            **(
                {"labels": list(provenance.get("label_files", []))}
                if provenance and "label_files" in provenance
                else {}
            ),
        },
        "settings": config.to_dict(),
        "device": str(device),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": "running",
    }


def _save(
    folder: Path,
    model: nn.Module,
    model_config: dict[str, Any],
    method: str,
    unet: nn.Module,
    heads: dict[str, nn.Module],
    history: list[dict[str, Any]],
) -> None:
    """The model folder: the model, the pretext networks beside it, the log."""
    from segtune.core.models.store import save_model

    save_model(model, model_config, folder, overwrite=True)
    if method != "n2n":
        architectures = {"unet": unet.architecture, **{name: type(module).__name__ for name, module in heads.items()}}
        _save_pretext_weights(folder, {"unet": unet, **heads}, architectures)
    write_csv_log(folder / LOG_NAME, ("epoch", "loss", "lr", "steps", "seconds"), history, formats={"seconds": ".1f"})


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
            raise ValueError(
                f"{len(image_paths)} image file(s) but {len(label_paths)} label file(s); give one label file per image"
            )
        if len(images) != len(image_paths):
            raise ValueError("local-contrastive pretraining on files takes single time point images")
        labels = []
        for image, label_path in zip(images, label_paths, strict=True):
            label = read_labels(label_path)
            spatial = image.shape[1:] if image.shape[1] > 1 else image.shape[2:]
            if label.shape != spatial:
                raise ValueError(
                    f"labels {label_path} (shape {label.shape}) do not match the image (spatial shape {spatial})"
                )
            labels.append(label)
        images = [image if image.shape[1] > 1 else image[:, 0] for image in images]
        images = [image[0] if image.shape[0] == 1 else image for image in images]
        provenance["label_files"] = [str(p) for p in label_paths]
    return pretrain(
        images,
        config,
        labels=labels,
        names=names,
        from_model=from_model,
        out=out,
        overwrite=overwrite,
        ignore_value=ignore_value,
        provenance=provenance,
        progress=progress,
        cancel=cancel,
    )


def load_pretext_weights(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and architectures of a pretrained folder's ``pretext.safetensors`` (no pickle)."""
    from safetensors import safe_open

    path = Path(folder) / PRETEXT_WEIGHTS
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 -- safe_open has no iterator
    return tensors, json.loads(metadata.get("architectures", "{}"))
