"""Compressed TIFFs (the default of many acquisition and analysis tools) open out of the box."""

from __future__ import annotations

import struct
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from segtune.core.io import ImageReadError, open_image

# every compression tifffile writes and decodes with imagecodecs; JPEG is lossy
COMPRESSIONS = ["lzw", "deflate", "zstd", "lzma", "packbits", "jpeg"]


@pytest.fixture(scope="module")
def nuclei(nuclei_dir: Path) -> np.ndarray:
    """A real fluorescence image (NIH3T3 nuclei, uint8), cropped to keep the tests quick."""
    return iio.imread(nuclei_dir / "images" / "0.png")[:300, :400]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compressed_tiff_opens_and_reads_its_pixels(nuclei: np.ndarray, tmp_path: Path, compression: str) -> None:
    path = tmp_path / f"nuclei_{compression}.tif"
    tifffile.imwrite(path, nuclei, compression=compression, tile=(128, 128) if compression == "zstd" else None)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression.name.lower().startswith(compression[:4])
    image = open_image(path)
    plane = image.plane()
    assert plane.shape == nuclei.shape
    if compression == "jpeg":
        assert np.abs(plane.astype(int) - nuclei).mean() < 2
    else:
        np.testing.assert_array_equal(plane, nuclei)


def test_lzw_ome_stack_keeps_axes_and_pixel_sizes(nuclei: np.ndarray, tmp_path: Path) -> None:
    stack = np.stack([nuclei, nuclei[::-1]])
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        stack,
        ome=True,
        compression="lzw",
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )
    image = open_image(path)
    assert image.shape == (1, 1, 2, *nuclei.shape)
    assert tuple(image.physical_pixel_sizes) == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(image.plane(z=1), nuclei[::-1])


def test_unknown_compression_is_refused_at_open_naming_file_and_reason(nuclei: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, nuclei)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, offset, 34932)  # a compression code no library decodes
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"odd\.tif.*compress.*34932"):
        open_image(path)
