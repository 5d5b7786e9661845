"""Block-by-block instance labelling (core/blockwise.py): one numbering across blocks, the same
objects as one pass over the whole image, bounded memory by construction, clean cancel."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.measure import label

from segtune.core.metrics import matched_metrics
from segtune.core.predict import ObjectOptions, blockwise
from segtune.core.progress import Cancelled, CancelToken

DSB_IMAGE = "150b0ffa318c87b3"  # a 520 x 696 DSB 2018 validation image, 198 nuclei of ~20 px


def _discs(shape: tuple[int, int], seed: int, count: int, largest: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for y, x, r in zip(
        rng.integers(0, shape[0], count),
        rng.integers(0, shape[1], count),
        rng.integers(1, largest // 2 + 1, count),
        strict=True,
    ):
        mask |= (yy - y) ** 2 + (xx - x) ** 2 < r * r
    return mask


def _same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to the numbering: the same foreground and a one-to-one map between numbers."""
    if not np.array_equal(a > 0, b > 0):
        return False
    pairs = set(zip(a[a > 0].tolist(), b[b > 0].tolist(), strict=True))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs}) == int(b.max())


@settings(max_examples=25, deadline=None)
@given(
    height=st.integers(20, 300),
    width=st.integers(20, 300),
    seed=st.integers(0, 10_000),
    block=st.sampled_from([16, 32, 64]),
    count=st.integers(0, 60),
)
def test_blocks_give_the_objects_of_the_whole_plane(height, width, seed, block, count):
    mask = _discs((height, width), seed, count, largest=24)
    # the promise holds for objects smaller than the halo (merged discs can be larger: drop those)
    whole = label(mask)
    for index, box in enumerate(ndimage.find_objects(whole)):
        if max(s.stop - s.start for s in box) >= 32:
            mask[whole == index + 1] = False
    whole = label(mask)
    bands = list(
        blockwise.label_plane(lambda b: label(mask[b[0] : b[1], b[2] : b[3]]), (height, width), block=block, halo=32)
    )
    assert [len(band) for band in bands] == [min(block, height - y) for y in range(0, height, block)]
    assert _same_objects(np.concatenate(bands), whole)


def test_numbers_run_on_across_planes():
    counter = blockwise.Counter()
    mask = _discs((100, 100), 1, 20, largest=12)
    first = np.concatenate(
        list(
            blockwise.label_plane(
                lambda b: label(mask[b[0] : b[1], b[2] : b[3]]), mask.shape, block=32, halo=16, counter=counter
            )
        )
    )
    second = np.concatenate(
        list(
            blockwise.label_plane(
                lambda b: label(mask[b[0] : b[1], b[2] : b[3]]), mask.shape, block=32, halo=16, counter=counter
            )
        )
    )
    n = int(label(mask).max())
    assert counter.objects == 2 * n
    assert set(np.unique(first)) == set(range(n + 1))
    assert set(np.unique(second)) == {0, *range(n + 1, 2 * n + 1)}


def test_halo_follows_the_object_size():
    assert blockwise.halo_for(None) == blockwise.MIN_HALO
    assert blockwise.halo_for(70) == 288  # four diameters, rounded up to 16
    assert blockwise.halo_for(70) % 16 == 0


def test_large_planes_of_2d_models_go_block_by_block():
    config2d = {"architecture": {"spatial_dims": 2}}
    large = da.zeros((1, 1, 1, 5000, 5000), dtype=np.uint16, chunks=1024)  # never computed
    small = da.zeros((1, 1, 1, 4096, 4096), dtype=np.uint16, chunks=1024)
    assert blockwise.eligible((None, config2d), large)
    assert not blockwise.eligible((None, config2d), small)
    assert not blockwise.eligible((None, {"architecture": {"spatial_dims": 3}}), large)


@pytest.fixture(scope="module")
def dsb(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = shared_data / "nuclei_dsb2018"
    image = iio.imread(folder / "images" / f"{DSB_IMAGE}.png")
    image = image[..., :3].mean(-1) if image.ndim == 3 else image
    return image.astype(np.float32), iio.imread(folder / "labels" / f"{DSB_IMAGE}.png")


@pytest.fixture(scope="module")
def nuclei_model():
    from segtune.core.models.store import load_model

    return load_model("nuclei-2d", device="cpu")


def test_blockwise_prediction_matches_the_whole_image(dsb, nuclei_model, tmp_path):
    from segtune.core.io import open_image
    from segtune.core.predict import predict

    image, truth = dsb
    whole = predict(nuclei_model, image, instances=True, objects=ObjectOptions(min_size="auto"))
    whole_labels = np.asarray(whole.labels)[0, 0]
    events = []
    path, objects, diameter, min_size = blockwise.predict_to_tiff(
        nuclei_model,
        image,
        tmp_path / "labels.tif",
        block=256,
        pixel_sizes=(None, 0.5, 0.5),
        progress=events.append,
        objects=ObjectOptions(min_size="auto"),
    )
    labels = tifffile.imread(path)
    page = tifffile.TiffFile(path).pages[0]
    assert page.is_tiled and page.tilelength == 256 and labels.dtype == np.uint32
    assert labels.shape == image.shape
    assert diameter == pytest.approx(whole.diameter) and min_size == whole.min_size
    assert objects == len(np.unique(labels)) - 1 == int(labels.max())
    # one numbering: the blocks' objects agree with one pass over the image, and score as well against the truth
    agreement = matched_metrics(labels, whole_labels, thresholds=(0.5,))["f1_at_0.5"]
    assert agreement >= 0.97
    f1_blocks = matched_metrics(labels, truth, thresholds=(0.5,))["f1_at_0.5"]
    f1_whole = matched_metrics(whole_labels, truth, thresholds=(0.5,))["f1_at_0.5"]
    assert f1_blocks >= f1_whole - 0.01
    # a step per block (3 x 3 of 256 px, the last row and column narrower), and the pixel sizes reach the file
    steps = [e.done for e in events if e.total == 9]
    assert steps[-1] == 9 and steps == sorted(steps) and len(steps) >= 9
    assert open_image(path).physical_pixel_sizes.X == pytest.approx(0.5)


def test_blockwise_mask_and_cancel(dsb, nuclei_model, tmp_path):
    image, _ = dsb
    crop = image[:300, :300]
    path, objects, _, _ = blockwise.predict_to_tiff(
        nuclei_model, crop, tmp_path / "mask.tif", block=160, instances=False
    )
    mask = tifffile.imread(path)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and objects > 20

    # the same labels into an array on disk (what the widget shows for a large image)
    import zarr

    store = zarr.open_array(
        str(tmp_path / "labels.zarr"), mode="w", shape=(1, 1, 300, 300), chunks=(1, 1, 160, 160), dtype=np.uint32
    )
    count, _, _ = blockwise.predict_into(nuclei_model, crop, store, block=160)
    labels = np.asarray(store[0, 0])
    assert count == objects == int(labels.max()) and np.array_equal(labels > 0, mask > 0)
    plain = np.zeros((300, 300), np.uint32)  # T and Z of length 1 may be left out
    blockwise.predict_into(nuclei_model, crop, plain, block=160)
    assert np.array_equal(plain, labels)
    with pytest.raises(ValueError, match="shape"):
        blockwise.predict_into(nuclei_model, crop, np.zeros((2, 300, 300), np.uint32), block=160)

    token = CancelToken()

    def cancel_after_first_block(event):
        if event.done >= 1:
            token.cancel()

    with pytest.raises(Cancelled):
        blockwise.predict_to_tiff(
            nuclei_model, crop, tmp_path / "cancelled.tif", block=160, progress=cancel_after_first_block, cancel=token
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "mask.tif"]  # no partial file, no temporary


def test_blockwise_refuses_3d_models_and_existing_files(tmp_path, nuclei_model):
    from segtune.core.models.store import load_model

    (tmp_path / "exists.tif").write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        blockwise.predict_to_tiff(nuclei_model, np.zeros((64, 64), np.float32), tmp_path / "exists.tif")
    assert (tmp_path / "exists.tif").read_bytes() == b"mine"
    with pytest.raises(ValueError, match="2D model"):
        blockwise.predict_to_tiff(
            load_model("nuclei-3d", device="cpu"), np.zeros((8, 64, 64), np.float32), tmp_path / "x.tif", axes="ZYX"
        )


def test_cli_blockwise(dsb, shared_data, tmp_path, capsys):
    from segtune.cli import main

    source = shared_data / "nuclei_dsb2018" / "images" / f"{DSB_IMAGE}.png"
    code = main(["predict", str(source), "--model", "nuclei-2d", "--out", str(tmp_path), "--instances", "--blockwise"])
    assert code == 0
    written = tmp_path / f"{DSB_IMAGE}_labels.tif"
    labels = tifffile.imread(written)
    line = capsys.readouterr().out
    assert f"{int(labels.max())} object(s)" in line
    assert tifffile.TiffFile(written).pages[0].is_tiled and labels.max() > 100
