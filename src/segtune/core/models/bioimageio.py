"""bioimage.io model packages out of segtune model folders, and into segtune's prediction.

Export (:func:`export_bioimageio`) writes a package in the latest bioimage.io model format (0.5)
through ``bioimageio.spec``: the weights as a PyTorch state dict with segtune's U-Net source as the
architecture (and TorchScript, traced and checked on a second input size), the percentile normalisation as the
spec's ``scale_range`` preprocessing, the head's sigmoid/softmax as postprocessing, test tensors
made by segtune's own tiled prediction, ``MODEL_CARD.md`` as the documentation, citations of
the U-Net and of the data the model was trained on, and segtune's ``config.json`` under
``config.segtune`` so that importing the package back restores the model exactly.

Import (:func:`load_bioimageio`: a package into the ``(module, config)`` pair prediction takes,
never running a package's own code) is in :mod:`segtune.core.models.bioimageio_load`; its names
are re-exported here.
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

from segtune.core.models.bioimageio_load import (  # the import half, re-exported
    BioimageioUnsupported,
    is_bioimageio_package,
    load_bioimageio,
)
from segtune.core.normalize import DEFAULT_PERCENTILES, model_percentiles

logger = logging.getLogger(__name__)

__all__ = ["BioimageioUnsupported", "export_bioimageio", "is_bioimageio_package", "load_bioimageio"]

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
