"""Correct tab: clean up and edit a Labels layer object by object, every step undoable with Ctrl-Z.

Each button is one call into :mod:`segtune.core.labels` on the chosen Labels layer (the plane
on screen, or the whole stack). The change is written back through ``Labels.data_setitem``
inside ``Labels.block_history()``, napari's own edit history, so one action is one Ctrl-Z (and
Ctrl-Shift-Z brings it back), exactly like a brush stroke. Only the pixels that changed are
written, so an edit on one plane of a large stack stays cheap.

Click tools (split, merge, delete, pick) are mouse callbacks on the layer: with a tool chosen the
layer goes to napari's pan/zoom mode, so a click acts on the object under the cursor instead of
painting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from segtune._napari._jobs import guarded, run_guarded
from segtune._napari._layers import LayerChoice, current_position, layer_pixel_sizes, same_layer
from segtune._napari._state import UserError

SCOPE_TEXT = {"this plane": "plane", "each plane (2D)": "planes", "whole stack": "stack"}
DEFAULT_MIN_PIXELS = 30  # "smaller than" starts at specks of 30 pixels, shown in the layer's unit
TOOLS = {
    "paint": "",
    "pick": "pick",
    "split": "split",
    "merge": "merge",
    "delete": "delete",
}
TOOL_TIPS = {
    "paint": "Clicks paint or erase with napari's own tools (no object tool).",
    "pick": "Click an object to select it (its area is shown below).",
    "split": "Click an object that holds two or more nuclei: it is cut at its distance peaks (watershed).",
    "merge": "Click two objects, one after the other: the second becomes part of the first.",
    "delete": "Click an object to delete it.",
}


class CorrectPanel(QWidget):
    """Cleanup and per-object editing of a Labels layer.

    Attributes tests drive: ``labels_layer``, ``scope``, ``fill_button``, ``min_size``,
    ``remove_small_button``, ``border_button``, ``radius``, ``smooth_button``, ``dilate_button``,
    ``erode_button``, ``relabel_button``, ``split_all_button``, ``tool`` (a ``QButtonGroup``
    through :meth:`set_tool`), ``previous_button``, ``next_button``, ``accept_button``,
    ``count_label``, ``status``; ``click(layer, data_position)`` is what
    a mouse click with the chosen tool does. ``edited`` is emitted after each change.
    """

    edited = Signal()

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.tool_name = ""
        self._merge_first: int = 0
        self._hooked: Any = None  # the layer our mouse callback and events are attached to

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.labels_layer = LayerChoice(viewer, "labels")
        self.labels_layer.setToolTip(
            "The masks to correct (selecting a Labels layer in napari's layer list chooses it here)."
        )
        self.scope = QComboBox()
        self.scope.addItems(list(SCOPE_TEXT))
        self.scope.setToolTip(
            "Apply the buttons to the plane on screen only, to every plane as a 2D image of its own "
            "(planewise), or to the whole stack as 3D objects. Clicks act on the plane on screen unless "
            "'whole stack' is chosen."
        )
        form.addRow("Masks", self.labels_layer)
        form.addRow("Where", self.scope)
        layout.addLayout(form)

        box = QGroupBox("Clean up")
        grid = QGridLayout(box)
        self.fill_button = QPushButton("Fill holes")
        self.fill_button.setToolTip("Fill the background holes inside every object.")
        self.border_button = QPushButton("Remove edge objects")
        self.border_button.setToolTip(
            "Delete the objects that touch the image border (they are cut off and measure wrong)."
        )
        self.min_size = QDoubleSpinBox()
        self.min_size.setRange(0, 1e9)
        self.remove_small_button = QPushButton("Remove smaller")
        self.remove_small_button.setToolTip(
            "Delete objects smaller than this (area per plane, or volume for a whole 3D stack)."
        )
        self.radius = QDoubleSpinBox()
        self.radius.setRange(0.5, 50)
        self.radius.setSingleStep(0.5)
        self.radius.setValue(1.0)
        self.radius.setSuffix(" px")
        self.radius.setToolTip("How far (in pixels) smoothing, growing and shrinking reach.")
        self.smooth_button = QPushButton("Smooth")
        self.smooth_button.setToolTip(
            "Round off jagged outlines (Gaussian blur of each object's mask, cut at one half)."
        )
        self.dilate_button = QPushButton("Grow")
        self.dilate_button.setToolTip(
            "Grow every object into the background (dilate); neighbours touch but never merge."
        )
        self.erode_button = QPushButton("Shrink")
        self.erode_button.setToolTip("Shrink every object (erode).")
        self.split_all_button = QPushButton("Split all")
        self.split_all_button.setToolTip(
            "Cut every object at its distance peaks (watershed): separates merged round objects."
        )
        self.relabel_button = QPushButton("Renumber 1..n")
        self.relabel_button.setToolTip("Renumber the objects consecutively (relabel); colours change.")
        grid.addWidget(self.fill_button, 0, 0)
        grid.addWidget(self.border_button, 0, 1)
        grid.addWidget(self.min_size, 1, 0)
        grid.addWidget(self.remove_small_button, 1, 1)
        grid.addWidget(self.radius, 2, 0)
        outline = QHBoxLayout()
        for button in (self.smooth_button, self.dilate_button, self.erode_button):
            outline.addWidget(button)
        grid.addLayout(outline, 2, 1)
        grid.addWidget(self.split_all_button, 3, 0)
        grid.addWidget(self.relabel_button, 3, 1)
        layout.addWidget(box)

        box = QGroupBox("Click on an object to")
        tools = QGridLayout(box)
        self.tool = QButtonGroup(self)
        self.tool.setExclusive(True)
        for index, (text, tip) in enumerate(TOOL_TIPS.items()):
            button = QPushButton(text)
            button.setCheckable(True)
            button.setToolTip(tip)
            self.tool.addButton(button, index)
            tools.addWidget(button, index // 3, index % 3)
        self.tool.button(0).setChecked(True)
        layout.addWidget(box)

        row = QHBoxLayout()
        self.previous_button = QPushButton("◀ Object")
        self.previous_button.setToolTip("Select the previous object and centre the view on it (Shift-B).")
        self.next_button = QPushButton("Object ▶")
        self.next_button.setToolTip("Select the next object and centre the view on it (Shift-N).")
        self.accept_button = QPushButton("Plane done ▶")
        self.accept_button.setToolTip("Mark this plane as corrected and go to the next plane (Shift-D).")
        for button in (self.previous_button, self.next_button, self.accept_button):
            row.addWidget(button)
        layout.addLayout(row)

        self.count_label = QLabel("")
        self.count_label.setWordWrap(True)
        self.status = QLabel("Undo any step with Ctrl-Z (napari's undo), redo with Ctrl-Shift-Z.")
        self.status.setWordWrap(True)
        layout.addWidget(self.count_label)
        layout.addWidget(self.status)
        layout.addStretch(1)

        actions: dict[QPushButton, Callable[[], Any]] = {
            self.fill_button: self.fill_holes,
            self.border_button: self.remove_border,
            self.remove_small_button: self.remove_small,
            self.smooth_button: lambda: self.outline("smooth"),
            self.dilate_button: lambda: self.outline("dilate"),
            self.erode_button: lambda: self.outline("erode"),
            self.split_all_button: self.split_all,
            self.relabel_button: self.relabel,
            self.previous_button: lambda: self.step_object(-1),
            self.next_button: lambda: self.step_object(1),
            self.accept_button: self.accept_plane,
        }
        for button, action in actions.items():
            button.clicked.connect(guarded(action))
        self.tool.idClicked.connect(lambda index: run_guarded(self.set_tool, list(TOOLS.values())[index]))
        self.labels_layer.currentIndexChanged.connect(self._layer_changed)
        self.scope.currentIndexChanged.connect(self._unit_changed)
        self.scope.currentIndexChanged.connect(self._schedule_count)
        viewer.dims.events.current_step.connect(self._schedule_count)
        viewer.layers.selection.events.active.connect(self._active_changed)
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(150)  # several paint events in a row: count once
        self._count_timer.timeout.connect(self.update_count)
        self._layer_changed()

    # --- which layer --------------------------------------------------------------------------

    def _active_changed(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if layer is not None and any(
            same_layer(layer, self.labels_layer.itemData(i)) for i in range(self.labels_layer.count())
        ):
            try:
                self.labels_layer.set_layer(layer)
            except (ValueError, RuntimeError):
                pass

    def _layer_changed(self, *_: Any) -> None:
        layer = self.labels_layer.layer
        if self._hooked is not None and not same_layer(layer, self._hooked):
            self._unhook(self._hooked)
        if layer is not None and self._hooked is None:
            layer.mouse_drag_callbacks.append(self._on_mouse)
            for emitter in (layer.events.paint, layer.events.set_data, layer.events.data, layer.events.selected_label):
                emitter.connect(self._schedule_count)
            self._hooked = layer
        self.scope.setEnabled(layer is not None and layer.ndim > 2)
        self._merge_first = 0
        self._unit_changed()
        self.update_count()

    def _unhook(self, layer: Any) -> None:
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        for emitter in (layer.events.paint, layer.events.set_data, layer.events.data, layer.events.selected_label):
            emitter.disconnect(self._schedule_count)
        self._hooked = None

    def _pixel_size(self, layer: Any, ndim: int) -> tuple[float, ...] | None:
        """Micrometres per pixel along the last ``ndim`` axes, or None when the layer has none."""
        sizes = layer_pixel_sizes(layer)[-ndim:]
        return None if any(s is None for s in sizes) else tuple(float(s) for s in sizes)

    def _volume(self) -> bool:
        layer = self.labels_layer.layer
        return (
            layer is not None and layer.ndim > 2 and SCOPE_TEXT[self.scope.currentText()] == "stack" and layer.ndim == 3
        )

    def _unit_changed(self, *_: Any) -> None:
        layer = self.labels_layer.layer
        ndim = 3 if self._volume() else 2
        size = self._pixel_size(layer, ndim) if layer is not None else None
        suffix = (" µm³" if ndim == 3 else " µm²") if size is not None else (" voxels" if ndim == 3 else " px")
        if suffix != self.min_size.suffix():  # a new unit: the default of 30 pixels, in that unit
            self.min_size.setDecimals(3 if size is not None else 0)
            self.min_size.setValue(DEFAULT_MIN_PIXELS * (float(np.prod(size)) if size is not None else 1.0))
        self.min_size.setSuffix(suffix)

    # --- applying a change as one undoable step -----------------------------------------------

    def _regions(self, layer: Any, scope: str | None = None) -> list[tuple[int, ...]]:
        """Index tuples of the leading axes, one per 2D plane or 3D volume the step works on."""
        scope = scope or SCOPE_TEXT[self.scope.currentText()]
        if layer.ndim == 2:
            return [()]
        if scope == "plane":
            return [current_position(self.viewer, layer)[:-2]]
        if scope == "planes":
            return [tuple(index) for index in np.ndindex(*layer.data.shape[:-2])]
        if layer.ndim == 3:
            return [()]
        return [tuple(index) for index in np.ndindex(*layer.data.shape[:-3])]  # each time point's volume

    def apply(self, func: Callable[[np.ndarray], np.ndarray], what: str, scope: str | None = None) -> int:
        """Replace each region of the layer by ``func(region)`` as one undo step; returns pixels changed.

        ``scope`` overrides the Where choice (``"plane"``, ``"planes"``, ``"stack"``)."""
        layer = self.labels_layer.require(what)
        changes = []
        for index in self._regions(layer, scope):
            before = np.asarray(layer.data[index])
            after = func(before)
            changed = np.nonzero(before != after)
            if changed[0].size:
                values = after[changed]
                if values.max() > np.iinfo(layer.data.dtype).max:
                    raise UserError(
                        f"'{layer.name}' stores labels as {layer.data.dtype}, too small for label {values.max()}."
                    )
                full = tuple(np.full(changed[0].shape, i) for i in index) + changed
                changes.append((full, values.astype(layer.data.dtype)))
        total = sum(values.size for _, values in changes)
        if not changes:
            self.status.setText(f"{what[:1].upper()}{what[1:]}: nothing to change.")
            return 0
        with layer.block_history():
            for full, values in changes:
                layer.data_setitem(full, values, refresh=False)
        layer.refresh()
        self.status.setText(f"{what[:1].upper()}{what[1:]}: {total} pixels changed (Ctrl-Z undoes it).")
        self.update_count()
        self.edited.emit()
        return total

    # --- the buttons --------------------------------------------------------------------------

    def fill_holes(self) -> int:
        from segtune.core.labels import fill_holes

        return self.apply(fill_holes, "fill holes")

    def remove_border(self) -> int:
        from segtune.core.labels import remove_border

        return self.apply(remove_border, "remove edge objects")

    def remove_small(self) -> int:
        from segtune.core.labels import remove_small

        layer = self.labels_layer.require("removing small objects")
        minimum = self.min_size.value()

        def remove(region: np.ndarray) -> np.ndarray:
            return remove_small(region, minimum, pixel_size=self._pixel_size(layer, region.ndim))

        return self.apply(remove, "remove small objects")

    def outline(self, how: str) -> int:
        from segtune.core import labels as lab

        func = {"smooth": lab.smooth, "dilate": lab.dilate, "erode": lab.erode}[how]
        radius = self.radius.value()
        return self.apply(
            lambda region: func(region, radius), {"smooth": "smooth", "dilate": "grow", "erode": "shrink"}[how]
        )

    def split_all(self) -> int:
        from segtune.core.labels import split_objects

        layer = self.labels_layer.require("splitting")
        # new pieces are numbered after the whole layer's largest id, and on from one plane to the next
        next_label = [int(np.max(layer.data)) + 1 if layer.data.size else 1]

        def split(region: np.ndarray) -> np.ndarray:
            out = split_objects(region, next_label=next_label[0])
            next_label[0] = max(next_label[0], int(out.max()) + 1)
            return out

        return self.apply(split, "split all")

    def relabel(self) -> int:
        from segtune.core.labels import relabel_sequential

        layer = self.labels_layer.require("renumbering")
        if len(self._regions(layer)) > 1 or layer.ndim > 2 and SCOPE_TEXT[self.scope.currentText()] != "stack":
            raise UserError(
                "Renumbering works on the whole layer: "
                "choose 'whole stack' (a single plane would clash with the others)."
            )
        return self.apply(relabel_sequential, "renumber")

    # --- clicks -------------------------------------------------------------------------------

    def set_tool(self, name: str) -> None:
        """Choose the click tool (``""``, ``"pick"``, ``"split"``, ``"merge"``, ``"delete"``)."""
        if name not in TOOLS.values():
            raise ValueError(f"tool must be one of {sorted(TOOLS.values())}, got {name!r}")
        self.tool_name = name
        self._merge_first = 0
        self.tool.button(list(TOOLS.values()).index(name)).setChecked(True)
        layer = self.labels_layer.layer
        if name and layer is not None:
            layer.mode = "pan_zoom"  # clicks act on objects instead of painting
        self.status.setText(TOOL_TIPS[next(k for k, v in TOOLS.items() if v == name)])

    def _on_mouse(self, layer: Any, event: Any) -> None:
        if not self.tool_name or event.type != "mouse_press" or getattr(event, "button", 1) != 1:
            return
        position = layer.world_to_data(event.position)
        run_guarded(self.click, layer, position)

    def click(self, layer: Any, position: Any) -> None:
        """What a click at ``position`` (data coordinates of ``layer``) does with the chosen tool."""
        from segtune.core import labels as lab

        index = tuple(int(round(float(p))) for p in position)
        label = lab.label_at(layer.data, index)
        if not label:
            self.status.setText("That is background: click inside an object.")
            return
        layer.selected_label = label
        scope = "stack" if SCOPE_TEXT[self.scope.currentText()] == "stack" else "plane"  # a click is on one plane
        if self.tool_name == "pick":
            self.update_count()
            return
        if self.tool_name == "delete":
            self.apply(lambda region: lab.delete_objects(region, [label]), f"delete object {label}", scope)
        elif self.tool_name == "merge":
            if not self._merge_first or self._merge_first == label:
                self._merge_first = label
                self.status.setText(f"Object {label} chosen: click the object to merge into it.")
                return
            first, self._merge_first = self._merge_first, 0
            self.apply(lambda region: lab.merge_objects(region, [first, label]), f"merge {label} into {first}", scope)
            layer.selected_label = first
        elif self.tool_name == "split":
            top = int(np.max(layer.data))
            self.apply(
                lambda region: lab.split_object(region, label, next_label=top + 1), f"split object {label}", scope
            )
        self.update_count()

    # --- going through the objects and planes --------------------------------------------------

    def step_object(self, step: int) -> int:
        """Select the next (``step=1``) or previous (``-1``) object by id and centre the view on it."""
        layer = self.labels_layer.require("going through the objects")
        data = np.asarray(layer.data)
        ids = np.unique(data)
        ids = ids[ids != 0]
        if ids.size == 0:
            raise UserError(f"'{layer.name}' has no objects.")
        current = int(layer.selected_label)
        later = ids[ids > current] if step > 0 else ids[ids < current][::-1]
        label = int(later[0]) if later.size else int(ids[0] if step > 0 else ids[-1])  # wrap around
        layer.selected_label = label
        centre = np.mean(np.nonzero(data == label), axis=1)
        world = layer.data_to_world(centre)
        for axis in range(layer.ndim - 2):  # the object's middle plane
            self.viewer.dims.set_point(self.viewer.dims.ndim - layer.ndim + axis, world[axis])
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari >= 0.9
        camera.center = tuple(world[-2:])
        self.update_count()
        return label

    def accept_plane(self) -> int:
        """Record the plane on screen as corrected (in the layer's metadata) and show the next one."""
        layer = self.labels_layer.require("accepting a plane")
        if layer.ndim < 3:
            raise UserError(f"'{layer.name}' has one plane: there is no next plane.")
        position = list(current_position(self.viewer, layer))
        plane = position[-3]
        accepted = sorted(set(layer.metadata.get("segtune_accepted_planes", [])) | {int(plane)})
        layer.metadata["segtune_accepted_planes"] = accepted
        if plane + 1 < layer.data.shape[-3]:
            position[-3] = plane + 1
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, layer.data_to_world(position)[-3])
        self.status.setText(f"Plane {plane} accepted; corrected planes: {', '.join(map(str, accepted))}.")
        self.update_count()
        return plane

    # --- object count and the selected object's size ------------------------------------------

    def _schedule_count(self, *_: Any) -> None:
        try:
            self._count_timer.start()
        except RuntimeError:  # the widget is gone; napari may still send events
            pass

    def update_count(self) -> None:
        from segtune.core.labels import object_count

        layer = self.labels_layer.layer
        if layer is None:
            self.count_label.setText("No Labels layer: predict first, or add one.")
            return
        data = np.asarray(layer.data)
        count = object_count(data)
        text = f"<b>{count}</b> objects in '{layer.name}'"
        plane = None
        if layer.ndim > 2:
            plane = data[current_position(self.viewer, layer)[:-2]]
            text += f" ({object_count(plane)} on this plane)"
        selected = int(layer.selected_label)
        volume = layer.ndim == 3 and SCOPE_TEXT[self.scope.currentText()] == "stack"
        region = plane if layer.ndim > 2 and not volume else data
        if selected and np.any(region == selected):
            pixels = int(np.count_nonzero(region == selected))
            size = self._pixel_size(layer, 3 if volume else 2)
            amount = f"{pixels} {'voxels' if volume else 'px'}"
            if size is not None:
                amount += f" = {pixels * float(np.prod(size)):.1f} {'µm³' if volume else 'µm²'}"
            where = " on this plane" if region is plane else ""
            text += f"; selected object {selected}{where}: {amount}"
        self.count_label.setText(text)

    @property
    def count(self) -> int:
        """The number of objects in the chosen layer (what ``count_label`` shows)."""
        from segtune.core.labels import object_count

        layer = self.labels_layer.layer
        return 0 if layer is None else object_count(np.asarray(layer.data))
