"""Tiled prediction: exact stitching against one untiled pass, Gaussian blending against MONAI, streaming, cancel."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from segtune.core.predict import (
    ModelGeometry,
    TilingOptions,
    plan_tiles,
    predict,
    predict_raw,
    probe_model,
)
from segtune.core.progress import Cancelled, CancelToken

# --- small U-Nets written here, independent of segtune's own ----------------------------------


class TinyUNet(nn.Module):
    """Two poolings (grid 4 where ``pool`` is 2), 3x3 convs, BatchNorm, nearest upsampling.

    Unlike segtune's U-Net it does not pad: it needs sizes that are multiples of the grid.
    ``pool`` may be anisotropic in 3D, e.g. (1, 2, 2).
    """

    def __init__(self, dims: int = 2, cin: int = 1, cout: int = 1, width: int = 4, pool: int | tuple = 2) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        pooling = nn.MaxPool2d if dims == 2 else nn.MaxPool3d

        def block(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(
                conv(a, b, 3, padding=1, bias=False), bn(b), nn.ReLU(), conv(b, b, 3, padding=1), nn.ReLU()
            )

        self.e0, self.e1, self.e2 = block(cin, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.pool = pooling(pool)
        self.up = nn.Upsample(scale_factor=pool, mode="nearest")
        self.d1, self.d0 = block(6 * width, 2 * width), block(3 * width, width)
        self.head = conv(width, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e0(x)
        b = self.e1(self.pool(a))
        c = self.e2(self.pool(b))
        b = self.d1(torch.cat([b, self.up(c)], 1))
        return self.head(self.d0(torch.cat([a, self.up(b)], 1)))


def _warm(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Random seeded weights with BatchNorm statistics of random data, then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(*shape) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def net2d() -> nn.Module:
    torch.manual_seed(0)
    return _warm(TinyUNet(2, 1, 2), (2, 1, 32, 32))


@pytest.fixture(scope="module")
def net3d() -> nn.Module:
    torch.manual_seed(1)
    return _warm(TinyUNet(3, 2, 1, width=3), (2, 2, 8, 16, 16))


@pytest.fixture(scope="module")
def segtune_net() -> nn.Module:
    from segtune.core.models.unet import UNet

    torch.manual_seed(2)
    return _warm(UNet(spatial_dims=2, in_channels=1, out_channels=1, depth=3, base_channels=4), (2, 1, 32, 32))


def untiled(model: nn.Module, image: np.ndarray, grid: int | tuple[int, ...]) -> np.ndarray:
    """The reference: pad the far ends to the grid (reflect; edge when an axis is thinner), run once, crop."""
    spatial = image.shape[1:]
    grid = (grid,) * len(spatial) if isinstance(grid, int) else grid
    pads = [(-n) % g for n, g in zip(spatial, grid, strict=True)]
    mode = "reflect" if all(p < n for p, n in zip(pads, spatial, strict=True)) else "edge"
    padded = np.pad(image, [(0, 0)] + [(0, p) for p in pads], mode=mode)
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(padded))[None])[0].numpy()
    return out[(slice(None), *(slice(0, n) for n in spatial))]


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- probing the model ------------------------------------------------------------------------


def test_probe_finds_grid_and_a_sufficient_halo(net2d):
    geometry = probe_model(net2d, spatial_dims=2, in_channels=1, device="cpu")
    assert geometry.divisor == (4, 4)
    assert geometry.out_channels == 2
    assert geometry.local
    halo = geometry.halo[0]
    assert halo % 4 == 0 and 8 <= halo <= 64
    # independent check of the halo: changing everything farther than it from a block leaves the block alone
    image = rand(1, 256, 256)
    with torch.no_grad():
        reference = net2d(torch.from_numpy(image)[None])[0].numpy()
        changed = image.copy()
        keep = slice(128 - halo, 128 + 8 + halo)
        noise = rand(1, 256, 256, seed=5) * 3
        outside = np.ones((256, 256), bool)
        outside[keep, keep] = False
        changed[0][outside] = noise[0][outside]
        out = net2d(torch.from_numpy(changed)[None])[0].numpy()
    np.testing.assert_allclose(out[:, 128:136, 128:136], reference[:, 128:136, 128:136], atol=1e-5)
    # ... while a change one grid step inside the halo does reach it (the halo is not oversized by much)
    inner = slice(128 - halo + 8, 128 + halo)
    changed = image.copy()
    outside = np.ones((256, 256), bool)
    outside[inner, inner] = False
    changed[0][outside] = noise[0][outside]
    with torch.no_grad():
        out = net2d(torch.from_numpy(changed)[None])[0].numpy()
    assert np.abs(out[:, 128:136, 128:136] - reference[:, 128:136, 128:136]).max() > 1e-6


def test_probe_anisotropic_3d_grid():
    torch.manual_seed(3)
    model = _warm(TinyUNet(3, 1, 1, width=2, pool=(1, 2, 2)), (2, 1, 4, 16, 16))
    geometry = probe_model(model, spatial_dims=3, in_channels=1, device="cpu")
    assert geometry.divisor == (1, 4, 4)
    assert geometry.halo[0] < geometry.halo[1]  # no pooling along Z: a smaller field there


def test_probe_uses_explicit_values_without_measuring(net2d):
    geometry = probe_model(net2d, spatial_dims=2, in_channels=1, device="cpu", halo=30, divisor=4)
    assert geometry.halo == (32, 32) and geometry.divisor == (4, 4)


def test_non_local_model_warns_and_still_matches_when_one_tile_fits():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.InstanceNorm2d(4), nn.Conv2d(4, 1, 1)).eval()
    image = rand(1, 40, 56)
    with pytest.warns(UserWarning, match="depends on the whole input"):
        out = predict_raw(model, image, spatial_dims=2, device="cpu")
    np.testing.assert_allclose(out, untiled(model, image, 1), atol=1e-5)


# --- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [None, 96, 128, (120, 250)])
def test_exact_on_odd_shapes(net2d, tile):
    image = rand(1, 203, 317)
    out = predict_raw(net2d, image, spatial_dims=2, tile_shape=tile, device="cpu")
    assert out.shape == (2, 203, 317) and out.dtype == np.float32
    np.testing.assert_allclose(out, untiled(net2d, image, 4), atol=1e-4)


def test_exact_with_many_tiles_under_a_memory_limit(net2d):
    image = rand(1, 300, 260, seed=1)
    geometry = probe_model(net2d, spatial_dims=2, in_channels=1, device="cpu")
    limit = 3 * 120 * 120 * geometry.bytes_per_pixel  # three tiles of about 120 x 120 per pass
    events = []
    out = predict_raw(
        net2d, image, spatial_dims=2, device="cpu", memory_limit=limit, batch_size=3, progress=events.append
    )
    np.testing.assert_allclose(out, untiled(net2d, image, 4), atol=1e-4)
    assert 4 < events[-1].done == events[-1].total < 40  # it really was tiled, into sensible tiles
    assert [e.done for e in events] == sorted(e.done for e in events)


def test_exact_with_segtune_unet_which_pads_itself(segtune_net):
    image = rand(1, 150, 93, seed=2)
    with torch.no_grad():
        reference = segtune_net(torch.from_numpy(image)[None])[0].numpy()  # pads internally, like our definition
    out = predict_raw(segtune_net, image, spatial_dims=2, tile_shape=120, device="cpu")
    np.testing.assert_allclose(out, reference, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (1, 1), (3, 130)])
def test_exact_on_one_pixel_thin_images(net2d, shape):
    image = rand(1, *shape, seed=3)
    out = predict_raw(net2d, image, spatial_dims=2, tile_shape=100, device="cpu")
    assert out.shape == (2, *shape)
    np.testing.assert_allclose(out, untiled(net2d, image, 4), atol=1e-4)


def test_exact_3d_with_fewer_slices_than_the_tile(net3d):
    image = rand(2, 3, 70, 45, seed=4)
    out = predict_raw(net3d, image, spatial_dims=3, tile_shape=(16, 64, 64), device="cpu")
    assert out.shape == (1, 3, 70, 45)
    np.testing.assert_allclose(out, untiled(net3d, image, 4), atol=1e-4)


def test_exact_from_dask_and_zarr_inputs(net2d, tmp_path):
    import dask.array as da
    import zarr

    image = rand(1, 130, 170, seed=6)
    reference = predict_raw(net2d, image, spatial_dims=2, tile_shape=96, device="cpu")
    lazy = da.from_array(image, chunks=(1, 50, 50))
    np.testing.assert_array_equal(predict_raw(net2d, lazy, spatial_dims=2, tile_shape=96, device="cpu"), reference)
    stored = zarr.open_array(
        str(tmp_path / "in.zarr"), mode="w", shape=image.shape, chunks=(1, 64, 64), dtype="float32"
    )
    stored[:] = image
    np.testing.assert_array_equal(predict_raw(net2d, stored, spatial_dims=2, tile_shape=96, device="cpu"), reference)
    # and uint16 input is read as its values
    counts = (np.abs(image) * 1000).astype(np.uint16)
    np.testing.assert_allclose(
        predict_raw(net2d, counts, spatial_dims=2, device="cpu"),
        predict_raw(net2d, counts.astype(np.float32), spatial_dims=2, device="cpu"),
        atol=1e-5,
    )


def test_instances_are_not_cut_at_tile_seams(segtune_net):
    from segtune.core.postprocess import instances_from_binary

    image = rand(1, 200, 200, seed=7)
    tiled = predict_raw(segtune_net, image, spatial_dims=2, tile_shape=112, device="cpu")
    with torch.no_grad():
        reference = segtune_net(torch.from_numpy(image)[None])[0].numpy()
    level = float(np.median(reference))  # about half the image foreground: objects everywhere, across seams
    a = instances_from_binary(1 / (1 + np.exp(-tiled[0])), 1 / (1 + np.exp(-level)))
    b = instances_from_binary(1 / (1 + np.exp(-reference[0])), 1 / (1 + np.exp(-level)))
    assert a.max() > 3
    np.testing.assert_array_equal(a, b)


def test_exact_on_a_real_image(segtune_net, nuclei_dir):
    import imageio.v3 as iio

    path = sorted(
        p
        for p in nuclei_dir.rglob("*")
        if p.suffix.lower() in (".png", ".tif", ".tiff")
        and "mask" not in p.name.lower()
        and "label" not in str(p).lower()
    )[0]
    raw = np.asarray(iio.imread(path)).astype(np.float32)
    raw = raw if raw.ndim == 2 else raw[..., 0]
    lo, hi = np.percentile(raw, (1, 99.8))
    image = ((raw - lo) / (hi - lo))[None].astype(np.float32)
    with torch.no_grad():
        reference = torch.sigmoid(segtune_net(torch.from_numpy(image)[None]))[0].numpy()
    out = predict_raw(segtune_net, image, spatial_dims=2, tile_shape=384, device="cpu")
    np.testing.assert_allclose(1 / (1 + np.exp(-out)), reference, atol=1e-3)


# --- planning ---------------------------------------------------------------------------------


def test_plan_prefers_one_tile_when_it_fits_and_few_halos_otherwise():
    geometry = ModelGeometry(divisor=(8, 8), halo=(48, 48), bytes_per_pixel=100.0, out_channels=1)
    one = plan_tiles((2048, 2048), geometry, memory_limit=2048 * 2048 * 100)
    assert one.counts == (1, 1) and one.work == 1.0
    split = plan_tiles((2048, 2048), geometry, memory_limit=1100 * 2048 * 100)
    assert np.prod(split.counts) == 2 and split.work < 1.05  # two tiles, one halo each
    cores = [kept for _, kept, _ in split.windows()]
    covered = np.zeros((2048, 2048), int)
    for kept in cores:
        covered[kept] += 1
    assert (covered == 1).all()  # the kept regions tile the image exactly once


def test_plan_windows_keep_the_halo_away_from_inner_edges():
    geometry = ModelGeometry(divisor=(4, 4, 4), halo=(8, 12, 12), bytes_per_pixel=10.0, out_channels=1)
    plan = plan_tiles((37, 101, 77), geometry, memory_limit=1e9, tile_shape=(24, 40, 40))
    padded = plan.padded_shape
    for window, kept, inner in plan.windows():
        for w, k, i, h, p in zip(window, kept, inner, geometry.halo, padded, strict=True):
            assert w.start % 4 == 0 and 0 <= w.start and w.stop <= p
            assert i.start == k.start - w.start
            assert w.start == 0 or k.start - w.start >= h  # halo before, unless at the image start
            assert w.stop == p or w.stop - k.stop >= h  # halo after, unless at the (padded) end


# --- Gaussian blending ------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "roi", "overlap"), [((1, 70, 90), (32, 32), 0.25), ((1, 20, 70), (32, 32), 0.5)])
def test_gaussian_matches_monai(net2d, shape, roi, overlap):
    import monai.inferers as monai_inferers

    image = rand(*shape, seed=8)
    with torch.no_grad():
        expected = monai_inferers.sliding_window_inference(
            torch.from_numpy(image)[None], roi, 3, net2d, overlap=overlap, mode="gaussian"
        )[0].numpy()
    out = predict_raw(
        net2d, image, spatial_dims=2, tile_shape=roi, overlap=overlap, batch_size=3, blend="gaussian", device="cpu"
    )
    np.testing.assert_allclose(out, expected, atol=1e-4)


# --- skipping, outputs, cancel ----------------------------------------------------------------


def test_skip_empty_tiles(net2d):
    image = np.zeros((1, 240, 240), np.float32)
    image[0, 20:60, 30:70] = rand(40, 40, seed=9) + 3
    reference = untiled(net2d, image, 4)
    events = []
    out = predict_raw(
        net2d,
        image,
        spatial_dims=2,
        tile_shape=112,
        skip_threshold=0.5,
        skip_value=(-7.0, 7.0),
        device="cpu",
        progress=events.append,
    )
    assert events[-1].done == events[-1].total
    near = (slice(None), slice(0, 60), slice(0, 70))
    np.testing.assert_allclose(out[near], reference[near], atol=1e-4)  # the tile with signal is exact
    assert (out[0] == -7.0).any() and (out[1][out[0] == -7.0] == 7.0).all()  # skipped tiles hold the value
    mask = np.zeros((240, 240), bool)
    mask[200:, 200:] = True
    masked = predict_raw(net2d, image, spatial_dims=2, tile_shape=112, skip_mask=mask, device="cpu")
    np.testing.assert_allclose(masked[:, 200:, 200:], reference[:, 200:, 200:], atol=1e-4)
    assert (masked[:, :50, :50] == 0).all()


def test_writes_into_given_arrays_and_zarr_paths(net2d, tmp_path):
    image = rand(1, 100, 120, seed=10)
    reference = untiled(net2d, image, 4)
    into = np.full((2, 100, 120), np.nan, np.float32)
    assert predict_raw(net2d, image, spatial_dims=2, out=into, tile_shape=64, device="cpu") is into
    np.testing.assert_allclose(into, reference, atol=1e-4)
    stored = predict_raw(net2d, image, spatial_dims=2, out=tmp_path / "p.zarr", tile_shape=64, device="cpu")
    np.testing.assert_allclose(stored[:], reference, atol=1e-4)
    assert stored.attrs["segtune"]["complete"] is True
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_raw(net2d, image, spatial_dims=2, out=tmp_path / "p.zarr", device="cpu")
    with pytest.raises(ValueError, match="shape"):
        predict_raw(net2d, image, spatial_dims=2, out=np.zeros((2, 10, 10), np.float32), device="cpu")


def test_cancel_leaves_the_zarr_output_consistent(net2d, tmp_path):
    image = rand(1, 200, 260, seed=11)
    reference = untiled(net2d, image, 4)
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        if event.done >= 3:
            token.cancel()

    with pytest.raises(Cancelled):
        predict_raw(
            net2d,
            image,
            spatial_dims=2,
            tile_shape=96,
            batch_size=1,
            out=tmp_path / "c.zarr",
            device="cpu",
            progress=progress,
            cancel=token,
        )
    import zarr

    stored = zarr.open_array(str(tmp_path / "c.zarr"), mode="r")
    state = stored.attrs["segtune"]
    assert state["complete"] is False and state["tiles_done"] == 3 < state["tiles_total"]
    data = stored[:]
    chunk_y, chunk_x = stored.chunks[1:]
    written = 0
    for y0 in range(0, 200, chunk_y):
        for x0 in range(0, 260, chunk_x):
            block = data[:, y0 : y0 + chunk_y, x0 : x0 + chunk_x]
            if np.isnan(block).all():
                continue
            written += 1  # every chunk is either untouched (NaN) or final
            np.testing.assert_allclose(block, reference[:, y0 : y0 + chunk_y, x0 : x0 + chunk_x], atol=1e-4)
    assert written == 3


def test_callers_model_is_left_alone(net2d):
    net2d.train()
    before = {k: v.clone() for k, v in net2d.state_dict().items()}
    try:
        predict_raw(net2d, rand(1, 40, 40), spatial_dims=2, device="cpu")
        assert net2d.training
        for k, v in net2d.state_dict().items():
            assert torch.equal(v, before[k]), k
        assert next(net2d.parameters()).is_contiguous()
    finally:
        net2d.eval()


def test_prepared_copy_is_reused_until_the_weights_change():
    """The eval copy (BatchNorm folded, channels-last) is made once per model, and made again
    when the weights change in place (an optimiser step, load_state_dict) -- never stale."""
    from segtune.core.predict import runner

    torch.manual_seed(3)
    net = _warm(TinyUNet(2, 1, 1), (2, 1, 32, 32))
    image = rand(1, 40, 40, seed=3)
    first = predict_raw(net, image, spatial_dims=2, device="cpu")
    (copy_before,) = (entry[1] for entry in runner._PREPARED[net].values())
    again = predict_raw(net, image, spatial_dims=2, device="cpu")
    (copy_after,) = (entry[1] for entry in runner._PREPARED[net].values())
    assert copy_after is copy_before
    np.testing.assert_array_equal(again, first)

    with torch.no_grad():
        net.head.weight.mul_(-2.0)  # written in place, as an optimiser step writes
    changed = predict_raw(net, image, spatial_dims=2, device="cpu")
    assert not np.allclose(changed, first, atol=1e-3)
    np.testing.assert_allclose(changed, untiled(net, image, 4), atol=1e-4)

    torch.manual_seed(4)
    other = _warm(TinyUNet(2, 1, 1), (2, 1, 32, 32))
    net.load_state_dict(other.state_dict())
    np.testing.assert_allclose(
        predict_raw(net, image, spatial_dims=2, device="cpu"), untiled(other, image, 4), atol=1e-4
    )


# --- memory pressure ----------------------------------------------------------------------------


class RationedModel:
    """A plain callable around a model that fails as torch does when a pass needs too much memory."""

    def __init__(self, inner: nn.Module, max_pixels: int) -> None:
        self.inner = inner
        self.max_pixels = max_pixels
        self.refused = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] * x[0, 0].numel() > self.max_pixels:
            self.refused += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_then_the_tile(net2d):
    image = rand(1, 180, 200, seed=12)
    geometry = probe_model(net2d, spatial_dims=2, in_channels=1, device="cpu")
    rationed = RationedModel(net2d, max_pixels=100 * 100)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = predict_raw(
            rationed,
            image,
            spatial_dims=2,
            device="cpu",
            halo=geometry.halo,
            divisor=geometry.divisor,
            memory_limit=1e12,
        )
    np.testing.assert_allclose(out, untiled(net2d, image, 4), atol=1e-4)
    assert rationed.refused >= 1
    assert any("smaller tiles" in str(w.message) for w in caught)


def test_out_of_memory_at_the_smallest_tile_on_cpu_is_a_clear_error(net2d):
    geometry = probe_model(net2d, spatial_dims=2, in_channels=1, device="cpu")
    rationed = RationedModel(net2d, max_pixels=2000)  # the measuring pass (32 x 32) fits, no tile does
    with pytest.raises(MemoryError, match="smallest tile"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predict_raw(
            rationed, rand(1, 64, 64), spatial_dims=2, device="cpu", halo=geometry.halo, divisor=geometry.divisor
        )


# --- errors -----------------------------------------------------------------------------------


def test_errors_name_the_problem(net2d):
    with pytest.raises(ValueError, match=r"shape \(C, Y, X\)"):
        predict_raw(net2d, rand(40, 40), spatial_dims=2, device="cpu")
    with pytest.raises(ValueError, match="spatial_dims"):
        predict_raw(net2d, rand(1, 40, 40), spatial_dims=4, device="cpu")
    with pytest.raises(ValueError, match="blend"):
        predict_raw(net2d, rand(1, 40, 40), spatial_dims=2, blend="median", device="cpu")

    def shrinking(x: torch.Tensor) -> torch.Tensor:
        return x[..., 1:, 1:]

    with pytest.raises(ValueError, match="spatial"):
        predict_raw(shrinking, rand(1, 40, 40), spatial_dims=2, device="cpu")


def test_overlap_is_reported_as_ignored_in_exact_mode(net2d):
    with pytest.warns(UserWarning, match="overlap has no effect"):
        predict_raw(net2d, rand(1, 40, 40), spatial_dims=2, overlap=0.5, device="cpu")


# --- predict(): stacks, channels, normalisation, heads -------------------------------------------


def _config(head: str, in_channels: int = 1, out_channels: int = 1, dims: int = 2, normalization=None) -> dict:
    return {
        "architecture": {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels},
        "head": head,
        "classes": [],
        "normalization": normalization,
    }


def test_predict_over_t_and_z_planes_with_channel_choice(net2d):
    stack = np.stack([rand(2, 3, 60, 70, seed=s) for s in range(2)])  # T=2, C=2, Z=3
    stack[:, 1] = stack[:, 1] * 50 + 300  # channel 1 in camera-like units
    config = _config("semantic", 1, 2, normalization={"method": "percentile", "low": 1.0, "high": 99.8})
    result = predict((net2d, config), stack, channel=1, device="cpu", tiling=TilingOptions(tile_shape=64))
    assert result.probabilities.shape == (2, 2, 3, 60, 70)
    assert result.labels.shape == (2, 3, 60, 70)
    lo, hi = np.percentile(stack[:, 1], (1, 99.8))
    for t in range(2):
        for z in range(3):
            plane = ((stack[t, 1, z] - lo) / (hi - lo))[None].astype(np.float32)
            expected = torch.softmax(torch.from_numpy(untiled(net2d, plane, 4))[None], 1)[0].numpy()
            np.testing.assert_allclose(result.probabilities[t, :, z], expected, atol=1e-3)
            np.testing.assert_array_equal(result.labels[t, z], expected.argmax(0))
    with pytest.raises(ValueError, match="channels"):
        predict((net2d, config), stack, device="cpu")
    with pytest.raises(ValueError, match="channel 5 does not exist"):
        predict((net2d, config), stack, channel=5, device="cpu")
    named = predict((net2d, config), stack, channel="dapi", channel_names=["gfp", "dapi"], device="cpu", labels=False)
    np.testing.assert_allclose(named.probabilities, result.probabilities, atol=1e-6)


def test_predict_3d_model_over_time(net3d):
    stack = rand(2, 2, 5, 40, 36, seed=20)  # T=2, C=2 (the model takes 2), Z, Y, X
    result = predict((net3d, _config("binary", 2, 1, dims=3)), stack, device="cpu", normalize=False, threshold=0.5)
    assert result.probabilities.shape == (2, 1, 5, 40, 36)
    for t in range(2):
        expected = 1 / (1 + np.exp(-untiled(net3d, stack[t], 4)))
        np.testing.assert_allclose(result.probabilities[t], expected, atol=1e-4)
        np.testing.assert_array_equal(result.labels[t], (expected[0] > 0.5).astype(np.uint8))


def test_predict_instances_number_objects_across_the_stack(segtune_net):
    stack = rand(3, 80, 80, seed=21)  # ZYX, a 2D model works plane by plane
    config = _config("binary")
    result = predict((segtune_net, config), stack, device="cpu", instances=True, threshold=0.5, normalize=False)
    labels = result.labels[0]
    assert labels.dtype == np.int32
    ids = [set(np.unique(plane)) - {0} for plane in labels]
    assert all(ids)
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # numbers run on, never reused
    assert max(max(i) for i in ids) == sum(len(i) for i in ids)


def test_a_part_predicted_with_whole_image_settings_matches_the_whole(nuclei_dir):
    """The widget predicts the visible region of a large image first: with the whole image's
    normalisation and diameter fixed, that region's result is the whole image's result there."""
    import imageio.v3 as iio

    from segtune.core.predict import whole_image_settings

    image = iio.imread(nuclei_dir / "images" / "0.png")[:512, :768]
    image[:, :256] //= 4  # a dim left third: the part's own percentiles would differ from the whole's
    part = (slice(128, 448), slice(320, 704))
    config, diameter = whole_image_settings("nuclei-2d", image, diameter=0)
    assert diameter == 0 and len(config["normalization"]["limits"]) == 1
    whole = predict("nuclei-2d", image, config=config, diameter=diameter, labels=False).probabilities[0, :, 0]
    alone = predict("nuclei-2d", image[part], config=config, diameter=diameter, labels=False).probabilities[0, :, 0]
    inner = (slice(None), slice(64, -64), slice(64, -64))  # the part's edges see less context
    np.testing.assert_allclose(alone[inner], whole[(slice(None), *part)][inner], atol=1e-4)
    plain = predict("nuclei-2d", image[part], diameter=0, labels=False).probabilities[0, :, 0]
    assert np.abs(plain[inner] - whole[(slice(None), *part)][inner]).max() > 0.05  # its own percentiles differ

    config, diameter = whole_image_settings("nuclei-2d", image)  # automatic: estimated once, from the whole
    assert diameter > 40
    first = predict("nuclei-2d", image[part], config=config, diameter=diameter, instances=True)
    assert first.diameter == diameter


def test_one_torch_thread_while_other_processes_keep_the_cores_busy(net2d, monkeypatch):
    """Spinning OpenMP threads slow each other down several-fold on an oversubscribed CPU:
    predict then runs on one thread, and gives the thread count back afterwards."""
    import os

    seen = []

    def model(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return net2d(x)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count() or 1) + 4.0, 0.0, 0.0))
        predict_raw(model, rand(1, 40, 40), spatial_dims=2, device="cpu", halo=16, divisor=4)
        assert seen and set(seen) == {1} and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.0, 0.0))  # a quiet machine keeps its threads
        predict_raw(model, rand(1, 40, 40), spatial_dims=2, device="cpu", halo=16, divisor=4)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_prediction_clips_the_normalisation_when_the_model_was_trained_so():
    """A model trained with ``clip`` (the 5-98 contrast stretch) sees clipped windows in
    prediction too, as its training samples were (train/data); without it the tails stay."""
    from segtune.core.predict import normalizer

    data = np.arange(1000, dtype=np.float32).reshape(1, 1, 1, 10, 100)
    spec = {"method": "percentile", "low": 5.0, "high": 98.0}
    clipped = normalizer(data, [0], {**spec, "clip": True})(data[0, :, 0])
    plain = normalizer(data, [0], {**spec, "clip": False})(data[0, :, 0])
    assert clipped.min() == 0.0 and clipped.max() == 1.0
    assert plain.min() < -0.04 and plain.max() > 1.01
    inside = (plain > 0) & (plain < 1)
    np.testing.assert_allclose(clipped[inside], plain[inside])


@pytest.mark.parametrize("name", ["nuclei-2d", "membranes-2d", "nuclei-3d"])
def test_bundled_models_tile_exactly(name):
    """Every bundled model probes as shift-equivariant on its pooling grid (2 ** depth), so tiles
    equal one untiled pass. (The probe once compared shifted outputs too close to the window's
    ends, where a trained nuclei-3d's reach passed the measured spread: no grid, no exact tiles.)"""
    from segtune.core.models.store import load_model

    model, config = load_model(name)
    architecture = config["architecture"]
    geometry = probe_model(model, spatial_dims=architecture["spatial_dims"], in_channels=1)
    assert geometry.local
    assert geometry.divisor == (2 ** architecture["depth"],) * architecture["spatial_dims"]


def test_a_model_of_dark_objects_estimates_the_diameter_on_the_inverted_image():
    # brightfield nuclei: the nuclei of a synthetic fluorescence image, made darker than the background
    from segtune.core.models.store import load_model
    from segtune.core.predict import whole_image_settings
    from segtune.core.synthetic import random_nuclei_parameters, synthetic_nuclei

    params = random_nuclei_parameters(np.random.default_rng(3), diameter=(24, 24))
    sample = synthetic_nuclei((256, 256), seed=3, **params)
    dark = (float(sample.image.max()) - sample.image).astype(np.float32)
    model, config = load_model("nuclei-2d")
    _, fluorescence = whole_image_settings(model, sample.image, config=config, axes="YX")
    _, as_is = whole_image_settings(model, dark, config=config, axes="YX")
    _, inverted = whole_image_settings(model, dark, config={**config, "dark_objects": True}, axes="YX")
    assert inverted == pytest.approx(fluorescence, rel=0.05)
    assert abs(inverted - 24) < 5
    assert abs(as_is - 24) > 5  # measured on the bright background between the nuclei, it is wrong


def test_a_colour_image_is_read_as_the_grey_mean_of_its_colours_on_every_prediction_path(shared_data):
    """An RGB(A) image (channels red, green, blue, alpha, as a PNG or a napari RGB layer has them)
    given to a one-channel model without a channel: the mean of its colours, as the bundled
    models read colour images in training; the same on the whole-image, first-look
    (``whole_image_settings``) and block-by-block paths. Before, each asked for a channel."""
    import imageio.v3 as iio

    from segtune.core.models.store import load_model
    from segtune.core.predict import whole_image_settings
    from segtune.core.predict.blockwise import predict_into

    rgba = iio.imread(shared_data / "nuclei_dsb2018" / "images" / "0e21d7b3eea8cdbb.png")  # stained tissue
    if rgba.shape[-1] == 3:
        rgba = np.concatenate([rgba, np.full(rgba.shape[:2] + (1,), 255, rgba.dtype)], axis=-1)
    grey = np.mean(rgba[..., :3], axis=-1, dtype=np.float32)
    model = load_model("nuclei-he-2d")
    colour = {"axes": "YXC", "channel_names": ["red", "green", "blue", "alpha"]}
    options = {"instances": True, "device": "cpu"}

    expected = predict(model, grey, axes="YX", **options).labels
    assert expected.max() > 10
    np.testing.assert_array_equal(predict(model, rgba, **colour, **options).labels, expected)
    red = predict(model, rgba, channel="red", **colour, **options).labels
    assert not np.array_equal(red, expected)  # the choice matters on stained tissue

    config, diameter = whole_image_settings(model, rgba, **colour)
    assert (config, diameter) == whole_image_settings(model, grey, axes="YX")

    out, want = np.zeros(grey.shape, np.uint32), np.zeros(grey.shape, np.uint32)
    predict_into(model, rgba, out, block=128, **colour, **options)
    predict_into(model, grey, want, block=128, axes="YX", **options)
    np.testing.assert_array_equal(out, want)
    assert want.max() > 10

    # channels without colour names are no colour image: the model's one channel is still asked for
    with pytest.raises(ValueError, match="choose with channel="):
        predict(model, rgba, axes="YXC", **options)
