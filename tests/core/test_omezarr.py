"""OME-Zarr in (written by ome-zarr-py, NGFF 0.4 and 0.5) and out (labels pyramids, streamed)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from ome_zarr.writer import write_image

from segtune.cli import main
from segtune.core.io import ImageReadError, open_image, output_name
from segtune.core.omezarr import predict_to_ome_zarr
from segtune.core.predict import TilingOptions, predict

FORMATS = {"0.4": FormatV04(), "0.5": FormatV05()}


def _ome_zarr(path: Path, data: np.ndarray, version: str, axes: str = "czyx") -> Path:
    """An OME-Zarr made by ome-zarr-py: Z 2 µm, Y 0.5 µm, X 250 nm, three levels, channel names."""
    fmt = FORMATS[version]
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    scale = {"c": 1.0, "z": 2.0, "y": 0.5, "x": 250.0}
    units = {"z": "micrometer", "y": "micrometer", "x": "nanometer"}
    write_image(
        data,
        group,
        axes=axes,
        fmt=fmt,
        scale={a: scale[a] for a in axes},
        axes_units={a: u for a, u in units.items() if a in axes},
        scale_factors=(2, 4),
        storage_options={"chunks": tuple(1 if a in "cz" else 32 for a in axes)},
        **(
            {
                "omero": {
                    "channels": [
                        {
                            "label": f"ch{i}",
                            "color": "FFFFFF",
                            "window": {"start": 0, "end": 1000, "min": 0, "max": 65535},
                        }
                        for i in range(data.shape[0])
                    ]
                }
            }
            if "c" in axes
            else {}
        ),
    )
    return path


def _blobs(shape=(70, 90), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in [(15, 20), (40, 60), (55, 25)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 400
    return image.astype(np.uint16)


@pytest.fixture(scope="module")
def tiny_model():
    from segtune.core.models.store import default_config
    from segtune.core.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4).eval()
    return net, default_config(net.architecture)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_from_ome_zarr_py_opens_lazily_at_full_resolution(tmp_path: Path, version: str) -> None:
    data = np.random.default_rng(1).integers(0, 1000, (2, 5, 64, 96), dtype=np.uint16)
    path = _ome_zarr(tmp_path / "cells.ome.zarr", data, version)
    image = open_image(path)
    assert isinstance(image.data, da.Array)
    assert image.shape == (1, 2, 5, 64, 96)  # the full-resolution level, TCZYX
    assert image.metadata["levels"] == [(2, 5, 64, 96), (2, 5, 32, 48), (2, 5, 16, 24)]
    assert image.physical_pixel_sizes == pytest.approx((2.0, 0.5, 0.25))  # 250 nm is 0.25 µm
    assert image.channel_names == ["ch0", "ch1"]
    assert image.metadata["ngff_version"] == version
    # lazy: the array reads from the store chunk by chunk (its graph has one task per chunk)
    assert image.data.npartitions == 2 * 5 * 2 * 3
    np.testing.assert_array_equal(image.data[0].compute(), data)


def test_ome_zarr_yx_only_and_not_an_image(tmp_path: Path) -> None:
    data = _blobs()
    image = open_image(_ome_zarr(tmp_path / "plane.zarr", data, "0.5", axes="yx"))
    assert image.shape == (1, 1, 1, 70, 90) and image.physical_pixel_sizes == pytest.approx(
        (None, 0.5, 0.25), nan_ok=True
    )
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("x", shape=(4, 4), dtype="uint8")
    with pytest.raises(ImageReadError, match="plain.zarr.*multiscales"):
        open_image(plain)
    assert output_name(tmp_path / "cells.ome.zarr") == "cells_labels.tif"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_streamed_labels_go_into_the_source_labels_group(tmp_path: Path, tiny_model, version: str) -> None:
    data = np.tile(_blobs(), (1, 4, 4))  # (1, 280, 360): pyramid of two levels
    path = _ome_zarr(tmp_path / "cells.ome.zarr", data, version, axes="cyx")
    before = sorted(p.name for p in path.iterdir())
    image = open_image(path)
    target = predict_to_ome_zarr(
        tiny_model, image, path, name="segtune", device="cpu", tiling=TilingOptions(tile_shape=64), threshold=0.5
    )
    assert target == path / "labels" / "segtune"
    expected = predict(tiny_model, image, device="cpu", threshold=0.5).labels[0, 0]
    assert expected.any() and not expected.all()

    # read back by ome-zarr-py itself: a Label node with the image's scale and a nearest pyramid
    nodes = list(Reader(parse_url(str(target)))())
    label = next(n for n in nodes if any(isinstance(s, Label) for s in n.specs))
    levels = [np.asarray(level) for level in label.data]
    assert [lv.shape for lv in levels] == [(280, 360), (140, 180)]
    np.testing.assert_array_equal(levels[0], expected)
    np.testing.assert_array_equal(levels[1], expected[1::2, 1::2])  # nearest neighbour: no label is invented
    scale = label.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale == pytest.approx([0.5, 0.25])
    labels_attrs = dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    assert dict(labels_attrs.get("ome", labels_attrs))["labels"] == ["segtune"]
    assert open_image(target).physical_pixel_sizes == pytest.approx((None, 0.5, 0.25), nan_ok=True)
    np.testing.assert_array_equal(
        open_image(target).data[0, 0, 0].compute(), expected
    )  # the labels, not their source image
    labels_attrs_of_image = dict(zarr.open_group(str(target), mode="r").attrs)
    assert dict(labels_attrs_of_image.get("ome", labels_attrs_of_image))["image-label"]["source"] == {"image": "../../"}
    assert sorted(p.name for p in path.iterdir()) == sorted(
        {*before, "labels"}
    )  # nothing else touched, no scratch left

    with pytest.raises(FileExistsError, match="segtune"):
        predict_to_ome_zarr(tiny_model, image, path, name="segtune", device="cpu")
    predict_to_ome_zarr(tiny_model, image, path, name="segtune", device="cpu", overwrite=True, threshold=0.9)
    labels_attrs = dict(zarr.open_group(str(path / "labels"), mode="r").attrs)
    assert dict(labels_attrs.get("ome", labels_attrs))["labels"] == ["segtune"]  # listed once


def test_instances_to_standalone_ome_zarr(tmp_path: Path, tiny_model) -> None:
    data = _blobs()[np.newaxis]
    image = open_image(_ome_zarr(tmp_path / "cells.zarr", data, "0.5", axes="cyx"))
    target = predict_to_ome_zarr(
        tiny_model, image, tmp_path / "out" / "cells_labels.ome.zarr", device="cpu", instances=True
    )
    expected = predict(tiny_model, image, device="cpu", instances=True).labels[0, 0]
    labels = open_image(target)
    assert labels.metadata["is_labels"]
    np.testing.assert_array_equal(labels.data[0, 0, 0].compute(), expected)
    assert labels.physical_pixel_sizes == pytest.approx((None, 0.5, 0.25), nan_ok=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cells_labels.ome.zarr"]


def test_cli_predict_format_ome_zarr(tmp_path: Path, tiny_model, capsys) -> None:
    import tifffile

    from segtune.core.models.store import save_model

    model_dir = save_model(*tiny_model, tmp_path / "tiny")
    source = _ome_zarr(tmp_path / "cells.ome.zarr", _blobs()[np.newaxis], "0.4", axes="cyx")
    assert main(["predict", "--model", str(model_dir), str(source), "--format", "ome-zarr", "--device", "cpu"]) == 0
    assert (source / "labels" / "tiny" / "0").is_dir() or (source / "labels" / "tiny" / "s0").is_dir()
    assert open_image(source / "labels" / "tiny").metadata["is_labels"]
    capsys.readouterr()
    assert main(["predict", "--model", str(model_dir), str(source), "--format", "ome-zarr"]) == 2
    assert "exist" in capsys.readouterr().err

    tif = tmp_path / "plane.tif"
    tifffile.imwrite(tif, _blobs(), ome=True, metadata={"axes": "YX", "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.25})
    assert main(["predict", "--model", str(model_dir), str(tif), "--format", "ome-zarr"]) == 2
    assert "--out" in capsys.readouterr().err
    assert (
        main(["predict", "--model", str(model_dir), str(tif), "--format", "ome-zarr", "--out", str(tmp_path / "o")])
        == 0
    )
    labels = open_image(tmp_path / "o" / "plane_labels.ome.zarr")
    assert labels.shape == (1, 1, 1, 70, 90) and labels.physical_pixel_sizes == pytest.approx(
        (None, 0.5, 0.25), nan_ok=True
    )
