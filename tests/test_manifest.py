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
