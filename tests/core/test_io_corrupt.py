"""Corrupt data inside files that open fine: the read names the file, the block and the reason."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segtune.core.io import ImageReadError, open_image, read_labels
from tests.fuzz_corpus import corrupt_tile, czi_variant


def test_a_corrupt_zlib_tile_is_an_image_read_error_naming_the_tile(tmp_path):
    image = np.random.default_rng(0).integers(0, 60000, (3, 64, 64)).astype(np.uint16)
    tifffile.imwrite(
        tmp_path / "good.tif",
        image,
        tile=(16, 16),
        compression="zlib",
        photometric="minisblack",
        metadata={"axes": "ZYX"},
    )
    bad = corrupt_tile(tmp_path / "good.tif", tmp_path / "bad.tif", tile=5)  # plane 0, row 1, column 1
    opened = open_image(bad)  # opening reads no pixels: fine
    assert opened.shape == (1, 1, 3, 64, 64)
    np.testing.assert_array_equal(opened.data[0, 0, 1].compute(), image[1])  # the other planes still read
    with pytest.raises(ImageReadError, match=r"bad\.tif: the pixel data is corrupt at Z 0, Y 16-31, X 16-31 \(.*Error"):
        opened.data.compute()
    with pytest.raises(ImageReadError, match="bad.tif"):
        read_labels(bad)


def test_a_czi_with_a_corrupt_first_subblock_is_an_image_read_error(czi_dir, tmp_path):
    source = czi_dir / "s_1_t_1_c_1_z_1.czi"
    bad = czi_variant(source, tmp_path / "bad.czi", "subblock")
    opened = open_image(bad)
    with pytest.raises(ImageReadError, match=r"bad\.czi: the pixel data is corrupt at T 0, C 0, Z 0"):
        opened.plane()
    good = open_image(source)
    assert good.plane().std() > 0  # the guard changes nothing for a sound file


def test_a_czi_directory_claiming_billions_of_entries_is_refused_at_open(czi_dir, tmp_path):
    bad = czi_variant(czi_dir / "s_1_t_1_c_1_z_1.czi", tmp_path / "huge.czi", "directory_count")
    with pytest.raises(
        ImageReadError, match="huge.czi: the file is corrupt: its directory claims 2147483647 subblocks"
    ):
        open_image(bad)
