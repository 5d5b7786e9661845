"""The ResNet-encoder U-Net and UNet++ (2D and 3D), from MONAI, with segtune's model interface.

Both networks come from MONAI (``FlexibleUNet`` with MONAI's own ResNet backbones, and
``BasicUNetPlusPlus``), which needs neither torchvision nor timm and downloads nothing: they
start from random weights or from our own pretraining (``segtune pretrain --method restore``).
segmentation-models-pytorch was the first choice for the 2D ResNet U-Net, but it needs timm,
which needs torchvision, and pip would replace this project's torch build to install them.

Each class adds what the rest of segtune relies on, exactly as :class:`~.unet.UNet` has it:

``architecture``
    a JSON-able dict that :func:`~.unet.build_model` turns back into the same network, so a
    model folder (``config.json`` + ``weights.safetensors``) loads without pickle;
``encoder``, ``encoder_parameters()``, ``encoder_modules()``
    what ``--freeze-encoder`` freezes and what restoration pretraining transfers;
``head``
    the last convolution (restoration pretraining starts it at zero);
``size_multiple`` and any input size
    inputs are padded by reflection to a multiple of the network's total downsampling and the
    output is cropped back, so the output has the input's spatial shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from monai.networks.nets import BasicUNetPlusPlus, FlexibleUNet
from torch import nn

from segtune.core.models.unet import check_input, pad_to_multiple, validate_settings

__all__ = ["ENCODERS", "ResNetUNet", "UNetPlusPlus"]

ENCODERS = ("resnet18", "resnet34", "resnet50")
# segtune's names -> MONAI's (a transposed convolution, or a resize then a convolution)
_MONAI_UPSAMPLE = {"transpose": "deconv", "resize": "nontrainable"}


def _monai_norm(norm: str) -> tuple | str | None:
    if norm == "batch":
        return ("batch", {})
    if norm == "instance":
        return ("instance", {"affine": True})
    if norm == "group":
        return ("group", {"num_groups": 8})  # every width below is a multiple of 8
    return None


def _check(
    spatial_dims: int, in_channels: int, out_channels: int, base_channels: int, norm: str, dropout: float, upsample: str
) -> None:
    validate_settings(spatial_dims, in_channels, out_channels, base_channels, norm, dropout, upsample)
    if base_channels % 8:
        raise ValueError(f"base_channels must be a multiple of 8 for this architecture, got {base_channels}")


def _padded(model: nn.Module, forward, x: torch.Tensor) -> torch.Tensor:
    """``forward`` on ``x`` padded to the model's size multiple, cropped back to ``x``'s size."""
    check_input(model, x)
    spatial = tuple(x.shape[2:])
    y = forward(pad_to_multiple(x, model.size_multiple))
    return y[(..., *(slice(0, n) for n in spatial))]


class ResNetUNet(FlexibleUNet):
    """A U-Net whose encoder is a ResNet-18, -34 or -50 (He et al. 2016), 2D or 3D.

    Parameters
    ----------
    spatial_dims, in_channels, out_channels
        As for :class:`~segtune.core.models.unet.UNet`.
    encoder
        ``"resnet18"``, ``"resnet34"`` or ``"resnet50"`` (MONAI's ResNets, random weights).
    base_channels
        Width of the decoder's last level; the decoder is ``16, 8, 4, 2, 1`` times this
        (16 gives segmentation-models-pytorch's default decoder, 256-128-64-32-16).
    norm, dropout, upsample
        As for :class:`~segtune.core.models.unet.UNet` (``norm`` applies to the decoder; the
        ResNet keeps its batch norm).

    Examples
    --------
    >>> model = ResNetUNet(spatial_dims=2, encoder="resnet18", out_channels=3, base_channels=8)
    >>> model(torch.zeros(2, 1, 45, 70)).shape
    torch.Size([2, 3, 45, 70])
    """

    size_multiple = 32  # the ResNet halves the size five times
    display_name = "ResNet U-Net"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        encoder: str = "resnet34",
        base_channels: int = 16,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "resize",
    ) -> None:
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        _check(spatial_dims, in_channels, out_channels, base_channels, norm, dropout, upsample)
        super().__init__(
            in_channels,
            out_channels,
            encoder,
            pretrained=False,
            spatial_dims=spatial_dims,
            decoder_channels=tuple(base_channels * m for m in (16, 8, 4, 2, 1)),
            norm=_monai_norm(norm),
            dropout=float(dropout),
            upsample=_MONAI_UPSAMPLE[upsample],
            interp_mode="nearest",
        )
        self.spatial_dims, self.in_channels, self.out_channels = int(spatial_dims), int(in_channels), int(out_channels)
        self.encoder_name, self.base_channels = encoder, int(base_channels)
        self.norm, self.dropout, self.upsample = norm, float(dropout), upsample

    @property
    def architecture(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-able dict (what :func:`~.unet.build_model` takes)."""
        return {
            "name": "resnet_unet",
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "encoder": self.encoder_name,
            "base_channels": self.base_channels,
            "norm": self.norm,
            "dropout": self.dropout,
            "upsample": self.upsample,
        }

    @property
    def head(self) -> nn.Module:
        return self.segmentation_head[0]

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The ResNet's parameters (what ``--freeze-encoder`` freezes)."""
        return self.encoder.parameters()

    def encoder_modules(self) -> list[nn.Module]:
        return [self.encoder]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _padded(self, super().forward, x)


class UNetPlusPlus(BasicUNetPlusPlus):
    """UNet++ (Zhou et al. 2018): a U-Net with nested, densely connected skip paths, 2D or 3D.

    Four downsampling steps; the encoder is ``1, 1, 2, 4, 8`` times ``base_channels`` wide
    (MONAI's default is ``base_channels=32``). The output is the full-depth branch
    (``X^{0,4}``); training uses no deep supervision.

    Examples
    --------
    >>> model = UNetPlusPlus(spatial_dims=3, in_channels=2, out_channels=2, base_channels=8)
    >>> model(torch.zeros(1, 2, 9, 20, 20)).shape
    torch.Size([1, 2, 9, 20, 20])
    """

    size_multiple = 16
    display_name = "UNet++"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "transpose",
    ) -> None:
        _check(spatial_dims, in_channels, out_channels, base_channels, norm, dropout, upsample)
        b = int(base_channels)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=(b, b, 2 * b, 4 * b, 8 * b, b),
            deep_supervision=False,
            norm=_monai_norm(norm),
            dropout=float(dropout),
            upsample=_MONAI_UPSAMPLE[upsample],
        )
        self.spatial_dims, self.in_channels, self.out_channels = int(spatial_dims), int(in_channels), int(out_channels)
        self.base_channels, self.norm, self.dropout, self.upsample = b, norm, float(dropout), upsample

    @property
    def architecture(self) -> dict[str, Any]:
        return {
            "name": "unetpp",
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "base_channels": self.base_channels,
            "norm": self.norm,
            "dropout": self.dropout,
            "upsample": self.upsample,
        }

    @property
    def encoder(self) -> nn.ModuleList:
        """The contracting path (a view over the blocks; its state-dict keys are ``0.``-``4.``)."""
        return nn.ModuleList([self.conv_0_0, self.conv_1_0, self.conv_2_0, self.conv_3_0, self.conv_4_0])

    @property
    def head(self) -> nn.Module:
        return self.final_conv_0_4

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def encoder_modules(self) -> list[nn.Module]:
        return list(self.encoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _padded(self, lambda padded: super(UNetPlusPlus, self).forward(padded)[-1], x)
