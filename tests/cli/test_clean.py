"""Tests of `segtune clean`: each step on real files, pixel sizes kept, stacks, errors as one line."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.cli import main
from segtune.core.io import open_image, read_labels, write_labels


def _labels() -> np.ndarray:
    labels = np.zeros((40, 60), np.uint16)
    labels[0:6, 0:6] = 1  # touches the border
    labels[10:20, 10:20] = 2
    labels[14:16, 14:16] = 0  # a hole
    labels[30:32, 30:32] = 3  # 4 px: a speck
    yy, xx = np.mgrid[:40, :60]
    pair = (np.hypot(yy - 20, xx - 36) <= 6) | (np.hypot(yy - 20, xx - 45) <= 6)
    labels[pair] = 4  # two touching discs as one object
    return labels


def test_clean_runs_each_step_and_keeps_pixel_sizes(tmp_path, capsys):
    source = write_labels(tmp_path / "cells_labels.tif", _labels(), pixel_sizes=(None, 0.5, 0.5))
    out = tmp_path / "clean"
    argv = [
        "clean",
        "--labels",
        str(source),
        "--out",
        str(out),
        "--remove-border",
        "--split",
        "--fill-holes",
        "--min-size",
        "5",
    ]
    assert main(argv) == 0
    assert "4 -> 3 object(s)" in capsys.readouterr().out  # border and speck gone, the pair split
    cleaned = read_labels(out / "cells_labels.tif")
    assert sorted(np.unique(cleaned).tolist()) == [0, 2, 4, 5]
    assert cleaned[15, 15] == 2 and cleaned[2, 2] == 0 and cleaned[31, 31] == 0
    assert cleaned[20, 32] != cleaned[20, 49]
    assert open_image(out / "cells_labels.tif").physical_pixel_sizes[1:] == (0.5, 0.5)

    # the same output again: refused unless --overwrite; --min-area in um^2 (4 px = 1 um^2 here)
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(["clean", "--labels", str(source), "--out", str(out), "--min-area", "1.5", "--relabel", "--overwrite"])
        == 0
    )
    cleaned = read_labels(out / "cells_labels.tif")
    assert sorted(np.unique(cleaned).tolist()) == [0, 1, 2, 3]  # the speck (1 um^2) gone, renumbered


def test_clean_stack_planewise_and_binary_input(tmp_path, capsys):
    stack = np.zeros((3, 30, 30), np.uint8)
    stack[:, 5:15, 5:15] = 1
    stack[1, 0:3, 20:23] = 1  # a separate speck on the edge of plane 1 (binary mask: components)
    source = write_labels(tmp_path / "stack.tif", stack, pixel_sizes=(2.0, 0.5, 0.5))
    out = tmp_path / "out"
    assert (
        main(["clean", "--labels", str(source), "--out", str(out), "--remove-border", "--planewise", "--dilate", "2"])
        == 0
    )
    cleaned = read_labels(out / "stack.tif")
    assert cleaned.shape == (3, 30, 30)
    assert (
        cleaned[1, 0:3, 20:23].max() == 0
    )  # gone in its plane (touching the volume's first/last plane does not count)
    np.testing.assert_array_equal(cleaned[:, 3:17, 10] > 0, np.ones((3, 14), bool))  # grown by 2 px
    assert open_image(out / "stack.tif").physical_pixel_sizes == (2.0, 0.5, 0.5)
    capsys.readouterr()


def test_clean_errors_are_one_line(tmp_path, capsys):
    source = write_labels(tmp_path / "a.tif", _labels())
    assert main(["clean", "--labels", str(source), "--out", str(tmp_path / "o"), "--min-area", "2"]) == 2
    assert "needs pixel sizes" in capsys.readouterr().err
    assert main(["clean", "--labels", str(source), "--out", str(tmp_path), "--fill-holes"]) == 2
    assert "replace the input" in capsys.readouterr().err
    assert main(["clean", "--labels", str(tmp_path / "missing.tif"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.tif" in capsys.readouterr().err
    assert main(["clean", "--labels", str(source), "--out", str(tmp_path / "o"), "--smooth", "-1"]) == 2
    assert "--smooth must be 0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, expected", [("a_labels.ome.tif", "a_labels.tif"), ("b.png", "b.tif"), ("c.TIFF", "c.tif")]
)
def test_output_name(name, expected):
    from pathlib import Path

    from segtune.core.io import output_name  # the name `segtune clean` writes each input to

    assert output_name(Path(name), suffix="") == expected
