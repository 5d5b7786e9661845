"""A configurable 2D/3D U-Net (Ronneberger et al. 2015) and its construction from a config dict."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "MAX_PARAMETERS",
    "NORMS",
    "UPSAMPLES",
    "UNet",
    "build_model",
    "check_size",
    "default_architecture",
    "full_architecture",
    "new_architecture",
    "parameter_count",
]

NORMS = ("batch", "group", "instance", "none")
UPSAMPLES = ("transpose", "resize")
_ARCHITECTURE_KEYS = (
    "spatial_dims",
    "in_channels",
    "out_channels",
    "depth",
    "base_channels",
    "norm",
    "dropout",
    "upsample",
)


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _norm(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        # 8 groups where the width allows (Wu & He 2018 found 8-32 work alike); fewer for thin layers
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


class _ConvBlock(nn.Sequential):
    """(conv 3 - norm - ReLU) x 2, then optional dropout."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, norm: str, dropout: float) -> None:
        conv = _conv(spatial_dims)
        bias = norm == "none"  # a bias before a normalisation layer is cancelled by it
        layers: list[nn.Module] = [
            conv(in_ch, out_ch, 3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
            conv(out_ch, out_ch, 3, padding=1, bias=bias),
            _norm(norm, spatial_dims, out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append((nn.Dropout2d if spatial_dims == 2 else nn.Dropout3d)(dropout))
        super().__init__(*layers)


class _Up(nn.Module):
    """Double the spatial size and halve the channels: transposed conv, or resize then conv."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.spatial_dims = spatial_dims
        if mode == "transpose":
            self.op = (nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d)(in_ch, out_ch, 2, stride=2)
        else:
            self.op = _conv(spatial_dims)(in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize":
            x = F.interpolate(
                x, scale_factor=2.0, mode="bilinear" if self.spatial_dims == 2 else "trilinear", align_corners=False
            )
        return self.op(x)


class UNet(nn.Module):
    """U-Net for 2D or 3D images with any number of input channels and output classes.

    Parameters
    ----------
    spatial_dims
        2 (input ``(N, C, Y, X)``) or 3 (input ``(N, C, Z, Y, X)``).
    in_channels
        Channels of the input image.
    out_channels
        Output logits: 1 for a binary head, 3 for background/interior/boundary, n for n classes.
    depth
        Number of 2x downsampling steps; the encoder has ``depth + 1`` resolution levels, the
        widest ``base_channels * 2**depth`` channels wide.
    base_channels
        Channels of the first level (doubled at each level down).
    norm
        ``"batch"``, ``"group"``, ``"instance"`` or ``"none"``.
    dropout
        Channel dropout probability after each block of the lower half of the encoder and the
        bottleneck (0 switches it off).
    upsample
        ``"transpose"`` (transposed convolution) or ``"resize"`` (linear resize, then a 3x3
        convolution; free of checkerboard artefacts).

    Notes
    -----
    Any input size is accepted: inputs whose spatial size is not a multiple of ``2**depth`` are
    padded by reflection inside the forward pass and the output is cropped back, so the output
    always has the input's spatial shape. Weights use He (Kaiming) initialisation.

    Examples
    --------
    >>> model = UNet(spatial_dims=2, in_channels=1, out_channels=3, depth=2, base_channels=8)
    >>> model(torch.zeros(1, 1, 37, 50)).shape
    torch.Size([1, 3, 37, 50])
    """

    display_name = "U-Net"

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        base_channels: int = 32,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "transpose",
    ) -> None:
        super().__init__()
        _validate(spatial_dims, in_channels, out_channels, depth, base_channels, norm, dropout, upsample)
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.base_channels = int(base_channels)
        self.norm = norm
        self.dropout = float(dropout)
        self.upsample = upsample

        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            # dropout in the deep half only, where the features are abstract (as in the seeds)
            level_dropout = dropout if level >= (depth + 1) // 2 else 0.0
            self.encoder.append(_ConvBlock(spatial_dims, previous, width, norm, level_dropout))
            previous = width
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.pool = pool(2)
        self.ups = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            self.ups.append(_Up(spatial_dims, widths[level + 1], widths[level], upsample))
            self.decoder.append(_ConvBlock(spatial_dims, 2 * widths[level], widths[level], norm, 0.0))
        self.head = _conv(spatial_dims)(widths[0], out_channels, 1)
        self.reset_parameters()

    @property
    def architecture(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-able dict (what :func:`build_model` takes)."""
        return {
            "name": "unet",
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "norm": self.norm,
            "dropout": self.dropout,
            "upsample": self.upsample,
        }

    def reset_parameters(self) -> None:
        """He (Kaiming) normal initialisation for convolutions; norms start as identity."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(
                module, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d)
            ):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the contracting path and the bottleneck (what ``--freeze-encoder`` freezes)."""
        return self.encoder.parameters()

    def encoder_modules(self) -> list[nn.Module]:
        """The encoder blocks, e.g. to keep their normalisation statistics fixed when frozen."""
        return list(self.encoder)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes that are a multiple of this need no internal padding."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        spatial = tuple(x.shape[2:])
        x = pad_to_multiple(x, self.size_multiple)
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, block in zip(self.ups, self.decoder, strict=True):
            x = up(x)
            x = block(torch.cat([skips.pop(), x], dim=1))
        x = self.head(x)
        return x[(..., *(slice(0, n) for n in spatial))]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the spatial axes of ``x`` at their ends to a multiple of ``multiple`` (reflecting where possible)."""
    pads: list[int] = []
    for n in reversed(x.shape[2:]):
        pads += [0, (-n) % multiple]
    if not any(pads):
        return x
    # reflection needs the pad to be smaller than the axis; tiny inputs fall back to replication
    mode = "reflect" if all(p < n for p, n in zip(pads[1::2], reversed(x.shape[2:]), strict=True)) else "replicate"
    return F.pad(x, pads, mode=mode)


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ValueError unless ``x`` is ``(N, C, *spatial)`` for ``model``'s dimensions and channels."""
    name = getattr(model, "display_name", type(model).__name__)
    if x.ndim != model.spatial_dims + 2:
        raise ValueError(
            f"a {model.spatial_dims}D {name} takes input of shape (N, C, {', '.join('ZYX'[-model.spatial_dims :])}), "
            f"got shape {tuple(x.shape)}"
        )
    if x.shape[1] != model.in_channels:
        raise ValueError(
            f"the {name} expects {model.in_channels} input channel(s), got {x.shape[1]} (shape {tuple(x.shape)})"
        )


def _validate(spatial_dims, in_channels, out_channels, depth, base_channels, norm, dropout, upsample) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 <= depth <= 8:
        raise ValueError(f"depth must be an integer from 0 to 8, got {depth!r}")
    validate_settings(spatial_dims, in_channels, out_channels, base_channels, norm, dropout, upsample, depth=depth)


def validate_settings(spatial_dims, in_channels, out_channels, base_channels, norm, dropout, upsample, depth=4) -> None:
    """Raise ValueError naming the first bad setting shared by every network here (the size check
    counts a U-Net of ``depth`` levels: other networks of the same width are of that order)."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("base_channels", base_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if upsample not in UPSAMPLES:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLES)}, got {upsample!r}")
    check_size(
        {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "depth": depth,
            "base_channels": base_channels,
            "upsample": upsample,
        }
    )


# the largest network a config may ask for: 1 G parameters (4 GB of float32 weights), far above
# any U-Net that trains on a workstation, far below what a hostile config.json can ask for
MAX_PARAMETERS = 1_000_000_000


def parameter_count(architecture: Mapping[str, Any]) -> int:
    """The number of weights the U-Net of ``architecture`` has, counted without building it.

    Two 3x3 (3x3x3) convolutions per level on the way down and up, channels doubling per level,
    and the up-sampling convolutions; exact to within the biases and normalisation layers.
    """
    spatial_dims = int(architecture.get("spatial_dims", 2))
    kernel = 3**spatial_dims
    base = int(architecture.get("base_channels", 32))
    depth = int(architecture.get("depth", 4))
    count = 0
    channels_in = int(architecture.get("in_channels", 1))
    for level in range(depth + 1):  # encoder blocks and the bottleneck
        width = base * 2**level
        count += kernel * (channels_in * width + width * width)
        channels_in = width
    for level in range(depth - 1, -1, -1):  # up-sampling and decoder blocks
        width = base * 2**level
        up_kernel = kernel if architecture.get("upsample") == "resize" else 2**spatial_dims
        count += up_kernel * 2 * width * width + kernel * (2 * width * width + width * width)
    return count + base * int(architecture.get("out_channels", 1))


def check_size(architecture: Mapping[str, Any]) -> None:
    """Refuse a network too large to build (ValueError), before any memory is allocated."""
    count = parameter_count(architecture)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"the architecture asks for about {count / 1e9:.0f} G parameters ({4 * count / 1e9:.0f} GB); "
            f"segtune refuses networks over {MAX_PARAMETERS / 1e9:.0f} G "
            f"(base_channels {architecture.get('base_channels')}, depth {architecture.get('depth')})"
        )
    from segtune.core.device import available_memory

    needed = 8.0 * count  # float32 weights, and as much again while they are initialised or loaded
    free = available_memory(torch.device("cpu"))
    if needed > free:
        raise ValueError(
            f"the architecture needs about {needed / 1e9:.1f} GB to build ({count / 1e6:.0f} M parameters), "
            f"more than the {free / 1e9:.1f} GB free"
        )


def default_architecture(**overrides: Any) -> dict[str, Any]:
    """The architecture dict of ``UNet()`` with ``overrides`` applied."""
    architecture = UNet.__init__.__defaults__  # type: ignore[attr-defined]
    base = dict(zip(_ARCHITECTURE_KEYS, architecture, strict=True))
    unknown = set(overrides) - set(_ARCHITECTURE_KEYS)
    if unknown:
        raise ValueError(f"unknown architecture keys {sorted(unknown)}; known: {', '.join(_ARCHITECTURE_KEYS)}")
    base.update(overrides)
    return {"name": "unet", **base}


ARCHITECTURES = ("unet", "resnet_unet", "unetpp")


def architecture_class(name: str) -> type[nn.Module]:
    if name == "unet":
        return UNet
    if name in ("resnet_unet", "unetpp"):
        # imported here: nets.py builds on this module (and on MONAI)
        from segtune.core.models.nets import ResNetUNet, UNetPlusPlus

        return ResNetUNet if name == "resnet_unet" else UNetPlusPlus
    raise ValueError(f"architecture name {name!r} is not known; known: {', '.join(ARCHITECTURES)}")


def full_architecture(architecture: Mapping[str, Any]) -> dict[str, Any]:
    """``architecture`` with its ``name`` and every left-out key at its default.

    Raises
    ------
    ValueError
        For an unknown ``name`` or keys the named network does not take.
    """
    if not isinstance(architecture, Mapping):
        raise ValueError(f"architecture must be a dict, got {type(architecture).__name__}")
    arguments = dict(architecture)
    name = arguments.pop("name", "unet")
    parameters = inspect.signature(architecture_class(name).__init__).parameters
    known = [key for key in parameters if key != "self"]
    unknown = set(arguments) - set(known)
    if unknown:
        raise ValueError(f"unknown architecture keys {sorted(unknown)} for {name!r}; known: {', '.join(known)}")
    full = {key: arguments.get(key, parameters[key].default) for key in known}
    full["dropout"] = float(full["dropout"])
    return {"name": name, **full}


def new_architecture(name: str = "unet", *, encoder: str | None = None, **settings: Any) -> dict[str, Any]:
    """The architecture dict of a new network, from the command line's choices.

    Parameters
    ----------
    name
        ``"unet"`` or ``"unetpp"`` (``"resnet_unet"`` is ``"unet"`` with an ``encoder``).
    encoder
        ``"resnet18"``, ``"resnet34"`` or ``"resnet50"``: a U-Net with that ResNet encoder.
    settings
        ``spatial_dims``, ``in_channels``, ``out_channels``, ``depth``, ``base_channels``,
        ``norm``, ``dropout``, ``upsample``; those the chosen network does not have (``depth``
        of the ResNet U-Net and UNet++, whose depth is fixed) are left out.

    Examples
    --------
    >>> new_architecture("unet", encoder="resnet18", spatial_dims=2, depth=4)["name"]
    'resnet_unet'
    """
    if encoder is not None:
        if name not in ("unet", "resnet_unet"):
            raise ValueError(
                f"--encoder {encoder} gives a U-Net with a ResNet encoder; "
                f"it does not combine with architecture {name!r}"
            )
        name, settings = "resnet_unet", {**settings, "encoder": encoder}
    known = inspect.signature(architecture_class(name).__init__).parameters
    return full_architecture({"name": name, **{k: v for k, v in settings.items() if k in known}})


def build_model(architecture: Mapping[str, Any]) -> nn.Module:
    """Build the network a config's ``"architecture"`` dict describes.

    Parameters
    ----------
    architecture
        ``{"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 3, ...}``;
        ``name`` is ``"unet"`` (the default), ``"resnet_unet"`` or ``"unetpp"``; keys left out
        take the network's defaults.

    Returns
    -------
    torch.nn.Module
        A freshly initialised network (load weights into it separately).

    Raises
    ------
    ValueError
        For an unknown ``name``, unknown keys or invalid values.

    Examples
    --------
    >>> build_model({"spatial_dims": 3, "out_channels": 2, "depth": 2}).architecture["spatial_dims"]
    3
    """
    full = full_architecture(architecture)
    name = full.pop("name")
    return architecture_class(name)(**full)
