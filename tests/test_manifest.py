"""The npe2 manifest is valid and the one in the package is the top-level napari.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_npe2_validates_the_installed_plugin() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-segtune"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_packaged_manifest_is_the_top_level_file() -> None:
    import segtune

    packaged = Path(segtune.__file__).parent / "napari.yaml"
    assert packaged.read_text() == (REPO / "napari.yaml").read_text()


def test_the_napari_extra_brings_the_qt_binding_napari_recommends() -> None:
    from importlib.metadata import requires

    # napari's own "pyqt" extra (what napari[all] installs) names the binding it recommends
    recommended = [r for r in requires("napari") or [] if r.replace("'", '"').endswith('extra == "pyqt"')]
    assert recommended and recommended[0].startswith("napari[pyqt6]")
    text = (REPO / "pyproject.toml").read_text()
    napari_extra = next(line for line in text.splitlines() if line.startswith("napari = ["))
    assert '"napari[pyqt6]' in napari_extra and "PyQt5" not in napari_extra
