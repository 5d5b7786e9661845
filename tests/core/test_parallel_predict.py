"""Prediction on a dask.distributed LocalCluster equals single-process prediction, retries, names failures, resumes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import distributed  # the 'distributed' extra, part of the test extra
import numpy as np
import pytest
import tifffile
import torch
import zarr

from segtune.core import parallel_predict
from segtune.core.io import open_image, read_labels
from segtune.core.models.store import default_config, load_model, save_model
from segtune.core.models.unet import UNet
from segtune.core.predict import TilingOptions, predict

pytestmark = pytest.mark.slow  # a 2-worker cluster takes seconds to start on a small machine

# CPU results of some layers (a 1x1 convolution's GEMM) depend on the thread count in the last
# bit, so the tasks and the single-process reference both run torch on one thread (which is also
# what --workers gives each worker on a 2-core machine) and are compared bit for bit
THREADS = 1


@contextlib.contextmanager
def single_process_reference(threads: int = THREADS):
    """Run the reference with the tasks' thread count; the test process's own setting is restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def client():
    """Two worker processes, one thread each (what --workers 2 starts)."""
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        distributed.Client(cluster, set_as_default=False) as dask_client,
    ):
        dask_client.wait_for_workers(2, timeout=120)
        yield dask_client


def _tiny_model(spatial_dims: int, seed: int) -> UNet:
    """An untrained U-Net whose output is about half foreground on normalised images.

    Untrained outputs crowd around the threshold, so any difference in arithmetic between the
    distributed and the single-process run would flip pixels: a strict test of "identical".
    """
    torch.manual_seed(seed)
    model = UNet(spatial_dims=spatial_dims, in_channels=1, out_channels=1, depth=2, base_channels=4)
    # non-trivial normalisation statistics, so that folding them into the convolutions matters
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    model.eval()
    sample = torch.rand((1, 1, *([16] * (spatial_dims - 2)), 64, 64), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.head.bias -= model(sample).median()
    return model


@pytest.fixture(scope="module")
def nuclei_planes(nuclei_dir: Path) -> list[np.ndarray]:
    files = sorted((nuclei_dir / "images").glob("*.png"))[:4]
    return [np.asarray(open_image(f).data[0, 0, 0]) for f in files]


@pytest.fixture(scope="module")
def crops(tmp_path_factory, nuclei_planes) -> list[Path]:
    """Four 128x128 crops of real nuclei images, as OME-TIFFs with pixel sizes."""
    folder = tmp_path_factory.mktemp("crops")
    paths = []
    for i, plane in enumerate(nuclei_planes):
        path = folder / f"nuclei_{i}.ome.tif"
        tifffile.imwrite(
            path, plane[300:428, 400:528], ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        )
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model_2d(tmp_path_factory) -> Path:
    model = _tiny_model(2, seed=1)
    return save_model(model, default_config(model.architecture), tmp_path_factory.mktemp("m") / "tiny2d")


def test_files_equal_single_process_and_model_built_once(client, crops, model_2d, tmp_path):
    before = client.run(parallel_predict.cluster.worker_builds)
    report = parallel_predict.predict_files(
        model_2d, crops, tmp_path / "out", client=client, device="cpu", torch_threads=THREADS
    )
    after = client.run(parallel_predict.cluster.worker_builds)
    assert sorted(report.computed) == sorted(p.name for p in crops)
    assert report.tasks == 4 and not report.failed
    loaded = load_model(model_2d)  # one object: its tiling geometry is measured once
    for path in crops:
        with single_process_reference():
            expected = predict(loaded, open_image(path), device="cpu").labels
        output = tmp_path / "out" / path.name.replace(".ome.tif", "_labels.tif")
        assert report.outputs[path.name] == output
        got = read_labels(output)
        assert got.dtype == np.uint8 and got.shape == (128, 128)
        np.testing.assert_array_equal(got, expected[0, 0])
        assert 0 < got.mean() < 1  # not a trivial all-background or all-foreground comparison
        assert open_image(output).physical_pixel_sizes.X == pytest.approx(0.5)
    # the model went to each worker once and was built once there, not once per file
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)
    assert sum(after[w] - before.get(w, 0) for w in after) >= 1


def test_second_run_does_no_work(client, crops, model_2d, tmp_path):
    out = tmp_path / "out"
    parallel_predict.predict_files(model_2d, crops[:2], out, client=client, device="cpu", torch_threads=THREADS)
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    report = parallel_predict.predict_files(model_2d, crops, out, client=client, device="cpu", torch_threads=THREADS)
    assert report.tasks == 2 and sorted(report.skipped) == sorted(p.name for p in crops[:2])
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # finished outputs untouched
    again = parallel_predict.predict_files(model_2d, crops, out, client=client, device="cpu", torch_threads=THREADS)
    assert again.tasks == 0 and again.computed == [] and len(again.skipped) == 4


def test_failed_input_is_named_and_the_others_are_written(client, crops, model_2d, tmp_path):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)  # a TIFF header and nothing after it
    with pytest.raises(parallel_predict.PredictionFailed, match="broken.tif") as caught:
        parallel_predict.predict_files(
            model_2d,
            [crops[0], broken],
            tmp_path / "out",
            client=client,
            retries=1,
            device="cpu",
            torch_threads=THREADS,
        )
    report = caught.value.report
    assert list(report.failed) == ["broken.tif"] and "ImageReadError" in report.failed["broken.tif"]
    assert (tmp_path / "out" / "nuclei_0_labels.tif").is_file()


@pytest.fixture(scope="module")
def volume(tmp_path_factory, nuclei_planes) -> Path:
    """A 16 x 96 x 96 stack cut from a real nuclei image (each plane shifted), as a TIFF."""
    plane = nuclei_planes[0]
    stack = np.stack([plane[300 + 6 * i : 396 + 6 * i, 500 - 4 * i : 596 - 4 * i] for i in range(16)])
    path = tmp_path_factory.mktemp("volume") / "stack.tif"
    tifffile.imwrite(path, stack)
    return path


def test_volume_in_chunks_equals_single_process_bit_for_bit(client, volume, tmp_path):
    model = _tiny_model(3, seed=2)
    config = default_config(model.architecture)
    options = {
        "tiling": TilingOptions(tile_shape=(16, 72, 72), batch_size=2),
        "device": "cpu",
    }  # 2 x 2 tiles, halos included
    out = tmp_path / "stack_labels.zarr"
    report = parallel_predict.predict_volume(
        (model, config), volume, out, client=client, probabilities=True, torch_threads=THREADS, **options
    )
    with single_process_reference():
        expected = predict(model, open_image(volume), config=config, **options)
    group = zarr.open_group(str(out), mode="r")
    assert report.tasks == 2  # really split: 4 tiles in batches of 2
    np.testing.assert_array_equal(group["probabilities"][:], expected.probabilities)  # bit for bit
    np.testing.assert_array_equal(group["0"][:], expected.labels)
    assert 0 < expected.labels.mean() < 1
    attrs = dict(group.attrs)
    assert attrs["segtune"]["complete"] is True
    assert attrs["ome"]["multiscales"][0]["datasets"][0]["path"] == "0"

    # a run that stopped part-way: only the chunks not ticked off are computed again
    writable = zarr.open_group(str(out), mode="r+")
    writable.attrs["segtune"] = {**attrs["segtune"], "complete": False}
    writable["tasks_done"][0] = 0
    writable["0"][0, :, :48, :48] = 0  # and the first tile's output lost
    resumed = parallel_predict.predict_volume(
        (model, config), volume, out, client=client, probabilities=True, torch_threads=THREADS, **options
    )
    assert resumed.computed == ["stack.tif[chunk 0]"] and len(resumed.skipped) == report.tasks - 1
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], expected.labels)
    done = parallel_predict.predict_volume(
        (model, config), volume, out, client=client, probabilities=True, torch_threads=THREADS, **options
    )
    assert done.tasks == 0 and done.skipped == ["stack.tif"]


def test_a_zooming_model_is_split_only_when_told_not_to_zoom(client, volume, tmp_path):
    model = _tiny_model(3, seed=2)
    config = {**default_config(model.architecture), "object_diameter": 12.0, "auto_diameter": True}
    options = {"tiling": TilingOptions(tile_shape=(16, 72, 72), batch_size=2), "device": "cpu"}
    with pytest.raises(ValueError, match="zooms images"):  # zooming needs the whole image in memory
        parallel_predict.predict_volume(
            (model, config), volume, tmp_path / "a.zarr", client=client, retries=0, torch_threads=THREADS, **options
        )
    assert not (tmp_path / "a.zarr").exists()
    parallel_predict.predict_volume(
        (model, config), volume, tmp_path / "b.zarr", client=client, diameter=0, torch_threads=THREADS, **options
    )
    with single_process_reference():
        expected = predict(model, open_image(volume), config=config, diameter=0, **options).labels
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["0"][:], expected)


def test_large_file_split_by_a_2d_model_writes_the_same_tiff(client, volume, model_2d, tmp_path):
    options = {"tiling": TilingOptions(tile_shape=72, batch_size=3), "device": "cpu"}  # 4 tiles a plane, 16 planes
    report = parallel_predict.predict_files(
        model_2d, [volume], tmp_path / "out", client=client, split_above=1, torch_threads=THREADS, **options
    )
    assert report.tasks > 1 and report.computed[0].startswith("stack.tif[chunk")
    with single_process_reference():  # (T, Z, Y, X): a 2D model plane by plane
        expected = predict(load_model(model_2d), open_image(volume), **options).labels
    np.testing.assert_array_equal(read_labels(tmp_path / "out" / "stack_labels.tif"), expected[0])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["stack_labels.tif"]  # the work folder is gone
    with pytest.raises(parallel_predict.PredictionFailed, match="instances need the whole image"):
        parallel_predict.predict_files(
            model_2d, [volume], tmp_path / "other", client=client, split_above=1, instances=True
        )


class DiesOnce(torch.nn.Module):
    """A model whose first forward pass kills the worker process running it (the kill -9 of a node)."""

    def __init__(self, inner: torch.nn.Module, marker: str) -> None:
        super().__init__()
        self.inner = inner
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:  # atomic: of two workers starting at once, exactly one dies
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.inner(x)
        os._exit(1)


def test_killed_worker_is_retried_and_the_run_completes(client, crops, tmp_path):
    inner = _tiny_model(2, seed=3)
    config = default_config(inner.architecture)
    dying = DiesOnce(inner, str(tmp_path / "died"))
    report = parallel_predict.predict_files(
        (dying, config), crops[:2], tmp_path / "out", client=client, device="cpu", torch_threads=THREADS
    )
    assert (tmp_path / "died").exists()  # a worker really died mid-run
    assert sorted(report.computed) == sorted(p.name for p in crops[:2]) and not report.failed
    for path in crops[:2]:
        with single_process_reference():
            expected = predict(inner, open_image(path), config=config, device="cpu").labels
        got = read_labels(tmp_path / "out" / path.name.replace(".ome.tif", "_labels.tif"))
        np.testing.assert_array_equal(got, expected[0, 0])


def test_cli_workers_write_what_the_single_process_command_writes(crops, model_2d, tmp_path, capsys):
    from segtune.cli import main

    files = [str(p) for p in crops]
    common = ["predict", "--model", str(model_2d), "--device", "cpu", "--instances"]
    # --workers N gives each local worker cores // N torch threads; the reference uses as many
    with single_process_reference(max(1, (os.cpu_count() or 1) // 2)):
        assert main([*common, *files, "--out", str(tmp_path / "one")]) == 0
    assert f"{len(files)} file(s) written to {tmp_path / 'one'}" in capsys.readouterr().out
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)
    capsys.readouterr()
    assert main([*common, *files, str(broken), "--out", str(tmp_path / "two"), "--workers", "2"]) == 2
    assert "broken.tif" in capsys.readouterr().err  # the one input that failed is named; the others are written
    for path in crops:
        name = path.name.replace(".ome.tif", "_labels.tif")
        single, parallel = tmp_path / "one" / name, tmp_path / "two" / name
        assert tifffile.imread(parallel).dtype == np.uint16  # the command's own writer ran on the workers
        np.testing.assert_array_equal(tifffile.imread(parallel), tifffile.imread(single))
        assert tifffile.imread(single).max() > 1
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "two").iterdir()}
    assert main([*common, *files, "--out", str(tmp_path / "two"), "--workers", "2", "--skip-existing"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "two").iterdir()} == stamps  # nothing done twice
