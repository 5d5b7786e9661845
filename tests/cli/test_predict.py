"""`segtune predict`: label files named after their inputs, dtypes, pixel sizes, channels, existing outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segtune.cli import main
from segtune.core.io import open_image, read_labels


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from segtune.core.models.store import default_config, save_model
    from segtune.core.models.unet import UNet

    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, depth=2, base_channels=4)
    with torch.no_grad():  # logit = max(normalised intensity, 0): a path through the top level only
        for p in net.parameters():
            p.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        for block in (net.encoder[0], net.decoder[-1]):  # the decoder block sees the skip first
            block[0].weight[0, 0, 1, 1] = 1.0
            block[3].weight[0, 0, 1, 1] = 1.0
        net.head.weight[0, 0] = 1.0
    net.eval()
    return save_model(net, default_config(net.architecture), tmp_path_factory.mktemp("m") / "model")


def _image(path: Path, data: np.ndarray, sizes=(0.5, 0.25)) -> Path:
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "CYX" if data.ndim == 3 else "YX", "PhysicalSizeY": sizes[0], "PhysicalSizeX": sizes[1]},
    )
    return path


CENTRES = [(15, 20), (40, 60), (55, 25)]


def _blobs(shape=(70, 90), seed=0) -> np.ndarray:
    """Three bright discs on a noisy background (uint16, camera-like)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for cy, cx in CENTRES:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] += 400
    return image.astype(np.uint16)


def _discs(shape=(70, 90)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.any([(yy - cy) ** 2 + (xx - cx) ** 2 < 64 for cy, cx in CENTRES], axis=0)


def test_predict_writes_masks_named_after_inputs_with_pixel_sizes(model_dir, tmp_path):
    a = _image(tmp_path / "a.ome.tif", _blobs(seed=1))
    b = _image(tmp_path / "b.tif", _blobs((50, 64), seed=2))
    out = tmp_path / "out"
    argv = [
        "predict",
        "--model",
        str(model_dir),
        str(a),
        str(b),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threshold",
        "0.6",
    ]
    assert main(argv) == 0
    for name, shape in [("a_labels.tif", (70, 90)), ("b_labels.tif", (50, 64))]:
        labels = read_labels(out / name)
        assert labels.shape == shape and labels.dtype == np.uint8
        assert set(np.unique(labels)) == {0, 1}
        sizes = open_image(out / name).physical_pixel_sizes
        assert sizes.Y == pytest.approx(0.5) and sizes.X == pytest.approx(0.25)
    mask, discs = read_labels(out / "a_labels.tif").astype(bool), _discs()
    assert (mask & discs).sum() / (mask | discs).sum() > 0.8  # the discs were found


def test_predict_matches_the_python_api(model_dir, tmp_path):
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict

    data = _blobs(seed=3)
    path = _image(tmp_path / "c.tif", data)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model_dir),
                str(path),
                "--out",
                str(out),
                "--tile",
                "64",
                "--threshold",
                "0.4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    expected = predict(load_model(model_dir), data, device="cpu", threshold=0.4).labels[0, 0]
    np.testing.assert_array_equal(read_labels(out / "c_labels.tif"), expected)


def test_instances_are_uint16(model_dir, tmp_path):
    path = _image(tmp_path / "d.tif", _blobs(seed=4))
    out = tmp_path / "out"
    argv = [
        "predict",
        "--model",
        str(model_dir),
        str(path),
        "--out",
        str(out),
        "--instances",
        "--threshold",
        "0.6",
        "--min-size",
        "20",
    ]
    assert main([*argv, "--device", "cpu"]) == 0
    written = tifffile.imread(out / "d_labels.tif")
    assert written.dtype == np.uint16
    assert written.max() == 3  # the three discs, each its own number
    assert {written[cy, cx] for cy, cx in CENTRES} == {1, 2, 3}


def test_existing_outputs_are_refused_skipped_or_overwritten(model_dir, tmp_path, capsys):
    path = _image(tmp_path / "e.tif", _blobs(seed=5))
    out = tmp_path / "out"
    out.mkdir()
    target = out / "e_labels.tif"
    target.write_bytes(b"keep me")
    argv = ["predict", "--model", str(model_dir), str(path), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert target.read_bytes() == b"keep me"
    assert main([*argv, "--skip-existing"]) == 0
    assert target.read_bytes() == b"keep me"
    assert main([*argv, "--overwrite"]) == 0
    assert read_labels(target).shape == (70, 90)


def test_channel_by_index_or_name_and_a_clear_error_without(model_dir, tmp_path, capsys):
    two = np.stack([np.full((60, 60), 7, np.uint16), _blobs((60, 60), seed=6)])
    path = tmp_path / "f.ome.tif"
    tifffile.imwrite(path, two, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["bf", "dapi"]}})
    out = tmp_path / "out"
    base = ["predict", "--model", str(model_dir), str(path), "--out", str(out), "--device", "cpu", "--threshold", "0.6"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--channel" in err and "dapi" in err
    assert main([*base, "--channel", "dapi"]) == 0
    by_name = read_labels(out / "f_labels.tif")
    assert main([*base, "--channel", "1", "--overwrite"]) == 0
    np.testing.assert_array_equal(read_labels(out / "f_labels.tif"), by_name)
    assert by_name[15, 20] == 1 and by_name[0, 0] == 0  # the blobs channel, not the flat one


def test_z_stack_keeps_its_planes(model_dir, tmp_path):
    stack = np.stack([_blobs((40, 48), seed=s) for s in range(3)])
    path = tmp_path / "g.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "ZYX", "PhysicalSizeZ": 2.0})
    out = tmp_path / "out"
    assert (
        main(
            ["predict", "--model", str(model_dir), str(path), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
        )
        == 0
    )
    assert read_labels(out / "g_labels.tif").shape == (3, 40, 48)
    assert open_image(out / "g_labels.tif").physical_pixel_sizes.Z == pytest.approx(2.0)


def test_bad_inputs_fail_with_one_line(model_dir, tmp_path, capsys):
    good = _image(tmp_path / "h.tif", _blobs(seed=7))
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_dir), str(bad), str(good), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "broken.tif" in err and "1 of 2" in err
    assert (out / "h_labels.tif").exists()  # the good file was still done
    assert main(["predict", "--model", str(model_dir), str(good), "--out", str(out), "--tile", "x", "--overwrite"]) == 2
    assert "--tile" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "nope"), str(good), "--out", str(out), "--overwrite"]) == 2


def test_lzw_tiff_of_a_real_image_is_predicted_and_reported(model_dir, nuclei_dir, tmp_path, capsys):
    import imageio.v3 as iio

    nuclei = iio.imread(nuclei_dir / "images" / "0.png")[:256, :320]
    path = tmp_path / "nuclei.tif"
    tifffile.imwrite(path, nuclei, compression="lzw")  # the default of many acquisition tools
    out = tmp_path / "out"
    assert (
        main(["predict", "--model", str(model_dir), str(path), "--out", str(out), "--device", "cpu", "--instances"])
        == 0
    )
    labels = read_labels(out / "nuclei_labels.tif")
    assert labels.shape == nuclei.shape
    lines = capsys.readouterr().out.strip().splitlines()
    count = len(np.unique(labels)) - 1
    assert count > 3
    # one line per file (output, objects, diameter, size filter) and a total
    assert lines == [
        f"{out / 'nuclei_labels.tif'}: {count} object(s), not rescaled, objects under 10 px dropped",
        f"1 file(s) written to {out}, {count} object(s) in total",
    ]
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes[sizes > 0].min() >= 10  # the default smallest object, as in the widget


def test_min_size_default_is_the_one_rule_shared_with_the_widget(model_dir, tmp_path, capsys):
    from segtune.cli import build_parser
    from segtune.core.postprocess import default_min_size

    args = build_parser().parse_args(["predict", "--model", "m", "x.tif", "--out", "o"])
    assert args.min_size == "auto"
    assert (
        default_min_size(None) == 10 and default_min_size(20.0) == 20 and default_min_size(12.0, spatial_dims=3) == 14
    )
    assert default_min_size(4.8) == 4 and default_min_size(4.8, spatial_dims=3) == 8  # never a 1-pixel speck
    path = _image(tmp_path / "k.tif", _blobs(seed=8))
    out = tmp_path / "out"
    assert (
        main(["predict", "--model", str(model_dir), str(path), "--out", str(out), "--device", "cpu", "--min-size", "0"])
        == 0
    )
    assert "no size filter" in capsys.readouterr().out
    assert (
        main(["predict", "--model", str(model_dir), str(path), "--out", str(out), "--min-size", "big", "--overwrite"])
        == 2
    )
    assert "--min-size" in capsys.readouterr().err


def test_progress_counts_tiles_and_planes_not_one_jump(model_dir):
    from segtune.core.models.store import load_model
    from segtune.core.predict import TilingOptions, predict

    stack = np.stack([_blobs((70, 90), seed=s) for s in range(4)])
    events = []
    predict(
        load_model(model_dir),
        stack,
        axes="ZYX",
        device="cpu",
        tiling=TilingOptions(tile_shape=48),
        progress=events.append,
    )
    done = [e.done for e in events]
    assert done == sorted(done) and events[-1].done == events[-1].total
    assert len(set(done)) > 4  # tiles, then each plane labelled, not 0/1 -> 1/1
    assert {"tiles", "labelling planes"} <= {e.message for e in events}
    # one large 2D image on the CPU is several tiles, not one long step
    events.clear()
    big = np.tile(_blobs((70, 90), seed=9), (24, 20))  # 1680 x 1800 = 3 Mpx
    predict(load_model(model_dir), big, device="cpu", progress=events.append)
    assert len({e.done for e in events if e.message == "tiles"}) >= 2


def test_every_option_of_every_command_has_help_and_sensible_defaults():
    import argparse

    from segtune.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    missing = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, sub in commands.items()
        for action in sub._actions
        if not action.help
    ]
    assert missing == []
    train = commands["train"].format_help()
    assert "default: 2)" not in train and "(default: 10000)" in train  # --3d is a flag, --epochs a number
    assert "0: never" in commands["train"].format_help()  # --patience: off unless asked, the time budget stops training
    predict_help = " ".join(commands["predict"].format_help().split())
    assert "'auto' (default, as in the napari widget)" in predict_help


def test_channel_names_a_colour_channel_of_a_czi(model_dir, colour_czi, czi_dir, tmp_path, capsys):
    from segtune.core.models.store import load_model
    from segtune.core.predict import ObjectOptions, predict

    out = tmp_path / "out"
    base = ["predict", "--model", str(model_dir), "--out", str(out), "--device", "cpu"]
    assert main([*base, str(colour_czi)]) == 2
    err = capsys.readouterr().err
    assert "Pol_0 (red)" in err  # the file's channel names, not "Channel 0..8"
    assert "a colour channel by its name (Bright, Pol_0, Pol_45) gives the mean of its samples" in err
    assert main([*base, str(colour_czi), "--channel", "Pol_0"]) == 0
    grey = open_image(colour_czi).data[0, 3:6, 0].compute().astype(np.float32).mean(axis=0)  # Pol_0's samples
    expected = predict(load_model(model_dir), grey, device="cpu", objects=ObjectOptions(min_size="auto")).labels[0, 0]
    np.testing.assert_array_equal(read_labels(out / "polarisation_labels.tif"), expected)
    # the shared RGB CZI: its one colour channel has no name of its own; it is "RGB"
    assert main([*base, str(czi_dir / "RGB-8bit.czi"), "--channel", "RGB"]) == 0
    assert read_labels(out / "RGB-8bit_labels.tif").shape == (624, 924)
    # and the grey mean is what an image that is one colour channel and nothing else gets unasked
    chosen = read_labels(out / "RGB-8bit_labels.tif")
    unasked = tmp_path / "unasked"
    capsys.readouterr()
    assert main([*base[:3], "--out", str(unasked), "--device", "cpu", str(czi_dir / "RGB-8bit.czi")]) == 0
    np.testing.assert_array_equal(read_labels(unasked / "RGB-8bit_labels.tif"), chosen)
    assert "its colours averaged to grey (--channel picks one)" in capsys.readouterr().out  # and says so
