"""Keyboard shortcuts for the predict - correct - fine-tune loop, bound as napari viewer key bindings.

All use Shift with a letter: napari's own single-letter keys (P paint, E erase, F fill ...) stay
as they are, and a layer's key bindings (which napari asks first) do not use these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from segtune._napari._jobs import run_guarded

#: (key, what it does), in the order the widget's help lists them.
SHORTCUTS: tuple[tuple[str, str], ...] = (
    ("Shift-R", "predict (Predict tab settings)"),
    ("Shift-T", "fine-tune on the corrected masks (Fine-tune tab settings)"),
    ("Shift-N", "next object: select it and centre the view on it"),
    ("Shift-B", "previous object"),
    ("Shift-D", "accept this plane and go to the next"),
)


def help_text() -> str:
    """The shortcuts as one line of rich text for the widget's help."""
    return "Keys: " + " · ".join(f"<b>{key}</b> {what.split(' (')[0].split(':')[0]}" for key, what in SHORTCUTS)


def bind_shortcuts(viewer: Any, widget: Any) -> dict[str, Callable[[Any], None]]:
    """Bind the shortcuts on ``viewer`` to ``widget``'s panels; returns key -> bound function."""
    actions: dict[str, Callable[[], Any]] = {
        "Shift-R": lambda: widget.predict_panel.run(),
        "Shift-T": lambda: widget.finetune_panel.run(),
        "Shift-N": lambda: widget.correct_panel.step_object(1),
        "Shift-B": lambda: widget.correct_panel.step_object(-1),
        "Shift-D": lambda: widget.correct_panel.accept_plane(),
    }
    bound = {}
    for key, action in actions.items():

        def press(_viewer: Any, action: Callable[[], Any] = action) -> None:
            run_guarded(action)  # a wrong layer or a busy model is a notification, never a traceback

        viewer.bind_key(key, press, overwrite=True)
        bound[key] = press
    return bound
