"""The ResNet-encoder U-Net and UNet++: model folders, training, restoration pretraining, frozen encoders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segtune.cli import main
from segtune.core.models.nets import ResNetUNet, UNetPlusPlus
from segtune.core.models.store import load_model, save_model
from segtune.core.models.unet import build_model, new_architecture
from segtune.core.predict import predict_raw

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "architecture",
    [
        new_architecture("unet", encoder="resnet18", spatial_dims=2, in_channels=2, out_channels=3, base_channels=8),
        new_architecture("unet", encoder="resnet50", spatial_dims=2, in_channels=1, out_channels=1, base_channels=8),
        new_architecture("unetpp", spatial_dims=2, in_channels=1, out_channels=3, base_channels=8),
        new_architecture("unetpp", spatial_dims=3, in_channels=2, out_channels=2, base_channels=8, norm="instance"),
    ],
    ids=["resnet18-2d", "resnet50-2d", "unetpp-2d", "unetpp-3d"],
)
def test_model_folder_round_trip(architecture: dict, tmp_path: Path) -> None:
    model = build_model(architecture).eval()
    shape = (1, architecture["in_channels"], *([19] if architecture["spatial_dims"] == 3 else []), 45, 70)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = model(x)
    assert expected.shape == (1, architecture["out_channels"], *shape[2:])
    save_model(model, {"head": "binary" if architecture["out_channels"] == 1 else "semantic"}, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "weights.safetensors"]
    loaded, config = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and config["architecture"] == model.architecture
    with torch.no_grad():
        assert torch.allclose(loaded(x), expected, atol=1e-5)


def test_architecture_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_model({"name": "resnet_unet", "encoder": "resnet99"})
    with pytest.raises(ValueError, match="does not combine"):
        new_architecture("unetpp", encoder="resnet18")
    with pytest.raises(ValueError, match="unknown architecture keys"):
        build_model({"name": "unetpp", "depth": 3})
    with pytest.raises(ValueError, match="not known"):
        build_model({"name": "transformer"})
    # depth does not apply to the fixed-depth networks and is dropped, not refused
    assert "depth" not in new_architecture("unetpp", depth=3)


def test_tiled_prediction_equals_one_pass() -> None:
    model = ResNetUNet(spatial_dims=2, encoder="resnet18", base_channels=8).eval()
    image = np.random.default_rng(0).random((1, 64, 640), dtype=np.float32)
    with torch.no_grad():
        whole = model(torch.from_numpy(image)[None])[0].numpy()
    tiled = predict_raw(model, image, spatial_dims=2, tile_shape=(64, 320), device="cpu")
    assert tiled.shape == whole.shape and np.abs(tiled - whole).max() < 1e-4


def _membranes(membranes_dir: Path, indices) -> tuple[list[str], list[str]]:
    return (
        [str(membranes_dir / "images" / f"{i}.png") for i in indices],
        [str(membranes_dir / "labels" / f"{i}.png") for i in indices],
    )


STEPS = ["--epochs", "1", "--steps-per-epoch", "2", "--patch", "64", "--batch-size", "2"]


def test_restore_pretrain_then_frozen_finetune_resnet(membranes_dir: Path, tmp_path: Path) -> None:
    images, labels = _membranes(membranes_dir, [0, 1])
    pretrained, tuned = tmp_path / "restore", tmp_path / "tuned"
    assert (
        main(
            [
                "pretrain",
                "--method",
                "restore",
                "--encoder",
                "resnet18",
                "--base-channels",
                "8",
                "--images",
                *images,
                "--out",
                str(pretrained),
                "--head",
                "binary",
                *STEPS,
            ]
        )
        == 0
    )
    start, start_config = load_model(pretrained)
    assert isinstance(start, ResNetUNet) and start_config["architecture"]["encoder"] == "resnet18"
    assert start_config["pretext"]["method"] == "restore"
    assert (
        main(
            [
                "train",
                "--from",
                str(pretrained),
                "--images",
                *images,
                "--labels",
                *labels,
                "--out",
                str(tuned),
                "--val-fraction",
                "0.5",
                "--freeze-encoder",
                *STEPS,
            ]
        )
        == 0
    )
    model, config = load_model(tuned)
    assert config["lineage"][-1]["training"]["pretext"] == "restore"
    before, after = start.state_dict(), model.state_dict()
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    decoder_keys = [k for k in before if k.startswith("decoder.") and before[k].is_floating_point()]
    assert encoder_keys and decoder_keys
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)  # frozen: weights and BN statistics
    assert any(not torch.equal(before[k], after[k]) for k in decoder_keys)


@pytest.mark.parametrize(
    "option", [["--encoder", "resnet34"], ["--architecture", "unetpp"]], ids=["resnet34", "unetpp"]
)
def test_train_command_builds_the_network(option: list[str], membranes_dir: Path, tmp_path: Path) -> None:
    images, labels = _membranes(membranes_dir, [2])
    out = tmp_path / "model"
    assert (
        main(
            [
                "train",
                *option,
                "--base-channels",
                "8",
                "--images",
                *images,
                "--labels",
                *labels,
                "--out",
                str(out),
                "--head",
                "binary",
                "--val-fraction",
                "0",
                *STEPS,
            ]
        )
        == 0
    )
    model, config = load_model(out)
    assert isinstance(model, ResNetUNet if option[0] == "--encoder" else UNetPlusPlus)
    assert config["training"]["settings"]["architecture"] == ("unet" if option[0] == "--encoder" else "unetpp")
    assert (
        main(
            [
                "train",
                "--architecture",
                "unetpp",
                "--encoder",
                "resnet18",
                "--images",
                *images,
                "--labels",
                *labels,
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_unetpp_and_resnet_unet_learn(membranes_dir: Path) -> None:
    """A few dozen steps on one EM image lower the loss of both networks clearly."""
    from segtune.core.io import open_image
    from segtune.core.train.trainer import TrainConfig, train

    image = np.asarray(open_image(membranes_dir / "images" / "3.png").data[0, 0, 0].compute())
    label = np.asarray(open_image(membranes_dir / "labels" / "3.png").data[0, 0, 0].compute())
    for architecture, encoder in (("unetpp", None), ("unet", "resnet18")):
        config = TrainConfig(
            head="binary",
            architecture=architecture,
            encoder=encoder,
            base_channels=8,
            patch=64,
            batch_size=4,
            epochs=6,
            steps_per_epoch=6,
            val_fraction=0,
            patience=None,
            device="cpu",
            loss="bce+dice",
            learning_rate=3e-3,
        )
        history = train([image], [label], config).history
        assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"], (architecture, history)
