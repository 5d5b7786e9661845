"""Regenerate ``sample_data/``: small synthetic nuclei images with their true labels.

The files are made by the project (no third-party data), deterministic from fixed seeds:

- ``nuclei_2d.tif`` / ``nuclei_2d_labels.tif``: 512 x 512 uint16 Hoechst-like nuclei,
  0.325 um pixels, OME-TIFF, with exact instance labels.
- ``nuclei_3d.tif`` / ``nuclei_3d_labels.tif``: 24 x 192 x 192 stack, 0.325 x 0.325 x 0.65 um.
- ``nuclei_2ch.czi``: the 2D nuclei plus a second, dimmer cytoplasm-like channel, written with
  pylibCZIrw (Zeiss's writer) so that the CZI path is exercised on a file we control.

Run: ``python scripts/make_sample_data.py`` (needs the ``dev`` extra for pylibCZIrw).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from segtune.core.io import write_labels
from segtune.core.synthetic import synthetic_nuclei

OUT = Path(__file__).resolve().parents[1] / "sample_data"
PIXEL_UM = 0.325


def write_image(path: Path, image: np.ndarray, axes: str, sizes: dict[str, float], channels: list[str]) -> None:
    metadata = {"axes": axes, "Channel": {"Name": channels}}
    for axis, value in sizes.items():
        metadata[f"PhysicalSize{axis}"] = value
        metadata[f"PhysicalSize{axis}Unit"] = "µm"
    tifffile.imwrite(path, image, ome=True, metadata=metadata, compression="zlib")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    nuclei = synthetic_nuclei((512, 512), diameter=24, touching=0.35, seed=7)
    write_image(OUT / "nuclei_2d.tif", nuclei.image, "YX", {"Y": PIXEL_UM, "X": PIXEL_UM}, ["Hoechst"])
    write_labels(OUT / "nuclei_2d_labels.tif", nuclei.labels, (None, PIXEL_UM, PIXEL_UM), overwrite=True)

    stack = synthetic_nuclei((24, 192, 192), diameter=20, z_anisotropy=2.0, seed=11)
    sizes = {"Z": 2 * PIXEL_UM, "Y": PIXEL_UM, "X": PIXEL_UM}
    write_image(OUT / "nuclei_3d.tif", stack.image, "ZYX", sizes, ["Hoechst"])
    write_labels(OUT / "nuclei_3d_labels.tif", stack.labels, (2 * PIXEL_UM, PIXEL_UM, PIXEL_UM), overwrite=True)

    from pylibCZIrw import czi as pyczi

    rng = np.random.default_rng(3)
    grown = ndi.grey_dilation(nuclei.labels, size=9) > 0
    cytoplasm = ndi.gaussian_filter(grown.astype(np.float32) * 300 + 80, 3)
    cytoplasm = rng.poisson(cytoplasm).astype(np.uint16)
    path = OUT / "nuclei_2ch.czi"
    path.unlink(missing_ok=True)
    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for channel, plane in enumerate((nuclei.image, cytoplasm)):
            czi.write(data=plane, plane={"C": channel, "Z": 0, "T": 0}, compression_options="zstd1:ExplicitLevel=2")
        czi.write_metadata(
            document_name="segtune sample",
            channel_names={0: "Hoechst", 1: "CellMask"},
            # pylibCZIrw stores the value as given, and CZI metadata counts in metres
            scale_x=PIXEL_UM * 1e-6,
            scale_y=PIXEL_UM * 1e-6,
        )


if __name__ == "__main__":
    main()
