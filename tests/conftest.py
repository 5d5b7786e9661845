"""Shared test fixtures: where the real microscopy data lives, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data (``../shared/data``); tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def czi_dir(shared_data: Path) -> Path:
    folder = shared_data / "czi"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="session")
def nuclei_dir(shared_data: Path) -> Path:
    folder = shared_data / "nuclei_nih3t3"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="session")
def membranes_dir(shared_data: Path) -> Path:
    folder = shared_data / "membranes_isbi2012"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder
