"""The bundled pretrained models: each is listed, loads without pickle, and segments sensibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segtune.core.metrics import matched_metrics, pixel_metrics
from segtune.core.models.registry import BUNDLED_MODELS, PRETRAINED_DIR, list_models
from segtune.core.models.store import load_model
from segtune.core.predict import predict

NAMES = ("nuclei-2d", "membranes-2d", "nuclei-3d", "nuclei-he-2d")


def _png(path):
    import imageio.v3 as iio

    array = iio.imread(path)
    return array if array.ndim == 2 else array[..., 0]


def test_all_bundled_models_ship_complete_and_small():
    assert set(NAMES) <= set(BUNDLED_MODELS)
    listed = {m.name: m for m in list_models()}
    total = 0
    for name in NAMES:
        folder = PRETRAINED_DIR / BUNDLED_MODELS[name]
        for file in ("config.json", "weights.safetensors", "MODEL_CARD.md"):
            assert (folder / file).is_file(), f"{name} lacks {file}"
        total += (folder / "weights.safetensors").stat().st_size
        config = json.loads((folder / "config.json").read_text())
        assert config["validation"], f"{name}: no validation numbers recorded"  # re-measured below
        card = (folder / "MODEL_CARD.md").read_text()
        assert "scripts/train_pretrained.py" in card and "## Known limits" in card
        assert listed[name].description == config["description"]
    assert total < 40e6


@pytest.mark.parametrize("name", NAMES)
def test_fp16_weights_load_as_float32_and_rounding_moves_probabilities_as_recorded(name):
    """The fp16 check the training script wrote into config.json, measured again.

    The script compared the fp32 model with its weights rounded to fp16; only the rounded weights
    ship, so the rounding is redone as noise of the same size (each weight moved by up to half an
    fp16 step) on the input the record names, and the probabilities must move as much as recorded.
    """
    import torch
    from safetensors.torch import load_file

    from segtune.core.normalize import percentile_normalize
    from segtune.core.synthetic import synthetic_nuclei

    model, config = load_model(name)
    stored = load_file(str(PRETRAINED_DIR / name / "weights.safetensors"))
    limit = torch.finfo(torch.float16).max  # only values beyond fp16's range stay fp32 (fp16_copy)
    assert all(
        t.dtype == torch.float16 or (t.dtype == torch.float32 and t.abs().max() > limit)
        for t in stored.values()
        if t.is_floating_point()
    )
    assert any(t.dtype == torch.float16 for t in stored.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())

    recorded = config["fp16_check"]
    shape = (128, 128) if model.architecture["spatial_dims"] == 2 else (16, 64, 64)
    assert recorded["input"] == f"synthetic nuclei {shape}, seed 99"
    image = percentile_normalize(synthetic_nuclei(shape, diameter=12.0, seed=99).image.astype(np.float32))
    x = torch.from_numpy(image[None, None])
    generator = torch.Generator().manual_seed(0)
    rounded = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            half = value.half().abs()
            step = (torch.nextafter(half, torch.tensor(float("inf"), dtype=torch.float16)) - half).float()
            value = value + (torch.rand(value.shape, generator=generator) - 0.5) * step
        rounded[key] = value
    model.eval()
    with torch.no_grad():
        before = model(x)
        model.load_state_dict(rounded)
        after = model(x)
    activation = torch.sigmoid if before.shape[1] == 1 else (lambda t: torch.softmax(t, 1))
    measured = float((activation(before) - activation(after)).abs().max())
    assert measured < 0.05  # what fp16 storage may cost: nothing a threshold at 0.5 notices
    assert recorded["max_probability_difference"] / 3 < measured < recorded["max_probability_difference"] * 3


def test_recorded_held_out_scores_are_measured_again(nuclei_dir, membranes_dir):
    """config.json's validation numbers, re-measured on the held-out images they name
    (scripts/train_pretrained.py's validate(): the same calls, so the same numbers)."""
    model, config = load_model("membranes-2d")
    recorded = config["validation"]
    scores = []
    for image_name in recorded["isbi_heldout_images"]:
        image = _png(membranes_dir / "images" / image_name).astype(np.float32)
        truth = _png(membranes_dir / "labels" / image_name) > 0
        result = predict((model, config), image, axes="YX", instances=False, device="cpu")
        scores.append(pixel_metrics(result.labels[0, 0], truth)["f1"])
    assert np.mean(scores) == pytest.approx(recorded["isbi_heldout_interior_pixel_f1"], abs=0.01)

    model, config = load_model("nuclei-2d")
    recorded = config["validation"]
    scores = []
    for image_name in recorded["nih3t3_heldout_images"]:
        image = _png(nuclei_dir / "images" / image_name)
        truth = _png(nuclei_dir / "labels" / image_name) > 0
        result = predict((model, config), image, axes="YX", instances=True, diameter="auto", device="cpu")
        scores.append(matched_metrics(result.labels[0, 0], truth, thresholds=(0.5,))["f1_at_0.5"])
    assert np.mean(scores) == pytest.approx(recorded["nih3t3_heldout_f1_at_0.5_auto_diameter"], abs=0.01)


def test_nuclei_he_2d_scores_as_recorded_on_the_stained_validation_images(shared_data):
    """nuclei-he-2d's recorded DSB stained-tissue number, measured again on the 15 validation
    images (colour read as its grey mean, automatic diameter estimated on the inverted image)."""
    import imageio.v3 as iio

    split = json.loads((Path(__file__).resolve().parents[1] / "scripts" / "dsb2018_split.json").read_text())
    folder = shared_data / "nuclei_dsb2018"
    model, config = load_model("nuclei-he-2d")
    assert config["dark_objects"]
    recorded = config["validation"]
    names = split["validation"]["stained"]
    assert recorded["dsb2018_stained_validation_images"] == len(names) == 15
    scores = []
    for name in names:
        image = iio.imread(folder / "images" / f"{name}.png")[..., :3].mean(-1).astype(np.float32)
        truth = iio.imread(folder / "labels" / f"{name}.png")
        result = predict((model, config), image, axes="YX", instances=True, diameter="auto", device="cpu")
        scores.append(matched_metrics(result.labels[0, 0], truth, thresholds=(0.5,))["f1_at_0.5"])
    assert np.mean(scores) == pytest.approx(recorded["dsb2018_stained_validation_f1_at_0.5_auto_diameter"], abs=0.01)
    # nuclei-2d (fluorescence) finds next to none of them: the reason this model exists
    assert recorded["dsb2018_stained_validation_f1_at_0.5_auto_diameter"] > 0.5


def test_nuclei_2d_on_a_real_crop_at_another_size(nuclei_dir):
    # a held-out NIH3T3 image (never trained on), shrunk 3x so nuclei are ~30 px, not ~90 px:
    # the automatic diameter must bring them back to the model's size
    from segtune.core.diameter import rescale_for_model

    image = _png(nuclei_dir / "images" / "1.png")[:600, :600]
    truth = (_png(nuclei_dir / "labels" / "1.png")[:600, :600] > 0).astype(np.uint8)
    small = rescale_for_model(image, 3.0, 1.0)
    small_truth = rescale_for_model(truth, 3.0, 1.0, order=0)
    result = predict("nuclei-2d", small, axes="YX", instances=True, device="cpu")
    assert result.diameter == pytest.approx(30, rel=0.35)
    f1 = matched_metrics(result.labels[0, 0], small_truth, thresholds=(0.5,))["f1_at_0.5"]
    assert f1 > 0.75


def test_nuclei_2d_on_synthetic_8bit():
    from segtune.core.synthetic import synthetic_nuclei

    sample = synthetic_nuclei((256, 256), diameter=16, dtype=np.uint8, uint8_peak=120, seed=21)
    result = predict("nuclei-2d", sample.image, axes="YX", instances=True, device="cpu")
    assert matched_metrics(result.labels[0, 0], sample.labels, thresholds=(0.5,))["f1_at_0.5"] > 0.7


def test_membranes_2d_on_held_out_isbi_crop(membranes_dir):
    image = _png(membranes_dir / "images" / "19.png")[:256, :256]  # image 19 was held out
    truth = _png(membranes_dir / "labels" / "19.png")[:256, :256] > 0
    result = predict("membranes-2d", image, axes="YX", device="cpu")
    assert result.diameter is None  # EM is never zoomed
    assert pixel_metrics(result.labels[0, 0], truth)["f1"] > 0.9


def test_nuclei_3d_on_a_synthetic_stack():
    from segtune.core.synthetic import synthetic_nuclei

    stack = synthetic_nuclei((24, 96, 96), diameter=14, z_anisotropy=1.5, seed=5)
    result = predict("nuclei-3d", stack.image, axes="ZYX", instances=True, device="cpu")
    labels = result.labels[0]
    assert labels.shape == stack.labels.shape
    assert matched_metrics(labels, stack.labels, thresholds=(0.5,))["f1_at_0.5"] > 0.4


def test_segtune_models_lists_them():
    out = subprocess.run([sys.executable, "-m", "segtune.cli", "models"], capture_output=True, text=True, check=True)
    for name in NAMES:
        assert name in out.stdout


def test_fp16_storage_keeps_statistics_beyond_its_range_in_fp32(monkeypatch):
    """A BatchNorm running variance over fp16's largest value (65504; the depth-4, 24-channel
    nuclei-2d trained this stop had 9e4) became inf in fp16 and the installed model refused to
    load; such tensors stay fp32, the rest is fp16, and the copy predicts as the model does."""
    import torch

    from segtune.core.models.unet import build_model

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from train_pretrained import fp16_copy

    model = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1, "depth": 2})
    model.eval()
    norm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    norm.running_var.fill_(9e4)
    half = fp16_copy(model)
    assert norm.running_var.dtype == torch.float32  # the model itself is left alone
    state = half.state_dict()
    big = [k for k, v in state.items() if v.is_floating_point() and v.dtype == torch.float32]
    assert len(big) == 1 and big[0].endswith("running_var") and torch.isfinite(state[big[0]]).all()
    assert all(v.dtype == torch.float16 for k, v in state.items() if v.is_floating_point() and k != big[0])
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(half.float()(x), model(x), atol=1e-2)
