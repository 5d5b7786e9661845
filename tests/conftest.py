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


def _data_folder(shared_data: Path, name: str) -> Path:
    folder = shared_data / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    return folder


@pytest.fixture(scope="session")
def czi_dir(shared_data: Path) -> Path:
    return _data_folder(shared_data, "czi")


@pytest.fixture(scope="session")
def nuclei_dir(shared_data: Path) -> Path:
    return _data_folder(shared_data, "nuclei_nih3t3")


@pytest.fixture(scope="session")
def membranes_dir(shared_data: Path) -> Path:
    return _data_folder(shared_data, "membranes_isbi2012")


@pytest.fixture(scope="session")
def qcanet_dir(shared_data: Path) -> Path:
    """A mouse embryo stack and its instance labels (a label TIFF from another tool)."""
    return _data_folder(shared_data, "nuclei3d_qcanet")


@pytest.fixture(scope="session")
def colour_czi(czi_dir: Path, tmp_path_factory) -> Path:
    """A colour CZI with three named channels (as a polarisation series: Bright, Pol_0, Pol_45),
    written with Zeiss's own writer from the pixels of the shared RGB CZI."""
    import numpy as np

    from segtune.core.io import open_image

    pyczi = pytest.importorskip("pylibCZIrw.czi", reason="pylibCZIrw (the dev extra) writes the CZI")
    rgb = np.moveaxis(open_image(czi_dir / "RGB-8bit.czi").data[0, :, 0].compute(), 0, -1)[:200, :300]
    path = tmp_path_factory.mktemp("czi") / "polarisation.czi"
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for c, shift in enumerate((0, 40, 80)):
            czi.write(data=np.ascontiguousarray(np.roll(rgb, shift, axis=1)[..., ::-1]), plane={"C": c, "Z": 0, "T": 0})
        czi.write_metadata(
            document_name="pol", channel_names={0: "Bright", 1: "Pol_0", 2: "Pol_45"}, scale_x=0.5e-6, scale_y=0.5e-6
        )
    return path
