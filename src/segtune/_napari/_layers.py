"""Choosing layers in the widget, and reading what the core needs (arrays, pixel sizes) from them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QWidget

from segtune._napari._state import UserError
from segtune._napari._writer import pixel_sizes_from_scale

KIND_WORDS = {"image": "an Image", "labels": "a Labels", "shapes": "a Shapes"}


def kind_of(layer: Any) -> str:
    """``"image"``, ``"labels"``, ``"shapes"`` or ``"other"`` (public API only: plugins see proxies)."""
    from napari.layers import Image, Labels, Shapes

    for cls, kind in ((Labels, "labels"), (Image, "image"), (Shapes, "shapes")):
        if isinstance(layer, cls):
            return kind
    return "other"


def same_layer(a: Any, b: Any) -> bool:
    """Whether two references are one layer. napari hands plugin widgets a viewer whose layers
    are wrapped in proxies, a new wrapper each time, so ``is`` cannot tell."""
    if a is None or b is None:
        return a is b
    return getattr(a, "__wrapped__", a) is getattr(b, "__wrapped__", b)


def elide(name: str, limit: int = 40) -> str:
    """A long layer name shortened in the middle, so its start (the image) and its end (the model,
    "[nuclei-2d plane]") both stay readable in a drop-down: ``"cells_…[nuclei-2d]"``."""
    if len(name) <= limit:
        return name
    tail = min(len(name) - name.rfind("["), limit * 3 // 5) if "[" in name else limit // 2
    head = limit - tail - 1
    return f"{name[:head]}…{name[len(name) - tail :]}"


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

    def __init__(
        self,
        viewer: Any,
        kind: str,
        *,
        allow_none: bool = False,
        none_text: str = "(none)",
        parent: QWidget | None = None,
    ) -> None:
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
        return [layer for layer in self.viewer.layers if kind_of(layer) == self.kind]

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
            self.addItem(elide(layer.name), layer)
            self.setItemData(self.count() - 1, layer.name, 3)  # 3 = ToolTipRole: the full name
        index = next(
            (i for i in range(self.count()) if current is not None and same_layer(self.itemData(i), current)), -1
        )
        if index < 0 and not self.allow_none and layers:
            # a new layer of this kind is most likely the one the user wants next
            index = self.count() - 1
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if not same_layer(self.currentData(), current):
            self.currentIndexChanged.emit(self.currentIndex())

    @property
    def layer(self) -> Any:
        """The chosen layer, or None."""
        return self.currentData()

    def set_layer(self, layer: Any) -> None:
        """Choose ``layer`` (it must be in the viewer)."""
        for i in range(self.count()):
            if same_layer(self.itemData(i), layer):
                self.setCurrentIndex(i)
                return
        raise ValueError(
            f"layer {getattr(layer, 'name', layer)!r} is not "
            f"{KIND_WORDS.get(self.kind, self.kind)} layer of this viewer"
        )

    def require(self, what: str) -> Any:
        """The chosen layer, or a plain-language error saying which kind is needed for ``what``."""
        layer = self.layer
        if layer is None:
            raise UserError(
                f"Choose {KIND_WORDS.get(self.kind, self.kind)} layer for {what} (open an image or add a layer first)."
            )
        if not any(same_layer(layer, other) for other in self.viewer.layers):
            self.refresh()
            raise UserError(f"The layer chosen for {what} was removed; choose another.")
        if kind_of(layer) != self.kind:
            raise UserError(
                f"{what[:1].upper()}{what[1:]} needs {KIND_WORDS.get(self.kind, self.kind)} layer, "
                f"'{layer.name}' is a {kind_of(layer)} layer."
            )
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


def plain(values: Any) -> str:
    """Numbers as people write them: ``(np.float64(1.0), 0.325)`` -> ``1 x 0.325``."""
    return " x ".join(f"{float(v):g}" for v in values)


def adopt_pixel_size(labels: Any, reference: Any, scale: Any = None, translate: Any = None) -> bool:
    """Give a Labels layer that was never given pixel sizes (scale all 1, at the origin) the
    pixel size and position of ``reference`` (whose ``scale``/``translate`` may be passed when its
    channel axis is not among the labels' axes), and say so. Returns whether it did."""
    scale = np.asarray(reference.scale if scale is None else scale, dtype=float)
    translate = np.asarray(reference.translate if translate is None else translate, dtype=float)
    own_scale, own_translate = np.asarray(labels.scale, dtype=float), np.asarray(labels.translate, dtype=float)
    if (
        own_scale.shape != scale.shape
        or not np.all(own_scale == 1.0)
        or np.all(scale == 1.0)
        or np.any(own_translate != 0.0)
    ):
        return False
    from napari.utils.notifications import show_info

    labels.scale = tuple(float(s) for s in scale)
    labels.translate = tuple(float(t) for t in translate)
    units = {str(u) for u in getattr(reference, "units", ()) or ()} - {"pixel"}
    unit = f" {units.pop()}" if len(units) == 1 else ""
    show_info(
        f"'{labels.name}' had no pixel size; it now has the pixel size of '{reference.name}' ({plain(scale)}{unit})."
    )
    return True


def check_same_shape(a: Any, b: Any, what_a: str, what_b: str) -> None:
    """Raise a plain-language error when two layers' shapes differ."""
    if tuple(a.data.shape) != tuple(b.data.shape):
        raise UserError(
            f"'{a.name}' ({what_a}) is {' x '.join(map(str, a.data.shape))} pixels but '{b.name}' ({what_b}) is "
            f"{' x '.join(map(str, b.data.shape))}: they must be the same size."
        )


# --- which part of a layer a job works on ----------------------------------------------------

SCOPES = ("all", "plane", "range")


@dataclass
class Selection:
    """The part of a layer a job works on.

    Attributes
    ----------
    data
        That part of the layer's data (lazy where the layer is), channel axis included.
    axes
        Letters naming ``data``'s axes, e.g. ``"YX"``, ``"ZYX"``, ``"TZYX"``, ``"CZYX"``, ``"YXC"``.
    index
        The slices into the layer's non-channel axes that give ``data``.
    scale, translate, units
        For a new layer lying exactly over the selection (non-channel axes).
    """

    data: Any
    axes: str
    index: tuple[slice, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    units: tuple[Any, ...] | None = None

    @property
    def placement(self) -> dict[str, Any]:
        """``scale``, ``translate`` and ``units`` keywords for ``viewer.add_labels``/``add_image``."""
        return {"scale": self.scale, "translate": self.translate, "units": self.units}

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape on the non-channel axes."""
        return tuple(s.stop - s.start for s in self.index)

    @property
    def spatial_axes(self) -> str:
        return self.axes.replace("C", "")


def leading_names(n_leading: int) -> list[str]:
    """Names of the axes in front of Y and X: planes (Z), then time (T) in front of those."""
    if n_leading > 2:
        raise UserError(
            "Images with more than 4 dimensions are not supported here "
            f"(this one has {n_leading + 2} besides channels)."
        )
    return ["T", "Z"][2 - n_leading :]


def current_position(viewer: Any, layer: Any) -> tuple[int, ...]:
    """The data index of ``layer`` the viewer shows now (one int per layer axis, clipped)."""
    point = layer.world_to_data(viewer.dims.point)
    shape = layer.data.shape if not getattr(layer, "rgb", False) else layer.data.shape[:-1]
    return tuple(int(min(max(round(float(p)), 0), n - 1)) for p, n in zip(point, shape, strict=False))


def select(
    viewer: Any,
    layer: Any,
    *,
    scope: str = "all",
    channel_first: bool = False,
    range_axis: int = 0,
    start: int = 0,
    stop: int | None = None,
) -> Selection:
    """Choose the part of ``layer`` to work on.

    Parameters
    ----------
    scope
        ``"all"``: the whole layer. ``"plane"``: the YX plane the viewer shows. ``"range"``:
        ``start..stop`` (inclusive) along leading axis ``range_axis`` (0 is the first axis in
        front of YX); leading axes in front of it stay at the viewer's position, those after it whole.
    channel_first
        The layer's first axis holds channels (an RGB layer's last axis always does).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    rgb = bool(getattr(layer, "rgb", False))
    shape = tuple(int(s) for s in layer.data.shape)
    if rgb:
        shape = shape[:-1]
    channel_axis = 0 if channel_first and not rgb else None
    plain_shape = shape[1:] if channel_axis == 0 else shape
    if len(plain_shape) < 2:
        raise UserError(
            f"'{layer.name}' has {len(plain_shape)} dimension(s) besides channels; an image needs at least Y and X."
        )
    n_leading = len(plain_shape) - 2
    names = leading_names(n_leading)
    position = current_position(viewer, layer)
    if channel_axis == 0:
        position = position[1:]
    index = [slice(0, n) for n in plain_shape]
    if scope == "plane":
        for axis in range(n_leading):
            index[axis] = slice(position[axis], position[axis] + 1)
    elif scope == "range":
        if n_leading == 0:
            raise UserError(f"'{layer.name}' is a single 2D image: there is no range of planes to choose.")
        if not 0 <= range_axis < n_leading:
            raise ValueError(f"range_axis must be between 0 and {n_leading - 1}, got {range_axis}")
        size = plain_shape[range_axis]
        stop = size - 1 if stop is None else stop
        if not 0 <= start <= stop < size:
            raise UserError(
                f"Planes {start} to {stop} do not fit: '{layer.name}' has {size} along that axis (0 to {size - 1})."
            )
        for axis in range(range_axis):
            index[axis] = slice(position[axis], position[axis] + 1)
        index[range_axis] = slice(start, stop + 1)
    full = list(index)
    if channel_axis == 0:
        full.insert(0, slice(None))
    data = layer.data[tuple(full)]
    axes = "".join(names) + "YX"
    if channel_axis == 0:
        axes = "C" + axes
    elif rgb:
        axes = axes + "C"
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    units = tuple(layer.units)
    if channel_axis == 0:
        scale, translate, units = scale[1:], translate[1:], units[1:]
    translate = tuple(t + s * i.start for t, s, i in zip(translate, scale, index, strict=True))
    return Selection(data, axes, tuple(index), scale, translate, units)


def matching_index(
    image: Any, labels: Any, labels_index: tuple[slice, ...], *, channel_first: bool = False
) -> tuple[slice, ...]:
    """The slices of ``image`` (non-channel axes) lying under ``labels[labels_index]``.

    The layers must share their pixel grid (same scale; the labels may be offset by whole pixels,
    e.g. a prediction of a few planes of a stack).
    """
    image_scale = np.asarray(image.scale, dtype=float)
    image_translate = np.asarray(image.translate, dtype=float)
    if channel_first and not image.rgb:
        image_scale, image_translate = image_scale[1:], image_translate[1:]
    image_shape = tuple(
        image.data.shape[:-1] if image.rgb else image.data.shape[1:] if channel_first else image.data.shape
    )
    if len(image_shape) != labels.ndim:
        raise UserError(
            f"'{labels.name}' has {labels.ndim} dimensions but the image '{image.name}' has {len(image_shape)}: "
            "the masks must be drawn on the image (add the Labels layer while the image is open)."
        )
    labels_scale = np.asarray(labels.scale, dtype=float)
    if not np.allclose(labels_scale, image_scale, rtol=1e-3) and adopt_pixel_size(
        labels, image, image_scale, image_translate
    ):
        labels_scale = image_scale
    if not np.allclose(labels_scale, image_scale, rtol=1e-3):
        raise UserError(
            f"'{labels.name}' (pixel size {plain(labels_scale)}) and '{image.name}' ({plain(image_scale)}) "
            "do not share their pixel size."
        )
    offset = (np.asarray(labels.translate, dtype=float) - image_translate) / image_scale
    if not np.allclose(offset, np.round(offset), atol=1e-3):
        raise UserError(f"'{labels.name}' is not aligned with the pixels of '{image.name}'.")
    out = []
    for axis, (s, o, n) in enumerate(zip(labels_index, np.round(offset).astype(int), image_shape, strict=True)):
        start, stop = s.start + o, s.stop + o
        if start < 0 or stop > n:
            raise UserError(
                f"'{labels.name}' reaches beyond '{image.name}' on axis {axis} ({start}..{stop - 1} vs 0..{n - 1}): "
                "the masks must lie on the image."
            )
        out.append(slice(int(start), int(stop)))
    return tuple(out)
