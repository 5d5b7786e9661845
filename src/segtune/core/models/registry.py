"""The single table of bundled pretrained models, and turning a model name or path into a folder.

Each bundled model is a folder ``segtune/pretrained/<name>/`` holding ``config.json``,
``weights.safetensors`` and ``MODEL_CARD.md``. Adding one means adding the folder and one
entry to :data:`BUNDLED_MODELS`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUNDLED_MODELS", "PRETRAINED_DIR", "BundledModel", "list_models", "model_description", "resolve_model"]

PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "pretrained"

# name -> folder under PRETRAINED_DIR (trained by scripts/train_pretrained.py; see each MODEL_CARD.md)
BUNDLED_MODELS: dict[str, str] = {
    "nuclei-2d": "nuclei-2d",
    "membranes-2d": "membranes-2d",
    "nuclei-3d": "nuclei-3d",
    "nuclei-he-2d": "nuclei-he-2d",
}


@dataclass(frozen=True)
class BundledModel:
    """A bundled model: its name, its folder and a one-line description."""

    name: str
    folder: Path
    description: str


def model_description(folder: str | os.PathLike) -> str:
    """One line describing the model in ``folder``: ``config["description"]``, else the model
    card's first paragraph line, else its head and dimensions."""
    folder = Path(folder)
    config: dict = {}
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    if isinstance(config.get("description"), str) and config["description"].strip():
        return config["description"].strip().splitlines()[0]
    card = folder / "MODEL_CARD.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "---", "<!--")):
                return line
    architecture = config.get("architecture", {}) if isinstance(config.get("architecture"), dict) else {}
    if architecture:
        return f"{architecture.get('spatial_dims', '?')}D U-Net, {config.get('head', '?')} head"
    return "(no description)"


def list_models() -> list[BundledModel]:
    """The bundled models that are present in this installation, in table order."""
    models = []
    for name, folder_name in BUNDLED_MODELS.items():
        folder = PRETRAINED_DIR / folder_name
        if (folder / "config.json").is_file():
            models.append(BundledModel(name, folder, model_description(folder)))
    return models


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """The folder of a bundled model (by name) or of a model folder given as a path.

    An existing folder wins over a bundled name, so a local folder called like a bundled
    model is what you get when you name it.

    Raises
    ------
    FileNotFoundError
        Neither a folder nor a bundled model of that name; the message lists the known names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name in BUNDLED_MODELS:
        folder = PRETRAINED_DIR / BUNDLED_MODELS[name]
        if folder.is_dir():
            return folder
        raise FileNotFoundError(
            f"bundled model {name!r} is listed but its folder {folder} is missing from this installation"
        )
    known = ", ".join(BUNDLED_MODELS)
    if path.exists():
        raise FileNotFoundError(f"model {name!r} is a file, not a model folder (config.json + weights.safetensors)")
    raise FileNotFoundError(f"no model folder {name!r} and no bundled model of that name (bundled models: {known})")
