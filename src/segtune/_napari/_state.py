"""What the widget's panels share: the current model, its config, where it lives, the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal


class ModelState(QObject):
    """The one current model every panel uses.

    Attributes
    ----------
    model
        The network (a ``torch.nn.Module`` on the CPU between jobs), or None before one is chosen.
    config
        Its config dict (see :mod:`segtune.core.models.store`).
    source
        Where it came from, in words: a bundled name, a folder, "new (untrained)", "fine-tuned".
    folder
        The model folder on disk it was loaded from or last saved to; None for a model that
        only lives in memory.
    unsaved
        True when the model in memory differs from ``folder`` (new or fine-tuned).
    device_choice
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"`` (see :func:`segtune.core.device.select_device`).
    busy
        What long job holds the model now ("predicting", "fine-tuning" ...), or "" when none:
        two jobs never use (or change) the same model at once.
    """

    changed = Signal()
    busy_changed = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = None
        self.config: dict[str, Any] = {}
        self.source: str = ""
        self.folder: Path | None = None
        self.unsaved: bool = False
        self.device_choice: str = "auto"
        self.busy: str = ""

    def set_model(self, model: Any, config: dict[str, Any], *, source: str, folder: Path | None, unsaved: bool) -> None:
        """Make ``model`` the current model and tell every panel."""
        self.model = model
        self.config = dict(config)
        self.source = source
        self.folder = Path(folder) if folder is not None else None
        self.unsaved = unsaved
        self.changed.emit()

    def set_busy(self, what: str) -> None:
        self.busy = what
        self.busy_changed.emit(what)

    @property
    def name(self) -> str:
        """A short name for layer names: the config's ``name``, else the folder's, else "model"."""
        name = self.config.get("name")
        if isinstance(name, str) and name:
            return name
        if self.folder is not None:
            return self.folder.name
        return "model"

    @property
    def spatial_dims(self) -> int:
        return int(self.config.get("architecture", {}).get("spatial_dims", 2))

    @property
    def in_channels(self) -> int:
        return int(self.config.get("architecture", {}).get("in_channels", 1))

    def require_model(self) -> None:
        """Raise a plain-language error when no model is chosen yet."""
        if self.model is None:
            raise UserError("Choose a model first (Model tab: a bundled model, a model folder, or a new one).")

    def require_idle(self, what: str) -> None:
        if self.busy:
            raise UserError(f"The model is busy {self.busy}; wait for it to finish (or press Cancel) before {what}.")


class UserError(ValueError):
    """Something the user can fix (wrong layer, no model chosen); shown as-is, no traceback."""
