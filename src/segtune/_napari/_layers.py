"""Choosing layers in the widget, and reading what the core needs (arrays, pixel sizes) from them."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QWidget

from segtune._napari._state import UserError
from segtune._napari._writer import pixel_sizes_from_scale

KIND_WORDS = {"image": "an Image", "labels": "a Labels", "shapes": "a Shapes"}


class LayerChoice(QComboBox):
    """A drop-down of the viewer's layers of one kind, kept in step with the layer list.

    Parameters
    ----------
    viewer
        The napari viewer.
    kind
        ``"image"``, ``"labels"`` or ``"shapes"``.
    allow_none
        Offer a first entry meaning "no layer" (for optional inputs).
    none_text
        The words of that entry.
    """

    def __init__(self, viewer: Any, kind: str, *, allow_none: bool = False, none_text: str = "(none)", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.kind = kind
        self.allow_none = allow_none
        self.none_text = none_text
        self.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved, events.changed):
            emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self.refresh()

    def _layers(self) -> list[Any]:
        return [layer for layer in self.viewer.layers if layer._type_string == self.kind]

    def _on_layers_changed(self, event: Any = None) -> None:
        value = getattr(event, "value", None)
        if value is not None and hasattr(value, "events") and hasattr(value.events, "name"):
            value.events.name.connect(self._on_layers_changed)
        try:
            self.refresh()
        except RuntimeError:  # the Qt widget is gone (the dock was closed); napari may still call us
            pass

    def refresh(self) -> None:
        """Rebuild the list, keeping the chosen layer when it still exists."""
        current = self.currentData()
        layers = self._layers()
        self.blockSignals(True)
        self.clear()
        if self.allow_none:
            self.addItem(self.none_text, None)
        for layer in layers:
            self.addItem(layer.name, layer)
        index = next((i for i in range(self.count()) if self.itemData(i) is current and current is not None), -1)
        if index < 0 and not self.allow_none and layers:
            # a new layer of this kind is most likely the one the user wants next
            index = self.count() - 1
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if self.currentData() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    @property
    def layer(self) -> Any:
        """The chosen layer, or None."""
        return self.currentData()

    def set_layer(self, layer: Any) -> None:
        """Choose ``layer`` (it must be in the viewer)."""
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return
        raise ValueError(f"layer {getattr(layer, 'name', layer)!r} is not {KIND_WORDS.get(self.kind, self.kind)} layer of this viewer")

    def require(self, what: str) -> Any:
        """The chosen layer, or a plain-language error saying which kind is needed for ``what``."""
        layer = self.layer
        if layer is None:
            raise UserError(f"Choose {KIND_WORDS.get(self.kind, self.kind)} layer for {what} (open an image or add a layer first).")
        if layer not in self.viewer.layers:
            self.refresh()
            raise UserError(f"The layer chosen for {what} was removed; choose another.")
        if layer._type_string != self.kind:
            raise UserError(f"{what[:1].upper()}{what[1:]} needs {KIND_WORDS.get(self.kind, self.kind)} layer, '{layer.name}' is a {layer._type_string} layer.")
        return layer


def layer_pixel_sizes(layer: Any, ndim: int | None = None) -> tuple[float | None, float | None, float | None]:
    """(Z, Y, X) in micrometres for a layer: from the file it was read from, else from its scale."""
    sizes = (layer.metadata or {}).get("physical_pixel_sizes")
    if sizes is not None and len(sizes) == 3:
        return tuple(None if s is None else float(s) for s in sizes)  # type: ignore[return-value]
    ndim = layer.ndim if ndim is None else ndim
    return pixel_sizes_from_scale(layer.scale, ndim)


def safe_name(text: str) -> str:
    """A layer name made safe as a file name: ``"cells.tif [unet] labels"`` -> ``cells_unet_labels``."""
    text = re.sub(r"\.(ome\.)?(tiff?|czi|png|jpe?g)\b", "", text, flags=re.IGNORECASE)
    text = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
    return text or "layer"


def labels_array(layer: Any) -> np.ndarray:
    """A Labels layer's data in memory (a dask or zarr layer is read once)."""
    return np.asarray(layer.data)


def check_same_shape(a: Any, b: Any, what_a: str, what_b: str) -> None:
    """Raise a plain-language error when two layers' shapes differ."""
    if tuple(a.data.shape) != tuple(b.data.shape):
        raise UserError(
            f"'{a.name}' ({what_a}) is {' x '.join(map(str, a.data.shape))} pixels but '{b.name}' ({what_b}) is "
            f"{' x '.join(map(str, b.data.shape))}: they must be the same size."
        )
