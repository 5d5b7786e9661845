"""napari "Open Sample" data: synthetic nuclei made by the project, with their true labels."""

from __future__ import annotations

from typing import Any

from segtune._napari._reader import image_layers
from segtune._resources import sample_file
from segtune.core.io import open_image, read_labels


def _with_labels(image_name: str, labels_name: str) -> list[tuple[Any, dict[str, Any], str]]:
    layers = image_layers(open_image(sample_file(image_name)))
    image_meta = layers[0][1]
    labels = read_labels(sample_file(labels_name))
    meta = {
        "name": f"{image_name} [true labels]",
        "scale": image_meta["scale"],
        "units": image_meta["units"],
        "opacity": 0.5,
        "visible": False,
    }
    layers.append((labels, meta, "labels"))
    return layers


def nuclei_2d() -> list[tuple[Any, dict[str, Any], str]]:
    """512 x 512 synthetic Hoechst nuclei (0.325 um pixels) and their instance labels."""
    return _with_labels("nuclei_2d.tif", "nuclei_2d_labels.tif")


def nuclei_3d() -> list[tuple[Any, dict[str, Any], str]]:
    """24 x 192 x 192 synthetic nuclei stack (0.65 um Z steps) and its instance labels."""
    return _with_labels("nuclei_3d.tif", "nuclei_3d_labels.tif")


def nuclei_czi() -> list[tuple[Any, dict[str, Any], str]]:
    """A two-channel CZI (nuclei + cytoplasm) written with Zeiss's pylibCZIrw."""
    return image_layers(open_image(sample_file("nuclei_2ch.czi")))
