"""bioimage.io model packages into segtune's prediction (the import half; export is in
:mod:`segtune.core.models.bioimageio`, which re-exports these names).

:func:`load_bioimageio` turns a package (``.zip`` or unpacked folder with ``rdf.yaml``)
into the ``(module, config)`` pair :func:`segtune.core.predict.predict` takes, so the package runs
through segtune's tiling engine. What it will not do, by design (see the project's DESIGN.md):
run Python code from a package. ``pytorch_state_dict`` weights are read with
``torch.load(weights_only=True)`` into segtune's own U-Net (a segtune export, or any state dict
whose names and shapes fit it); TorchScript weights run in TorchScript's runtime. A package that
needs anything else (its own architecture code, TensorFlow, ONNX, several inputs, an output of
another size, a processing step segtune does not know) raises :class:`BioimageioUnsupported`
with a one-line reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["BioimageioUnsupported", "is_bioimageio_package", "load_bioimageio"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


class BioimageioUnsupported(ValueError):
    """A bioimage.io package segtune cannot run; the message says why in one line."""


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """A ``.zip`` file, an ``rdf.yaml``/``bioimageio.yaml``, or a folder holding one (and no segtune
    ``config.json``)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip" or path.name in RDF_NAMES
    return path.is_dir() and not (path / "config.json").is_file() and any((path / n).is_file() for n in RDF_NAMES)


# --- import ------------------------------------------------------------------------------------


class _Pointwise(nn.Module):
    """The package's own pointwise processing steps around the network (tiling-safe: per pixel)."""

    def __init__(self, net: nn.Module, before: list[Any], after: list[Any]) -> None:
        super().__init__()
        self.net = net
        self.before = before
        self.after = after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.before:
            x = step(x)
        x = self.net(x)
        for step in self.after:
            x = step(x)
        return x


class _TorchScript(nn.Module):
    """A TorchScript network behind a plain module, so segtune's probing hooks see one opaque callable."""

    def __init__(self, script: Any) -> None:
        super().__init__()
        object.__setattr__(self, "script", script.eval())  # not a submodule: hooks are not registered inside it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.script(x)

    def to(self, *args: Any, **kwargs: Any) -> _TorchScript:
        self.script.to(*args, **kwargs)
        return super().to(*args, **kwargs)


def load_bioimageio(source: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Load a bioimage.io model package as the ``(module, config)`` pair segtune's prediction takes.

    Parameters
    ----------
    source
        A package ``.zip``, its ``rdf.yaml``/``bioimageio.yaml``, or an unpacked package folder.

    Returns
    -------
    module : torch.nn.Module
        The network (eval mode, CPU) with the package's pointwise processing steps around it.
    config : dict
        A segtune config: ``head`` from the package's last postprocessing step (sigmoid:
        ``binary``, softmax: ``three_class``/``semantic``, none: ``image``), the ``scale_range``
        preprocessing as percentile normalisation; a segtune export brings its whole config back.

    Raises
    ------
    BioimageioUnsupported
        The package is not a valid bioimage.io model, or it needs something segtune does not run.
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    source = Path(source)
    if source.is_dir():
        found = [source / n for n in RDF_NAMES if (source / n).is_file()]
        if not found:
            raise BioimageioUnsupported(f"{source} holds no rdf.yaml or bioimageio.yaml: not a bioimage.io package")
        source = found[0]
    try:
        description = load_description(source, format_version="latest")
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise BioimageioUnsupported(
            f"{source} cannot be read as a bioimage.io package ({type(e).__name__}: {first})"
        ) from e
    if isinstance(description, InvalidDescr) or not isinstance(description, v0_5.ModelDescr):
        errors = getattr(description.validation_summary, "errors", None) or []
        reason = (
            f"{errors[0].loc}: {errors[0].msg}" if errors else f"a {getattr(description, 'type', '?')!r} description"
        )
        raise BioimageioUnsupported(f"{source} is not a bioimage.io model segtune can read ({reason})")

    def refuse(reason: str) -> BioimageioUnsupported:
        return BioimageioUnsupported(f"{source}: segtune cannot run this bioimage.io model: {reason}")

    if len(description.inputs) != 1 or len(description.outputs) != 1:
        raise refuse(
            f"it has {len(description.inputs)} inputs and {len(description.outputs)} outputs (segtune runs one of each)"
        )
    tensor_in, tensor_out = description.inputs[0], description.outputs[0]
    space_in, channels_in = _axes(tensor_in, refuse)
    space_out, channels_out = _axes(tensor_out, refuse)
    if len(space_in) not in (2, 3) or space_in != space_out:
        raise refuse(f"input axes {space_in} and output axes {space_out}: segtune needs the same 2 or 3 space axes")
    for axis in tensor_out.axes:
        if axis.type == "space":
            size = axis.size
            if (
                not (
                    isinstance(size, v0_5.SizeReference)
                    and size.tensor_id == tensor_in.id
                    and size.axis_id == axis.id
                    and not size.offset
                )
                or getattr(axis, "scale", 1.0) != 1.0
                or getattr(axis, "halo", 0)
            ):
                raise refuse(f"its output axis {axis.id!r} is not the input's size (segtune tiles same-size outputs)")

    normalization, before = _preprocessing(tensor_in.preprocessing, refuse)
    head, after = _postprocessing(tensor_out.postprocessing, channels_out, refuse)
    extra = getattr(description.config, "model_extra", None) or {}
    packaged = json.loads(json.dumps(extra.get("segtune") or {}))  # a segtune export's own config.json
    net = _network(description, packaged, refuse)
    config: dict[str, Any] = packaged or {}
    config.setdefault("architecture", {})
    config["architecture"] = {
        **config["architecture"],
        "spatial_dims": len(space_in),
        "in_channels": channels_in,
        "out_channels": channels_out,
    }
    if not packaged:
        config.update(
            {
                "head": head,
                "normalization": normalization,
                "description": description.description,
                "classes": _channel_names(tensor_out) if head != "binary" else ["background", "foreground"],
            }
        )
        config["architecture"].setdefault("name", "bioimageio")
    elif config.get("head") not in (head, None) and not (head == "semantic" and config.get("head") == "three_class"):
        raise refuse(f"its segtune config says head {config.get('head')!r} but its postprocessing makes it {head!r}")
    config["bioimageio"] = {"source": str(source), "name": description.name}
    module = _Pointwise(net, before, after) if before or after else net
    return module.eval(), config


def _axes(tensor: Any, refuse: Any) -> tuple[list[str], int]:
    space, channels = [], 1
    for axis in tensor.axes:
        if axis.type == "space":
            space.append(str(axis.id))
        elif axis.type == "channel":
            channels = len(axis.channel_names)
        elif axis.type != "batch":
            raise refuse(f"tensor {tensor.id!r} has a {axis.type!r} axis (segtune runs batch, channel and space axes)")
    return space, channels


def _channel_names(tensor: Any) -> list[str]:
    for axis in tensor.axes:
        if axis.type == "channel":
            return [str(n) for n in axis.channel_names]
    return ["class0"]


def _preprocessing(steps: Any, refuse: Any) -> tuple[dict[str, Any], list[Any]]:
    """The package's ``scale_range`` as segtune's percentile normalisation; pointwise steps as functions."""
    normalization: dict[str, Any] = {"method": "none"}
    before: list[Any] = []
    for step in steps:
        kind, kwargs = step.id, getattr(step, "kwargs", None)
        if kind == "ensure_dtype":
            continue
        if (
            kind == "scale_range"
            and not before
            and normalization["method"] == "none"
            and kwargs.reference_tensor is None
        ):
            normalization = {
                "method": "percentile",
                "low": float(kwargs.min_percentile),
                "high": float(kwargs.max_percentile),
                "clip": False,
            }
            continue
        pointwise = _pointwise(kind, kwargs)
        if pointwise is None:
            raise refuse(
                f"its preprocessing step {kind!r} is not one segtune applies (scale_range over the whole image, "
                "scale_linear, clip, fixed_zero_mean_unit_variance, binarize)"
            )
        before.append(pointwise)
    return normalization, before


def _postprocessing(steps: Any, channels: int, refuse: Any) -> tuple[str, list[Any]]:
    """The last sigmoid/softmax becomes segtune's head (its activation); other pointwise steps stay with the model."""
    steps = [s for s in steps if s.id != "ensure_dtype"]
    head = "image"
    if steps and steps[-1].id == "sigmoid":
        head = "binary" if channels == 1 else "image"
        steps = steps[:-1] if head == "binary" else steps
    elif steps and steps[-1].id == "softmax" and str(steps[-1].kwargs.axis) == "channel":
        head, steps = "semantic", steps[:-1]
    after = []
    for step in steps:
        pointwise = _pointwise(step.id, getattr(step, "kwargs", None))
        if pointwise is None:
            raise refuse(f"its postprocessing step {step.id!r} is not one segtune applies")
        after.append(pointwise)
    return head, after


def _pointwise(kind: str, kwargs: Any) -> Any:
    """A per-pixel step as a function of a ``(N, C, ...)`` tensor, or None when segtune does not know it."""
    import functools

    def per_channel(value: Any, x: torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        return tensor.reshape(1, -1, *([1] * (x.ndim - 2))) if tensor.ndim else tensor

    if kind == "sigmoid":
        return torch.sigmoid
    if kind == "clip":
        return functools.partial(torch.clamp, min=kwargs.min, max=kwargs.max)
    if kind == "binarize":
        return lambda x: (x > per_channel(kwargs.threshold, x)).to(x.dtype)
    if kind == "scale_linear" and getattr(kwargs, "axis", None) in (None, "channel"):
        return lambda x: x * per_channel(kwargs.gain, x) + per_channel(kwargs.offset, x)
    if kind == "fixed_zero_mean_unit_variance" and getattr(kwargs, "axis", None) in (None, "channel"):
        return lambda x: (x - per_channel(kwargs.mean, x)) / (per_channel(kwargs.std, x) + kwargs.eps)
    return None


def _network(description: Any, packaged: Mapping[str, Any], refuse: Any) -> nn.Module:
    """segtune's U-Net with the package's state dict (read without unpickling code), or its TorchScript."""
    import inspect
    import io

    from bioimageio.spec.utils import get_reader

    from segtune.core.models.unet import UNet, build_model

    weights = description.weights
    problems = []
    state_dict = weights.pytorch_state_dict
    if state_dict is not None:
        if packaged.get("architecture"):
            candidate = dict(packaged["architecture"])
        else:
            kwargs = dict(getattr(state_dict.architecture, "kwargs", {}) or {})
            accepted = set(inspect.signature(UNet).parameters)
            candidate = (
                {k: v for k, v in kwargs.items() if k in accepted}
                if str(getattr(state_dict.architecture, "callable", "")) == "UNet"
                else None
            )
        if candidate is not None:
            try:
                net = build_model(candidate)
                # the restricted unpickler: tensors and plain containers only, never code
                state = torch.load(
                    io.BytesIO(get_reader(state_dict.source).read()), map_location="cpu", weights_only=True
                )
                net.load_state_dict(state, strict=True)
                return net.eval()
            except Exception as e:
                problems.append(f"its state dict does not fit segtune's U-Net ({type(e).__name__})")
        else:
            problems.append(
                f"its architecture {getattr(state_dict.architecture, 'callable', '?')!r} "
                "is Python code segtune does not run"
            )
    if weights.torchscript is not None:
        try:
            return _TorchScript(
                torch.jit.load(io.BytesIO(get_reader(weights.torchscript.source).read()), map_location="cpu")
            )
        except Exception as e:
            problems.append(f"its TorchScript weights do not load ({type(e).__name__}: {e})")
    formats = [
        name
        for name in (
            "pytorch_state_dict",
            "torchscript",
            "onnx",
            "tensorflow_saved_model_bundle",
            "keras_hdf5",
            "keras_v3",
            "tensorflow_js",
        )
        if getattr(weights, name, None) is not None
    ]
    if not problems:
        problems.append(
            f"its weights are {', '.join(formats)} (segtune runs pytorch_state_dict of a U-Net, or torchscript)"
        )
    raise refuse("; ".join(problems))
