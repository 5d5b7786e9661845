"""The bundled pretrained models: each is listed, loads without pickle, and segments sensibly."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from segtune.core.metrics import matched_metrics, pixel_metrics
from segtune.core.models.registry import BUNDLED_MODELS, PRETRAINED_DIR, list_models
from segtune.core.models.store import load_model
from segtune.core.predict import predict

NAMES = ("nuclei-2d", "membranes-2d", "nuclei-3d")


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
        assert config["validation"], f"{name}: no validation numbers recorded"
        card = (folder / "MODEL_CARD.md").read_text()
        assert "scripts/train_pretrained.py" in card and "## Known limits" in card
        assert listed[name].description == config["description"]
    assert total < 40e6


@pytest.mark.parametrize("name", NAMES)
def test_fp16_weights_load_as_float32_within_tolerance(name):
    import torch
    from safetensors.torch import load_file

    model, config = load_model(name)
    stored = load_file(str(PRETRAINED_DIR / name / "weights.safetensors"))
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # measured when the weights were written: fp16 rounding moves no probability by more than this
    assert config["fp16_check"]["max_probability_difference"] < 0.05


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
    out = subprocess.run([sys.executable, "-m", "segtune.cli", "models"], capture_output=True, text=True, check=False)
    if out.returncode != 0:  # the console entry point may be the only way in
        out = subprocess.run(["segtune", "models"], capture_output=True, text=True, check=True)
    for name in NAMES:
        assert name in out.stdout
