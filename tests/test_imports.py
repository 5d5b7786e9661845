"""Importing segtune and its core never pulls in a GUI toolkit; every manifest command imports."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

GUI_MODULES = ("napari", "qtpy", "magicgui", "superqt", "vispy", "PyQt5", "PyQt6", "PySide2", "PySide6")


@pytest.mark.parametrize(
    "statement",
    [
        "import segtune",
        "import segtune.core",
        "import segtune.cli; segtune.cli.build_parser()",
        (
            "import segtune.core.io, segtune.core.progress, segtune.core.normalize, "
            "segtune.core.device, segtune.core.synthetic"
        ),
    ],
)
def test_headless_imports_load_no_gui(statement: str) -> None:
    code = f"{statement}\nimport sys\nprint(','.join(m for m in {GUI_MODULES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"{statement!r} imported {result.stdout.strip()}"


def test_every_core_module_is_headless() -> None:
    """Import each module under segtune.core in a fresh interpreter and check sys.modules."""
    modules = sorted(
        "segtune." + ".".join(p.relative_to(REPO / "src" / "segtune").with_suffix("").parts)
        for p in (REPO / "src" / "segtune" / "core").rglob("*.py")
    )
    modules = [m.removesuffix(".__init__") for m in modules]
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    code += f"print(','.join(m for m in {GUI_MODULES!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"segtune.core imported {result.stdout.strip()}"


def test_every_manifest_command_imports() -> None:
    import importlib

    manifest = yaml.safe_load((REPO / "napari.yaml").read_text())
    for command in manifest["contributions"]["commands"]:
        module, _, name = command["python_name"].partition(":")
        assert callable(getattr(importlib.import_module(module), name)), command["python_name"]


HEAVY_MODULES = ("torch", "dask", "bioio", "skimage", "scipy", "tifffile", "zarr", "pandas")


@pytest.mark.parametrize(
    "argv", [["--help"], ["models"], ["predict", "--help"], ["train", "--help"], ["evaluate", "--help"]]
)
def test_cli_help_and_models_load_no_heavy_library(argv: list[str]) -> None:
    """`segtune --help`, `segtune models` and each command's --help answer without torch, dask,
    bioio or scikit-image: they are what a user types first, and they must not wait seconds."""
    code = (
        "import contextlib, io, sys\nfrom segtune.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main({argv!r})\n"
        f"print(','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"segtune {' '.join(argv)} imported {result.stdout.strip()}"
