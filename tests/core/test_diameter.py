"""Tests of object-diameter measurement, estimation from images, and rescaling for prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segtune.core.diameter import (
    estimate_diameter,
    labels_diameter,
    rescale_for_model,
    resolve_diameter,
    restore_shape,
    scale_factor,
)
from segtune.core.synthetic import synthetic_nuclei


def _disc(radius: float, size: int = 101) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return (np.hypot(yy, xx) <= radius).astype(np.uint8)


def test_labels_diameter_hand_cases():
    # a square of 10 x 10 pixels has the area of a circle of diameter 2 * sqrt(100 / pi)
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:30, 20:30] = 7
    labels[0:2, 30:32] = 3  # 4 pixels
    assert labels_diameter(labels) == pytest.approx(2 * np.sqrt(100 / np.pi))  # median of 11.28, 11.28, 2.26
    assert labels_diameter(labels, min_area=5) == pytest.approx(2 * np.sqrt(100 / np.pi))
    assert np.isnan(labels_diameter(np.zeros((5, 5), np.uint8)))
    # a binary mask is split into its connected components
    mask = np.zeros((30, 30), bool)
    mask[2:6, 2:6] = True
    mask[10:20, 10:20] = True
    mask[22:28, 22:28] = True
    assert labels_diameter(mask) == pytest.approx(2 * np.sqrt(36 / np.pi))
    # 3D: the largest XY cross-section counts
    volume = np.zeros((5, 30, 30), np.uint16)
    volume[1, 10:14, 10:14] = 1
    volume[2, 8:16, 8:16] = 1
    assert labels_diameter(volume) == pytest.approx(2 * np.sqrt(64 / np.pi))
    with pytest.raises(ValueError, match="integers"):
        labels_diameter(np.zeros((4, 4), np.float32))


@pytest.mark.parametrize("diameter", [10, 18, 30, 50])
def test_estimate_within_fifteen_percent_across_scales(diameter):
    # per image the estimate scatters by up to ~25% (clumps, blur); over three images of a
    # scale its median is within 15% of the truth at every scale, i.e. it is not biased by size
    side = int(max(256, diameter * 10))
    ratios = []
    for seed in range(3):
        sample = synthetic_nuclei((side, side), diameter=diameter, touching=0.4, eccentricity=0.6, seed=diameter + seed)
        ratios.append(estimate_diameter(sample.image) / labels_diameter(sample.labels))
    assert np.median(ratios) == pytest.approx(1.0, abs=0.15)
    assert min(ratios) > 0.7 and max(ratios) < 1.35


def test_estimate_dim_8bit_textured_and_uneven():
    sample = synthetic_nuclei(
        (256, 256),
        diameter=22,
        dtype=np.uint8,
        uint8_peak=60,
        brightness=300,
        background=150,
        read_noise=8,
        texture=0.5,
        illumination=0.6,
        debris=15,
        overlap=0.2,
        elastic=3.0,
        seed=5,
    )
    assert estimate_diameter(sample.image) == pytest.approx(labels_diameter(sample.labels), rel=0.2)


def test_large_nuclei_are_measured_on_a_shrunk_image_like_at_full_resolution(nuclei_dir, monkeypatch):
    """Nuclei of 60-100 px are measured on the image shrunk 3-4x (ten times faster); the answer
    stays within 10% of the full-resolution measurement, and as close to the truth."""
    import imageio.v3 as iio

    from segtune.core import diameter

    names = ["0.png", "30.png", "46.png"]
    images = [iio.imread(nuclei_dir / "images" / name) for name in names]
    truths = [labels_diameter(iio.imread(nuclei_dir / "labels" / name) > 0) for name in names]
    shrunk_levels = []
    original_measure = diameter._measure

    def spy(array, sigma, min_diameter, scale=1):
        shrunk_levels.append(scale)
        return original_measure(array, sigma, min_diameter, scale)

    monkeypatch.setattr(diameter, "_measure", spy)
    fast = [estimate_diameter(image) for image in images]
    assert min(shrunk_levels) >= 3  # nothing measured at full resolution
    monkeypatch.setattr(diameter, "_MIN_SHRUNK_DIAMETER", np.inf)  # never shrink: the full-resolution answer
    full = [estimate_diameter(image) for image in images]
    np.testing.assert_allclose(fast, full, rtol=0.10)
    fast_error = np.mean(np.abs(np.array(fast) / truths - 1))
    full_error = np.mean(np.abs(np.array(full) / truths - 1))
    assert fast_error <= full_error + 0.02


def test_estimate_3d_gives_the_xy_diameter():
    stack = synthetic_nuclei((24, 128, 128), diameter=20, z_anisotropy=2.0, seed=3)
    assert estimate_diameter(stack.image) == pytest.approx(labels_diameter(stack.labels), rel=0.2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("shape", "diameter", "anisotropy"), [((64, 128, 128), 16, 1.0), ((24, 128, 128), 20, 2.0)])
def test_estimate_3d_measures_each_nucleus_at_its_largest_section(shape, diameter, anisotropy, seed):
    """Nuclei spread through a deep stack are cut off their middle by most planes; the estimate
    still finds their largest XY section (as labels_diameter measures it). Measuring the brightest
    planes alone was up to 22% off on these stacks."""
    stack = synthetic_nuclei(shape, diameter=diameter, z_anisotropy=anisotropy, seed=seed)
    assert estimate_diameter(stack.image) == pytest.approx(labels_diameter(stack.labels), rel=0.15)


def test_estimate_blank_and_bad_input():
    assert np.isnan(estimate_diameter(np.full((64, 64), 7.0)))
    assert np.isnan(estimate_diameter(np.full((5, 64, 64), 7.0)))
    assert estimate_diameter(_disc(10) * 5, kind="labels") == pytest.approx(labels_diameter(_disc(10)))
    with pytest.raises(ValueError, match="kind"):
        estimate_diameter(np.zeros((8, 8)), kind="mask")
    with pytest.raises(ValueError, match="2D"):
        estimate_diameter(np.zeros(8))


def test_rescale_and_restore_round_trip():
    labels = np.zeros((60, 80), np.uint16)
    labels[10:30, 10:30] = 1
    labels[35:55, 40:75] = 2
    small = rescale_for_model(labels, diameter=40, model_diameter=20, order=0)
    assert small.shape == (30, 40) and small.dtype == np.uint16
    assert set(np.unique(small)) == {0, 1, 2}
    back = restore_shape(small, labels.shape, order=0)
    assert back.shape == labels.shape
    assert np.mean(back == labels) > 0.97
    # images: leading (channel) axes are kept, a smooth ramp stays a ramp
    ramp = np.tile(np.linspace(0, 1, 80, dtype=np.float32), (2, 60, 1))
    zoomed = rescale_for_model(ramp, 10, 25)
    assert zoomed.shape == (2, 150, 200)
    assert np.allclose(restore_shape(zoomed, (60, 80)), ramp, atol=0.02)
    assert rescale_for_model(ramp, None, 25) is ramp  # nothing to do
    assert scale_factor(None, 20) == scale_factor(30, None) == scale_factor(float("nan"), 20) == 1.0
    assert scale_factor(40, 20) == 0.5


def test_resolve_diameter_rules():
    auto = {"object_diameter": 20.0, "auto_diameter": True}
    plain = {"object_diameter": 20.0}
    assert resolve_diameter(40, plain) == (40.0, 0.5)
    assert resolve_diameter(None, auto) == (None, 1.0)
    assert resolve_diameter(0, auto) == (None, 1.0)
    assert resolve_diameter("auto", plain) == (None, 1.0)  # user models keep their input scale
    sample = synthetic_nuclei((288, 288), diameter=30, seed=2)  # about 25 nuclei: enough to measure
    used, zoom = resolve_diameter("auto", auto, sample.image)
    assert used == pytest.approx(labels_diameter(sample.labels), rel=0.15)
    assert zoom == pytest.approx(20.0 / used)
    with pytest.warns(UserWarning, match="no object_diameter"):
        assert resolve_diameter(30, {}) == (None, 1.0)
    with pytest.raises(ValueError, match="diameter"):
        resolve_diameter("big", auto)
    with pytest.raises(ValueError, match="positive"):
        resolve_diameter(-3, auto)


class _Brightness(torch.nn.Module):
    """A "model" whose foreground logit is the (normalised) intensity: prediction = the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 20


def test_predict_zooms_to_the_model_diameter_and_back():
    from segtune.core.predict import predict

    sample = synthetic_nuclei((160, 160), diameter=24, read_noise=2, debris=0, seed=9)
    config = {
        "architecture": {"spatial_dims": 2, "in_channels": 1, "out_channels": 1},
        "head": "binary",
        "normalization": {"method": "percentile", "low": 1.0, "high": 99.8},
        "object_diameter": 12.0,
        "auto_diameter": True,
    }
    direct = predict(_Brightness(), sample.image, config=config, diameter=None, instances=True, device="cpu")
    zoomed = predict(_Brightness(), sample.image, config=config, diameter=24, instances=True, device="cpu")
    auto = predict(_Brightness(), sample.image, config=config, instances=True, device="cpu")
    assert direct.diameter is None and zoomed.diameter == 24.0
    assert auto.diameter == pytest.approx(estimate_diameter(sample.image))  # estimated from the image itself
    assert zoomed.probabilities.shape == direct.probabilities.shape == (1, 1, 1, 160, 160)
    assert zoomed.labels.shape == direct.labels.shape
    # zooming to half size and back loses little of the masks
    a, b = direct.labels[0, 0] > 0, zoomed.labels[0, 0] > 0
    assert (a & b).sum() / (a | b).sum() > 0.85


@pytest.mark.parametrize(
    "shape, target", [((64, 80), (256, 301)), ((1, 7), (3, 7)), ((5, 1), (9, 4)), ((2, 30, 40), (2, 61, 40))]
)
def test_enlarging_gives_the_numbers_of_skimage_resize(shape, target):
    """Probabilities are zoomed back to the image's size by a separable linear interpolation
    that must give what scikit-image's resize (linear, reflect) gives, edges included."""
    from skimage.transform import resize

    image = np.random.default_rng(3).random(shape).astype(np.float32)
    expected = resize(image, target, order=1, mode="reflect", anti_aliasing=False, preserve_range=True)
    np.testing.assert_allclose(restore_shape(image, target), expected, atol=1e-6)


@pytest.mark.parametrize("scale", [0.37, 0.5, 1.7])
def test_training_samples_are_zoomed_as_prediction_zooms(scale):
    """Training rescales its images, labels and ignore masks by the rule prediction rescales new
    images with (rescale_for_model), so the model learns at the scale it will see."""
    from segtune.core.normalize import percentile_normalize
    from segtune.core.train.data import make_sample

    nuclei = synthetic_nuclei((90, 110), diameter=18, seed=4)
    image, labels = nuclei.image, nuclei.labels
    mask = np.ones(labels.shape, bool)
    mask[:20, :30] = False
    sample = make_sample(image, labels, mask=mask, scale=scale)
    expected = rescale_for_model(percentile_normalize(image), 10.0, 10.0 * scale)
    np.testing.assert_array_equal(sample.image[0, 0], expected)
    np.testing.assert_array_equal(sample.labels[0], rescale_for_model(labels, 10.0, 10.0 * scale, order=0))
    np.testing.assert_array_equal(sample.valid[0], rescale_for_model(mask, 10.0, 10.0 * scale, order=0))
