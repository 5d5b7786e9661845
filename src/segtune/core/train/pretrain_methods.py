"""The pretraining methods: each one's networks and the loss of one step (used by
:func:`~segtune.core.train.pretrain.pretrain`).

``restore`` (corrupted image -> image, SSIM loss), ``simclr`` (NT-Xent between two views through
the encoder and a projection head), ``local-contrastive`` (a supervised contrastive loss on
per-pixel embeddings of the decoder) and ``n2n`` (one z-slice -> its neighbour, L2, residual).
:func:`build_networks` makes the U-Net (from a starting model or new) and the method's heads;
:func:`make_step_loss` returns the function the training loop calls for each step's loss;
:func:`output_model` turns the pretrained U-Net into the model that is saved, with its config.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.models.heads import out_channels
from segtune.core.train.loop import autocast

logger = logging.getLogger(__name__)

__all__ = [
    "PRETEXT_WEIGHTS",
    "build_networks",
    "description",
    "loss_name",
    "make_step_loss",
    "n2n_batch",
    "output_model",
    "segmentation_model",
]

PRETEXT_WEIGHTS = "pretext.safetensors"  # the pretext networks, beside the model


def build_networks(
    config: Any, base_model: nn.Module | None, in_channels: int
) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The U-Net the method trains (from ``base_model``'s architecture and encoder, or new) and
    the method's extra heads (SimCLR's projection head, the local stage's per-pixel head)."""
    from segtune.core.models.unet import UNet, build_model
    from segtune.core.train.contrastive import PixelProjectionHead, ProjectionHead
    from segtune.core.train.pretext import transfer_encoder

    method = config.method
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
        channels = image_out if method in ("restore", "n2n") else out_channels(config.head, config.n_classes)
        unet = build_model(config.new_architecture(in_channels, channels))
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
        heads["projection"] = ProjectionHead(
            config.base_channels * 2**config.depth, hidden=config.projection_dim, out_dim=config.projection_dim
        )
    elif method == "local-contrastive":
        heads["pixel_projection"] = PixelProjectionHead(config.base_channels, out_dim=config.pixel_projection_dim)
    return unet, heads


def make_step_loss(
    config: Any,
    unet: nn.Module,
    heads: dict[str, nn.Module],
    *,
    samples: list,
    pairs: list,
    sampler: Any,
    rng: np.random.Generator,
    generator: torch.Generator,
    device: torch.device,
) -> Callable[[], torch.Tensor]:
    """The loss of one step of the method: it draws a batch (patches from ``sampler``, or
    z-slice pairs for ``n2n``) and runs the networks on ``device``."""
    from segtune.core.train.augment import AugmentConfig
    from segtune.core.train.contrastive import (
        encode,
        local_supervised_contrastive_loss,
        nt_xent_loss,
        simclr_views,
        unet_features,
    )
    from segtune.core.train.pretext import corrupt, restoration_loss

    method, temperature = config.method, config.effective_temperature
    use_amp = device.type == "cuda"
    corruption = config.corruption_config()
    augmentation = AugmentConfig()

    def step_loss() -> torch.Tensor:
        if method == "n2n":
            x, y = n2n_batch(samples, pairs, config.patch, config.batch_size, rng)
            x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with autocast(device, use_amp):
                output = unet(x_t)
            # residual: the network learns the noise to take away, starting from the identity
            return torch.mean((x_t + output.float() - y_t) ** 2)
        if method == "local-contrastive":
            x, y, valid = sampler.batch(
                config.batch_size,
                head="semantic" if config.head == "semantic" else "binary",
                augmentation=augmentation,
                n_classes=config.n_classes,
            )
            x_t = torch.from_numpy(x).to(device)
            with autocast(device, use_amp):
                embeddings = heads["pixel_projection"](unet_features(unet, x_t))
            return local_supervised_contrastive_loss(
                embeddings.float(),
                torch.from_numpy(np.asarray(y, np.int64)).to(device),
                block_size=config.block_size,
                temperature=temperature,
                valid=torch.from_numpy(valid).to(device),
            )
        x, _, _ = sampler.batch(config.batch_size, head="binary", augmentation=None)
        x_t = torch.from_numpy(x)
        if method == "restore":
            corrupted, _ = corrupt(x_t, corruption, generator=generator)
            with autocast(device, use_amp):
                output = unet(corrupted.to(device))
            return restoration_loss(output.float(), x_t.to(device), config.restore_loss, l1_weight=config.l1_weight)
        view1, view2 = simclr_views(x_t, generator=generator)
        with autocast(device, use_amp):
            z1 = heads["projection"](encode(unet, view1.to(device)))
            z2 = heads["projection"](encode(unet, view2.to(device)))
        return nt_xent_loss(z1.float(), z2.float(), temperature=temperature)

    return step_loss


def output_model(
    config: Any,
    unet: nn.Module,
    in_channels: int,
    training_record: dict[str, Any],
    base_config: dict[str, Any],
    from_model: Any,
    history: list[dict[str, Any]],
) -> tuple[nn.Module, dict[str, Any]]:
    """The model to save (the denoiser, or a segmentation U-Net carrying the pretrained weights) and its config."""
    from segtune import __version__
    from segtune.core.models.store import default_config
    from segtune.core.normalize import percentile_spec

    method = config.method
    lineage = list(base_config.get("lineage", []))
    if from_model is not None:
        lineage.append(
            {
                "from": str(from_model),
                "training": base_config.get("training", {}).get("data"),
                "metrics": base_config.get("metrics", {}),
                "segtune_version": base_config.get("segtune_version"),
                "pretext": (base_config.get("pretext") or {}).get("method"),
            }
        )
    transfer = {"restore": "encoder", "simclr": "encoder", "local-contrastive": "encoder+decoder", "n2n": None}[method]
    pretext_record: dict[str, Any] = {"method": method, "transfer": transfer, "loss": loss_name(config), "history": []}
    if method == "n2n":
        pretext_record["residual"] = True  # the denoised image is input + network output
    if method != "n2n":
        pretext_record["weights"] = PRETEXT_WEIGHTS
    if method == "n2n":
        model = copy.deepcopy(unet).cpu()
        head = "image"
        classes = [f"channel_{c}" for c in range(in_channels)]
    else:
        model = segmentation_model(unet, config, with_decoder=method == "local-contrastive").cpu()
        head = config.head
        classes = None
    model_config = default_config(
        model.architecture,
        head=head,
        normalization=percentile_spec(*config.normalization, config.clip),
        tile_shape=[config.patch, config.patch],
        training=training_record,
        metrics={"pretext_loss": history[-1]["loss"]} if history else {},
        lineage=lineage,
        pretext={**pretext_record, "history": history},
        segtune_version=__version__,
    )
    if classes is not None:
        model_config["classes"] = classes
    model_config["description"] = description(method, config)
    return model.eval(), model_config


def segmentation_model(pretext_unet: nn.Module, config: Any, *, with_decoder: bool) -> nn.Module:
    """A fresh U-Net with the segmentation head and the pretext network's encoder (and decoder)."""
    from segtune.core.models.unet import build_model
    from segtune.core.train.pretext import transfer_encoder

    architecture = {**pretext_unet.architecture, "out_channels": out_channels(config.head, config.n_classes)}
    model = build_model(architecture)
    transfer_encoder(pretext_unet, model)
    if with_decoder:
        state = {k: v for k, v in pretext_unet.state_dict().items() if not k.startswith(("encoder.", "head."))}
        model.load_state_dict(state, strict=False)
    return model


def n2n_batch(samples, pairs, patch: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
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


def loss_name(config: Any) -> str:
    return {
        "restore": config.restore_loss,
        "simclr": f"nt-xent (temperature {config.effective_temperature})",
        "local-contrastive": (
            f"local supervised contrastive (block {config.block_size}, temperature {config.effective_temperature})"
        ),
        "n2n": "l2",
    }[config.method]


def description(method: str, config: Any) -> str:
    return {
        "restore": (
            f"U-Net encoder pretrained by restoring corrupted images ({', '.join(config.corruptions)}); "
            "fine-tune with segtune train --from"
        ),
        "simclr": "U-Net encoder pretrained with SimCLR (NT-Xent); start the local stage or fine-tune from it",
        "local-contrastive": (
            "U-Net pretrained with a local supervised contrastive loss; fine-tune with segtune train --from"
        ),
        "n2n": "Noise2Noise denoiser trained on adjacent z-slices; apply before segmenting",
    }[method]
