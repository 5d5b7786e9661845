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

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
# "image": linear outputs, an image-to-image network (a Noise2Noise denoiser), not a segmenter
# "multilabel": one sigmoid per class, classes may overlap (label files carry them as bit flags)
HEADS = ("binary", "three_class", "semantic", "multilabel", "image")
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
    from segtune.core.normalize import DEFAULT_PERCENTILES

    out_channels = int(architecture.get("out_channels", 1))
    if head is None:
        head = "binary" if out_channels == 1 else "three_class" if out_channels == 3 else "semantic"
    classes = {
        "binary": ["background", "foreground"],
        "three_class": ["background", "interior", "boundary"],
    }.get(head, [f"class_{i}" for i in range(out_channels)])
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
    out_channels = architecture["out_channels"]
    if head == "binary" and out_channels != 1:
        raise ModelFormatError(f"{source}: a binary head needs out_channels 1, the architecture has {out_channels}")
    if head == "three_class" and out_channels != 3:
        raise ModelFormatError(f"{source}: a three_class head needs out_channels 3, the architecture has {out_channels}")


# --- atomic writes ---------------------------------------------------------------------------


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the file is
    renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible (nor needed) on Windows
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            raise ValueError("config has no 'architecture' and the model does not describe itself; add config['architecture']")
        config["architecture"] = architecture
    elif architecture is not None and _arch_core(config["architecture"]) != _arch_core(architecture):
        raise ValueError(
            f"config['architecture'] {dict(config['architecture'])} does not describe the model {architecture}"
        )
    if "head" not in config:
        out_channels = int(config["architecture"].get("out_channels", 1))
        config["head"] = "binary" if out_channels == 1 else "three_class" if out_channels == 3 else "semantic"
    config.setdefault("format", FORMAT)
    config.setdefault("format_version", FORMAT_VERSION)
    config["segtune_version"] = config.get("segtune_version") or __version__
    _validate_config(config, str(folder))
    text = _config_text(config)
    weights = _weights_bytes(model)

    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise FileExistsError(f"model folder {folder} already exists; pass overwrite=True (or --overwrite) to replace it")
        atomic_write_bytes(folder / WEIGHTS_NAME, weights)
        atomic_write_text(folder / CONFIG_NAME, text)
        return folder

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        (tmp / WEIGHTS_NAME).write_bytes(weights)
        (tmp / CONFIG_NAME).write_text(text, encoding="utf-8")
        for name in (WEIGHTS_NAME, CONFIG_NAME):
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        if folder.is_dir():  # an empty folder (e.g. made by the caller) is replaced
            folder.rmdir()
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(folder.parent)
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


def load_model(name_or_folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
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
    from segtune.core.models.registry import resolve_model
    from segtune.core.models.unet import build_model

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
        raise ModelFormatError(f"{weights_path} is not a valid safetensors file ({e}); segtune loads nothing else") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFormatError(f"{weights_path} does not fit the architecture in {CONFIG_NAME}: {e}") from e
    model.to(select_device(device))
    model.eval()
    return model, config
