"""Vox2Vox and CycleGAN: short real trainings on tiny synthetic stacks, from Python and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from segtune.cli import main
from segtune.core.models.store import load_model
from segtune.core.models.unet import build_model
from segtune.core.synthetic import synthetic_nuclei
from segtune.core.train.gan import GanConfig, parse_mask_recipe, train_gan

torch.set_num_threads(1)


def _stacks(n: int = 2):
    return [synthetic_nuclei((16, 48, 48), diameter=12, z_anisotropy=2, seed=s) for s in range(n)]


def test_vox2vox_learns_the_masks(tmp_path: Path) -> None:
    data = _stacks()
    config = GanConfig(
        method="vox2vox",
        patch=(16, 32, 32),
        batch_size=2,
        epochs=4,
        steps_per_epoch=5,
        depth=2,
        base_channels=8,
        learning_rate=1e-3,
        device="cpu",
    )
    result = train_gan([d.image for d in data], [d.labels for d in data], config, out=tmp_path / "v2v")
    first, last = result.history[0], result.history[-1]
    assert last["dice_bce"] < 0.8 * first["dice_bce"], result.history
    model, model_config = load_model(tmp_path / "v2v")
    assert model_config["head"] == "binary" and model_config["training"]["data"]["method"] == "vox2vox"
    assert (tmp_path / "v2v" / "gan.safetensors").is_file()


def test_cyclegan_cycles_close_and_the_segmenter_changes(tmp_path: Path) -> None:
    data = _stacks()
    config = GanConfig(
        method="cyclegan",
        patch=(16, 32, 32),
        batch_size=2,
        epochs=3,
        steps_per_epoch=5,
        depth=2,
        base_channels=8,
        learning_rate=1e-3,
        device="cpu",
        mask_recipe={"diameter": 12, "z_anisotropy": 2},
    )
    result = train_gan([d.image for d in data], None, config, out=tmp_path / "cg")
    assert result.history[-1]["cycle"] < 0.6 * result.history[0]["cycle"], result.history
    torch.manual_seed(config.seed)  # train_gan seeds torch so and builds the segmenter first
    untrained = build_model(result.model.architecture).eval()
    x = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        change = (torch.sigmoid(result.model(x)) - torch.sigmoid(untrained(x))).abs().mean()
    assert change > 0.01
    with pytest.raises(ValueError, match="without labels"):
        train_gan([data[0].image], [data[0].labels], config)


def test_mask_recipe_is_checked() -> None:
    assert parse_mask_recipe("diameter=10, touching=0.2") == {"diameter": 10, "touching": 0.2}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_mask_recipe("diamter=10")


def test_cyclegan_from_the_command_line(tmp_path: Path) -> None:
    paths = []
    for i, stack in enumerate(_stacks()):
        paths.append(tmp_path / f"s{i}.tif")
        tifffile.imwrite(paths[-1], stack.image)
    out = tmp_path / "model"
    common = [
        "--images",
        *map(str, paths),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--patch",
        "16",
        "32",
        "32",
        "--batch-size",
        "1",
        "--depth",
        "2",
        "--base-channels",
        "8",
        "--device",
        "cpu",
    ]
    assert main(["train", "--method", "cyclegan", "--mask-recipe", "diameter=12,z_anisotropy=2", *common]) == 0
    model, config = load_model(out)
    assert config["architecture"]["spatial_dims"] == 3 and config["training"]["data"]["method"] == "cyclegan"
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(out), str(paths[0]), "--out", str(pred), "--device", "cpu"]) == 0
    (written,) = pred.glob("*_labels.tif")
    assert tifffile.imread(written).shape[-3:] == (16, 48, 48)
    assert main(["train", "--method", "cyclegan", "--labels", str(paths[0]), *common, "--overwrite"]) == 2
    assert main(["train", "--method", "vox2vox", *common, "--overwrite"]) == 2
    assert np.isfinite(config["metrics"]["cycle"])
