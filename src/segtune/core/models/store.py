"""Model folders on disk: ``config.json`` + ``weights.safetensors``, saved atomically, loaded without pickle.

A model folder holds

``config.json``
    what the network is (``architecture``), what it outputs (``head``, ``classes``), how its
    input must be normalised, the tile size it was trained at, how it was trained and how well
    it did (``training``, ``metrics``), where it came from (``lineage``) and ``segtune_version``.
``weights.safetensors``
    the parameters and buffers, in the safetensors format (plain tensors; reading it cannot
    run code).

and may hold ``MODEL_CARD.md``, a training log and a ``checkpoint/`` folder, which loading
ignores. Files in pickle formats (``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are never opened.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtune.core.files import atomic_folder, atomic_write_bytes, atomic_write_text  # re-exported
from segtune.core.models.heads import HEADS, class_names, head_of  # HEADS re-exported
from segtune.core.normalize import DEFAULT_PERCENTILES

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_NAME",
    "HEADS",
    "ModelFormatError",
    "WEIGHTS_NAME",
    "atomic_write_bytes",
    "atomic_write_text",
    "default_config",
    "load_model",
    "read_config",
    "save_model",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
FORMAT = "segtune-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib")


class ModelFormatError(ValueError):
    """A folder is not a valid segtune model (missing or unsafe files, bad config)."""


def default_config(architecture: Mapping[str, Any], head: str | None = None, **fields: Any) -> dict[str, Any]:
    """A complete config for a model with ``architecture``; ``fields`` override the defaults.

    ``head`` defaults to ``"binary"`` for one output channel and ``"three_class"`` for three.
    """
    from segtune import __version__

    out_channels = int(architecture.get("out_channels", 1))
    if head is None:
        head = head_of(out_channels)
    classes = class_names(head, out_channels)
    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": dict(architecture),
        "head": head,
        "classes": classes,
        "normalization": {"method": "percentile", "low": DEFAULT_PERCENTILES[0], "high": DEFAULT_PERCENTILES[1]},
        "tile_shape": None,
        "object_diameter": None,
        "training": {},
        "metrics": {},
        "lineage": [],
        "segtune_version": __version__,
    }
    config.update(fields)
    return config


def _validate_config(config: Mapping[str, Any], source: str) -> None:
    if not isinstance(config, Mapping):
        raise ModelFormatError(f"{source}: the config must be a JSON object, got {type(config).__name__}")
    architecture = config.get("architecture")
    if not isinstance(architecture, Mapping):
        raise ModelFormatError(f"{source}: the config has no 'architecture' object")
    for key in ("spatial_dims", "in_channels", "out_channels"):
        if key not in architecture:
            raise ModelFormatError(f"{source}: 'architecture' lacks {key!r}")
    head = config.get("head")
    if head not in HEADS:
        raise ModelFormatError(f"{source}: 'head' must be one of {', '.join(HEADS)}, got {head!r}")
    _check_architecture_size(architecture, source)
    _check_inference_fields(config, int(architecture.get("spatial_dims", 2)), source)
    out_channels = architecture["out_channels"]
    if head == "binary" and out_channels != 1:
        raise ModelFormatError(f"{source}: a binary head needs out_channels 1, the architecture has {out_channels}")
    if head == "three_class" and out_channels != 3:
        raise ModelFormatError(
            f"{source}: a three_class head needs out_channels 3, the architecture has {out_channels}"
        )


def _weights_bytes(model: nn.Module) -> bytes:
    from safetensors.torch import save

    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    # tied or shared tensors would make safetensors refuse; clone so each entry owns its memory
    state = {name: tensor.clone() for name, tensor in state.items()}
    return save(state, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})


def _config_text(config: Mapping[str, Any]) -> str:
    try:
        return json.dumps(config, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model config must be JSON-serialisable (finite numbers, str keys): {e}") from e


def save_model(model: nn.Module, config: Mapping[str, Any], folder: str | os.PathLike, overwrite: bool = False) -> Path:
    """Save ``model`` and ``config`` as a model folder, atomically.

    Parameters
    ----------
    model
        The network (its ``state_dict`` is saved; a model with an ``architecture`` property,
        like :class:`~segtune.core.models.unet.UNet`, fills in ``config["architecture"]``).
    config
        The config (see the module docstring and :func:`default_config`). Missing
        ``architecture``, ``format`` and ``segtune_version`` are filled in.
    folder
        The model folder to write.
    overwrite
        Replace the weights and config of an existing model folder. Other files in it (a model
        card, a training log, ``checkpoint/``) are kept.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    FileExistsError
        ``folder`` exists (and is not empty) and ``overwrite`` is False.
    ValueError
        The config is not JSON-serialisable or does not describe ``model``.

    Notes
    -----
    A new folder is written complete under a temporary name and renamed into place, so it
    appears whole or not at all. Overwriting replaces ``weights.safetensors`` and then
    ``config.json``, each atomically; a process killed at any moment leaves a folder that
    loads (the architecture never changes between the two, only metrics can lag by one save).
    """
    from segtune import __version__

    folder = Path(folder)
    config = dict(config)
    architecture = getattr(model, "architecture", None)
    if "architecture" not in config:
        if architecture is None:
            raise ValueError(
                "config has no 'architecture' and the model does not describe itself; add config['architecture']"
            )
        config["architecture"] = architecture
    elif architecture is not None and _arch_core(config["architecture"]) != _arch_core(architecture):
        raise ValueError(
            f"config['architecture'] {dict(config['architecture'])} does not describe the model {architecture}"
        )
    if "head" not in config:
        config["head"] = head_of(int(config["architecture"].get("out_channels", 1)))
    config.setdefault("format", FORMAT)
    config.setdefault("format_version", FORMAT_VERSION)
    config["segtune_version"] = config.get("segtune_version") or __version__
    _validate_config(config, str(folder))
    text = _config_text(config)
    weights = _weights_bytes(model)

    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is an existing file, not a model folder; choose another name")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"model folder {folder} already exists; pass overwrite=True (or --overwrite) to replace it"
            )
        atomic_write_bytes(folder / WEIGHTS_NAME, weights)
        atomic_write_text(folder / CONFIG_NAME, text)
        return folder

    # an empty folder (e.g. made by the caller) is replaced
    with atomic_folder(folder) as tmp:
        atomic_write_bytes(tmp / WEIGHTS_NAME, weights)
        atomic_write_text(tmp / CONFIG_NAME, text)
    return folder


def _arch_core(architecture: Mapping[str, Any]) -> dict[str, Any]:
    from segtune.core.models.unet import full_architecture

    return full_architecture(architecture)


# --- loading ---------------------------------------------------------------------------------


def read_config(name_or_folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check the ``config.json`` of a model (a bundled name or a folder), without weights.

    Raises
    ------
    FileNotFoundError
        No such model.
    ModelFormatError
        The folder is not a segtune model (see :func:`load_model`).
    """
    from segtune.core.models.registry import resolve_model

    folder = resolve_model(name_or_folder)
    return _read_config(folder)


def _check_architecture_size(architecture: Mapping[str, Any], source: str) -> None:
    for key in ("spatial_dims", "in_channels", "out_channels", "base_channels", "depth"):
        value = architecture.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ModelFormatError(f"{source}: architecture {key!r} must be a non-negative whole number, got {value!r}")
    if not 0 <= architecture.get("depth", 4) <= 8:
        raise ModelFormatError(f"{source}: architecture 'depth' must be from 0 to 8, got {architecture['depth']}")
    from segtune.core.models.unet import check_size

    try:
        check_size(architecture)
    except ValueError as e:
        raise ModelFormatError(f"{source}: {e}") from None


def _check_inference_fields(config: Mapping[str, Any], spatial_dims: int, source: str) -> None:
    """``normalization``, ``object_diameter`` and ``tile_shape``: what prediction takes from the config."""
    normalization = config.get("normalization")
    if normalization not in (None, False, "none"):
        if not isinstance(normalization, Mapping):
            raise ModelFormatError(
                f"{source}: 'normalization' must be an object like "
                f'{{"method": "percentile", "low": 1, "high": 99.8}}, got {normalization!r}'
            )
        method = normalization.get("method", "percentile")
        if method not in ("percentile", "none", None):
            raise ModelFormatError(
                f"{source}: normalization method {method!r} is not known; this version applies 'percentile' or 'none'"
            )
        low, high = normalization.get("low", DEFAULT_PERCENTILES[0]), normalization.get("high", DEFAULT_PERCENTILES[1])
        if not all(_is_number(v) for v in (low, high)) or not 0 <= low < high <= 100:
            raise ModelFormatError(
                f"{source}: normalization 'low' and 'high' must be percentiles with "
                f"0 <= low < high <= 100, got low={low!r}, high={high!r}"
            )
    diameter = config.get("object_diameter")
    if diameter is not None and not (_is_number(diameter) and diameter > 0):
        raise ModelFormatError(
            f"{source}: 'object_diameter' must be a positive number of pixels or null, got {diameter!r}"
        )
    tile = config.get("tile_shape")
    if tile is not None:
        sizes = [tile] if _is_number(tile) else tile
        if (
            not isinstance(sizes, list)
            or len(sizes) not in (1, spatial_dims)
            or not all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 100_000 for n in sizes)
        ):
            raise ModelFormatError(
                f"{source}: 'tile_shape' must be null or {spatial_dims} positive whole numbers, got {tile!r}"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    if not path.is_file():
        _refuse_pickles(folder)
        raise ModelFormatError(f"{folder} is not a segtune model folder: it has no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFormatError(f"{path} is not valid JSON: {e}") from e
    _validate_config(config, str(path))
    return config


def _refuse_pickles(folder: Path) -> None:
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise ModelFormatError(
            f"{folder} holds {', '.join(pickles)} but no {WEIGHTS_NAME}: segtune never loads pickle "
            f"files (.pt/.pth/.pkl/.ckpt), because opening one can run arbitrary code. Convert the "
            f"weights you trust to safetensors (safetensors.torch.save_file(state_dict, "
            f"'{WEIGHTS_NAME}')) and add a {CONFIG_NAME}"
        )


def load_model(
    name_or_folder: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model folder (or a bundled model by name) without unpickling anything.

    Parameters
    ----------
    name_or_folder
        A bundled model's name (see ``segtune models``) or the path of a model folder.
    device
        Where to put the model: ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.

    Returns
    -------
    model : torch.nn.Module
        The network in eval mode on ``device``.
    config : dict
        The folder's ``config.json``.

    Raises
    ------
    FileNotFoundError
        No bundled model of that name and no such folder.
    ModelFormatError
        The folder lacks ``config.json`` or ``weights.safetensors`` (a folder holding a pickle
        file such as ``model.pt`` instead is refused with a message saying why), the weights
        file is not valid safetensors, or the weights do not fit the architecture.

    Examples
    --------
    >>> model, config = load_model("path/to/model_folder")    # doctest: +SKIP
    >>> config["head"]                                          # doctest: +SKIP
    'three_class'
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from segtune.core.device import select_device
    from segtune.core.models import bioimageio
    from segtune.core.models.registry import resolve_model
    from segtune.core.models.unet import build_model

    if isinstance(name_or_folder, (str, os.PathLike)) and bioimageio.is_bioimageio_package(name_or_folder):
        model, config = bioimageio.load_bioimageio(name_or_folder)  # a bioimage.io package: .zip or unpacked
        return model.to(select_device(device)), config
    folder = resolve_model(name_or_folder)
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        _refuse_pickles(folder)
        raise ModelFormatError(f"{folder} is not a segtune model folder: it has no {WEIGHTS_NAME}")
    config = _read_config(folder)
    try:
        model = build_model(config["architecture"])
    except ValueError as e:
        raise ModelFormatError(f"{folder / CONFIG_NAME}: {e}") from e
    try:
        # safetensors parses a JSON header and raw tensor bytes: no code is ever executed
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelFormatError(
            f"{weights_path} is not a valid safetensors file ({e}); segtune loads nothing else"
        ) from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFormatError(f"{weights_path} does not fit the architecture in {CONFIG_NAME}: {e}") from e
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise ModelFormatError(
            f"{weights_path} holds NaN or infinite weights (in {len(broken)} tensor(s), "
            f"e.g. {broken[0]}); the model cannot predict"
        )
    model.to(select_device(device))
    model.eval()
    return model, config
