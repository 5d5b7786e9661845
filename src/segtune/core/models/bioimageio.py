"""bioimage.io model packages out of segtune model folders, and into segtune's prediction.

Export (:func:`export_bioimageio`) writes a package in the latest bioimage.io model format (0.5)
through ``bioimageio.spec``: the weights as a PyTorch state dict with segtune's U-Net source as the
architecture (and TorchScript, traced and checked on a second input size), the percentile normalisation as the
spec's ``scale_range`` preprocessing, the head's sigmoid/softmax as postprocessing, test tensors
made by segtune's own tiled prediction, ``MODEL_CARD.md`` as the documentation, citations of
the U-Net and of the data the model was trained on, and segtune's ``config.json`` under
``config.segtune`` so that importing the package back restores the model exactly.

Import (:func:`load_bioimageio`) turns a package (``.zip`` or unpacked folder with ``rdf.yaml``)
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
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segtune.core.normalize import DEFAULT_PERCENTILES, model_percentiles

logger = logging.getLogger(__name__)

__all__ = ["BioimageioUnsupported", "export_bioimageio", "is_bioimageio_package", "load_bioimageio"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
# citations for data sets named in a model's training provenance (substring of the entry -> citation)
DATA_CITATIONS = {
    "nih3t3": (
        "Coelho, Shariff and Murphy (2009): Nuclear segmentation in microscope cell images: a hand-segmented "
        "dataset and comparison of algorithms. ISBI 2009",
        "10.1109/ISBI.2009.5193098",
    ),
    "isbi": (
        "Arganda-Carreras et al. (2015): Crowdsourcing the creation of image segmentation algorithms for "
        "connectomics. Frontiers in Neuroanatomy",
        "10.3389/fnana.2015.00142",
    ),
    "dsb": (
        "Caicedo et al. (2019): Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
        "Nature Methods",
        "10.1038/s41592-019-0612-7",
    ),
}
UNET_CITATION = (
    "Ronneberger, Fischer and Brox (2015): U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015",
    "10.1007/978-3-319-24574-4_28",
)


class BioimageioUnsupported(ValueError):
    """A bioimage.io package segtune cannot run; the message says why in one line."""


def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """A ``.zip`` file, an ``rdf.yaml``/``bioimageio.yaml``, or a folder holding one (and no segtune
    ``config.json``)."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".zip" or path.name in RDF_NAMES
    return path.is_dir() and not (path / "config.json").is_file() and any((path / n).is_file() for n in RDF_NAMES)


# --- export ------------------------------------------------------------------------------------


def export_bioimageio(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    test_image: np.ndarray | None = None,
    torchscript: bool = True,
) -> Path:
    """Write a segtune model folder (or bundled model) as a bioimage.io model package (format 0.5).

    Parameters
    ----------
    model
        A bundled model's name or a model folder.
    out
        The package to write, ``something.zip``.
    overwrite
        Replace ``out`` if it exists.
    test_image
        The raw test input, ``(C, Y, X)`` or ``(C, Z, Y, X)`` (default: synthetic nuclei at the
        model's object size, 256² in 2D, 32 x 128² in 3D).
    torchscript
        Also write TorchScript weights (skipped with a warning when the traced network does not
        match the eager one on a second input size).

    Returns
    -------
    Path
        The package written; it has passed ``bioimageio.spec``'s validation.

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is False.
    ValueError
        ``out`` does not end in ``.zip``, or the model is not one segtune can describe.
    """
    from bioimageio.spec import save_bioimageio_package

    from segtune.core.models.registry import resolve_model
    from segtune.core.models.store import load_model

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"the bioimage.io package {out} must end in .zip")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (or --overwrite) to replace it")
    folder = resolve_model(model)
    net, config = load_model(folder, device="cpu")
    architecture = dict(config["architecture"])
    if architecture.get("name", "unet") != "unet":
        raise ValueError(
            f"only segtune U-Nets can be exported to bioimage.io; {folder} is a {architecture.get('name')!r}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="segtune-bioimageio-") as tmp:
        work = Path(tmp)
        description = _describe(folder, net, config, work, test_image, torchscript)
        partial = out.with_name(f".{out.name}.partial")
        save_bioimageio_package(description, output_path=partial)
        os.replace(partial, out)
    return out


def _describe(
    folder: Path, net: nn.Module, config: dict[str, Any], work: Path, test_image: Any, torchscript: bool
) -> Any:
    from bioimageio.spec.model import v0_5 as spec

    from segtune.core.models import unet as unet_module

    architecture = dict(config["architecture"])
    dims = int(architecture.get("spatial_dims", 2))
    space = ["z", "y", "x"][-dims:]
    depth = int(architecture.get("depth", 4))
    head = str(config.get("head", "binary"))
    out_channels = int(architecture.get("out_channels", 1))
    in_channels = int(architecture.get("in_channels", 1))
    step = 2**depth

    raw = _test_input(config, dims, in_channels) if test_image is None else np.asarray(test_image, dtype=np.float32)
    probabilities = _segtune_prediction(net, config, raw)
    np.save(work / "test_input.npy", raw[np.newaxis].astype(np.float32))
    np.save(work / "test_output.npy", probabilities[np.newaxis].astype(np.float32))
    _cover(raw, probabilities, head, work / "cover.png")

    torch.save(net.state_dict(), work / "weights.pt")
    shutil.copy(unet_module.__file__, work / "unet.py")
    kwargs = {k: v for k, v in architecture.items() if k != "name"}
    weights: dict[str, Any] = {
        "pytorch_state_dict": spec.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=spec.ArchitectureFromFileDescr(
                source=work / "unet.py", callable=spec.Identifier("UNet"), kwargs=kwargs
            ),
            pytorch_version=spec.Version(torch.__version__.split("+")[0]),
        )
    }
    if torchscript:
        try:
            _torchscript(net, raw, dims, step).save(str(work / "weights_torchscript.pt"))
            weights["torchscript"] = spec.TorchscriptWeightsDescr(
                source=work / "weights_torchscript.pt",
                pytorch_version=spec.Version(torch.__version__.split("+")[0]),
                parent="pytorch_state_dict",
            )
        except Exception as e:  # TorchScript is an extra; the state dict is the package's own format
            logger.warning(
                "TorchScript export skipped: %s: %s", type(e).__name__, str(e).splitlines()[0] if str(e) else ""
            )

    input_id, output_id = spec.TensorId("raw"), spec.TensorId("probabilities")
    normalization = dict(config.get("normalization") or {})
    preprocessing: list[Any] = []
    if normalization.get("method", "percentile") == "percentile":
        low, high, _ = model_percentiles(config)
        preprocessing.append(
            spec.ScaleRangeDescr(
                kwargs=spec.ScaleRangeKwargs(
                    axes=[spec.AxisId(a) for a in space],
                    min_percentile=low,
                    max_percentile=high,
                    eps=1e-6,
                )
            )
        )
    postprocessing: list[Any] = []
    if head == "binary":
        postprocessing.append(spec.SigmoidDescr())
    elif head in ("three_class", "semantic"):
        postprocessing.append(spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel"))))
    classes = [str(c) for c in (config.get("classes") or [])]
    if len(classes) != out_channels:
        classes = (
            ["foreground"] if head == "binary" and out_channels == 1 else [f"class{i}" for i in range(out_channels)]
        )
    input_axes: list[Any] = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(f"channel{i}") for i in range(in_channels)]),
    ]
    input_axes += [
        spec.SpaceInputAxis(id=spec.AxisId(a), size=spec.ParameterizedSize(min=step * 2, step=step)) for a in space
    ]
    output_axes: list[Any] = [
        spec.BatchAxis(),
        spec.ChannelAxis(channel_names=[spec.Identifier(_identifier(c)) for c in classes]),
    ]
    output_axes += [
        spec.SpaceOutputAxis(id=spec.AxisId(a), size=spec.SizeReference(tensor_id=input_id, axis_id=spec.AxisId(a)))
        for a in space
    ]

    card = folder / "MODEL_CARD.md"
    documentation = work / "README.md"
    text = (
        card.read_text(encoding="utf-8") if card.is_file() else f"# {folder.name}\n\n{config.get('description', '')}\n"
    )
    documentation.write_text(text + _usage_note(folder.name), encoding="utf-8")
    description = str(config.get("description") or f"segtune {dims}D U-Net ({head} head)")
    return spec.ModelDescr(
        name=_display_name(folder.name),
        description=description[:1000],
        authors=[spec.Author(name="napari-segtune", affiliation="segtune model exported by segtune export-bioimageio")],
        cite=_citations(config, spec),
        license=spec.LicenseId("BSD-3-Clause"),
        documentation=spec.FileDescr(source=documentation),
        covers=[spec.FileDescr(source=work / "cover.png")],
        tags=[
            "segmentation",
            "unet",
            f"{dims}d",
            "pytorch",
            "segtune",
            *(["nuclei"] if "nucle" in folder.name.lower() else []),
        ],
        inputs=[
            spec.InputTensorDescr(
                id=input_id,
                axes=input_axes,
                test_tensor=spec.FileDescr(source=work / "test_input.npy"),
                preprocessing=preprocessing,
            )
        ],
        outputs=[
            spec.OutputTensorDescr(
                id=output_id,
                axes=output_axes,
                test_tensor=spec.FileDescr(source=work / "test_output.npy"),
                postprocessing=postprocessing,
            )
        ],
        weights=spec.WeightsDescr(**weights),
        config={"segtune": json.loads(json.dumps(config))},
    )


def _torchscript(net: nn.Module, raw: np.ndarray, dims: int, step: int) -> Any:
    """The network traced to TorchScript, checked on a second input size (multiples of ``step``, as the package
    declares)."""
    example = torch.from_numpy(np.ascontiguousarray(raw[np.newaxis], dtype=np.float32))
    other = torch.rand(1, raw.shape[0], *([step * 3] * dims))
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", torch.jit.TracerWarning
        )  # shape checks become constants: sizes are step multiples
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
        if not torch.allclose(traced(other), net(other), atol=1e-5):
            raise RuntimeError("the traced network differs from the eager one on another input size")
    return traced


def _identifier(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"c_{cleaned}"


def _display_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in " _-()" else " " for ch in name).strip()
    return f"segtune {cleaned}"[:128]


def _test_input(config: Mapping[str, Any], dims: int, in_channels: int) -> np.ndarray:
    from segtune.core.synthetic import synthetic_nuclei

    shape = (256, 256) if dims == 2 else (32, 128, 128)
    diameter = float(config.get("object_diameter") or 18.0)
    image = np.asarray(synthetic_nuclei(shape, diameter=diameter, seed=0).image, dtype=np.float32)
    return np.stack([image] * in_channels)


def _segtune_prediction(net: nn.Module, config: Mapping[str, Any], raw: np.ndarray) -> np.ndarray:
    """segtune's own tiled prediction of the test input: normalised, activated, not zoomed: ``(K, *spatial)``."""
    from segtune.core.predict import predict

    dims = int(config["architecture"].get("spatial_dims", 2))
    result = predict(
        (net, dict(config)), raw, axes="CYX" if dims == 2 else "CZYX", device="cpu", labels=False, diameter=None
    )
    probabilities = np.asarray(result.probabilities)[0]  # (K, Z, Y, X)
    return probabilities[:, 0] if dims == 2 else probabilities


def _cover(raw: np.ndarray, probabilities: np.ndarray, head: str, path: Path) -> None:
    """Input beside output (foreground probability), the picture the model zoo shows."""
    import imageio.v3 as iio

    image = raw[0] if raw.ndim == 3 else raw[0, raw.shape[1] // 2]
    lo, hi = np.percentile(image, DEFAULT_PERCENTILES)
    left = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    fore = probabilities[0] if head == "binary" else 1.0 - probabilities[0]
    fore = fore if fore.ndim == 2 else fore[fore.shape[0] // 2]
    picture = np.concatenate([left, np.ones((left.shape[0], 4)), fore], axis=1)
    iio.imwrite(path, (picture * 255).astype(np.uint8))


def _citations(config: Mapping[str, Any], spec: Any) -> list[Any]:
    entries = [spec.CiteEntry(text=UNET_CITATION[0], doi=spec.Doi(UNET_CITATION[1]))]
    data = (
        json.dumps((config.get("training") or {}).get("data", {})).lower()
        + json.dumps(config.get("validation") or {}).lower()
    )
    for key, (text, doi) in DATA_CITATIONS.items():
        if key in data:
            entries.append(spec.CiteEntry(text=text, doi=spec.Doi(doi)))
    return entries


def _usage_note(name: str) -> str:
    return (
        "\n\n## Exported by segtune\n\n"
        f"This package was written by `segtune export-bioimageio {name} OUT.zip`. Its test output is segtune's own "
        "tiled prediction of the test input (normalised by percentiles, not zoomed). segtune runs it with "
        "`segtune predict --model OUT.zip ...`; inside segtune the model also zooms images to its trained object "
        "size (`--diameter`), which the bioimage.io format cannot express.\n"
    )


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
