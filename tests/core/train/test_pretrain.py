"""Pretraining loops on real data: restore, SimCLR -> local contrastive, Noise2Noise; transfer, lineage, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segtune.core.io import open_image, read_labels
from segtune.core.models.store import load_model
from segtune.core.progress import CancelToken, ProgressEvent
from segtune.core.train.pretext import CorruptionConfig, corrupt, denoise, restoration_loss
from segtune.core.train.pretrain import PretrainConfig, load_pretext_weights, pretrain

TINY = {"depth": 2, "base_channels": 4, "patch": 32, "batch_size": 4}


@pytest.fixture(scope="module")
def membranes(membranes_dir: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Three real 64x64 TEM crops and their labels (255 interior, 0 membrane)."""
    images, labels = [], []
    for i, (y, x) in enumerate([(0, 0), (200, 100), (400, 300)]):
        image = np.asarray(open_image(membranes_dir / "images" / f"{i}.png").data[0, 0, 0])
        label = read_labels(membranes_dir / "labels" / f"{i}.png")
        images.append(image[y : y + 64, x : x + 64])
        labels.append(label[y : y + 64, x : x + 64])
    return images, labels


def _encoder_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}


def test_restore_pretraining_learns_and_writes_a_model_to_fine_tune(membranes, tmp_path: Path) -> None:
    images, _ = membranes
    config = PretrainConfig(method="restore", epochs=2, steps_per_epoch=4, head="three_class", **TINY)
    result = pretrain(images, config, out=tmp_path / "restore")
    assert [h["epoch"] for h in result.history] == [1, 2] and result.stop_reason == "completed"
    model, saved = load_model(tmp_path / "restore")
    assert saved["head"] == "three_class" and saved["architecture"]["out_channels"] == 3
    assert saved["pretext"]["method"] == "restore" and saved["pretext"]["transfer"] == "encoder"
    assert saved["training"]["data"]["pretext"] == "restore"
    tensors, architectures = load_pretext_weights(tmp_path / "restore")
    assert architectures["unet"]["out_channels"] == 1
    # the saved segmentation model carries the restoration network's encoder
    for key, value in _encoder_state(model).items():
        assert torch.equal(value, tensors[f"unet/{key}"]), key
    # the restoration network restores better than where it started (a zero output)
    restorer = result.pretext_model["unet"].eval()
    from segtune.core.normalize import percentile_normalize

    clean = torch.from_numpy(
        np.stack([percentile_normalize(i, 1, 99.8) for i in images])[:, None, :32, :32].copy()
    ).float()
    corrupted, _ = corrupt(clean, CorruptionConfig(kinds=("blur",)))
    with torch.no_grad():
        trained_loss = float(restoration_loss(restorer(corrupted), clean))
    assert trained_loss < float(restoration_loss(torch.zeros_like(clean), clean)) - 1e-3


def test_simclr_then_local_contrastive_from_it_with_a_frozen_encoder(membranes, tmp_path: Path) -> None:
    images, labels = membranes
    simclr = pretrain(
        images,
        PretrainConfig(method="simclr", epochs=1, steps_per_epoch=2, head="binary", **TINY),
        out=tmp_path / "simclr",
    )
    assert np.isfinite(simclr.history[0]["loss"])
    global_model, global_config = load_model(tmp_path / "simclr")
    assert global_config["pretext"]["method"] == "simclr"
    tensors, _ = load_pretext_weights(tmp_path / "simclr")
    assert tensors["projection/net.2.weight"].shape[0] == 256  # SimCLR's 256-d output
    local = pretrain(
        images,
        PretrainConfig(
            method="local-contrastive",
            epochs=1,
            steps_per_epoch=2,
            freeze_encoder=True,
            head="binary",
            block_size=16,
            min_foreground=0.0,
            **TINY,
        ),
        labels=labels,
        from_model=tmp_path / "simclr",
        out=tmp_path / "local",
    )
    assert np.isfinite(local.history[0]["loss"]) and local.history[0]["loss"] > 0
    model, config = load_model(tmp_path / "local")
    # the frozen encoder (weights and normalisation statistics) is exactly the global stage's
    for key, value in _encoder_state(global_model).items():
        assert torch.equal(_encoder_state(model)[key], value), key
    # the decoder is the one the local stage trained
    local_tensors, _ = load_pretext_weights(tmp_path / "local")
    decoder_keys = [k for k in model.state_dict() if k.startswith("decoder.")]
    assert decoder_keys and all(torch.equal(model.state_dict()[k], local_tensors[f"unet/{k}"]) for k in decoder_keys)
    assert config["pretext"]["transfer"] == "encoder+decoder"
    assert config["lineage"][-1]["from"] == str(tmp_path / "simclr") and config["lineage"][-1]["pretext"] == "simclr"
    assert config["pretext"]["loss"].startswith("local supervised contrastive (block 16, temperature 0.07")


def test_n2n_batches_pair_adjacent_slices_at_the_same_place() -> None:
    from segtune.core.train.pretext import n2n_pairs
    from segtune.core.train.pretrain import _unlabelled_sample
    from segtune.core.train.pretrain_methods import n2n_batch as _n2n_batch

    z, y, x = np.meshgrid(np.arange(4), np.arange(40), np.arange(50), indexing="ij")
    stack = (z * 10000 + y * 100 + x).astype(np.float32)  # every voxel says where it is
    sample = _unlabelled_sample(stack, (0.0, 100.0), False, "coded")
    lo, hi = float(stack.min()), float(stack.max())
    pairs = [(0, a, b) for a, b in n2n_pairs(4)]
    inputs, targets = _n2n_batch([sample], pairs, 16, 64, np.random.default_rng(0))
    decode = lambda v: np.rint(v * (hi - lo) + lo).astype(np.int64)  # noqa: E731
    for a, b in zip(decode(inputs[:, 0]), decode(targets[:, 0]), strict=True):
        assert np.all(a % 10000 == b % 10000)  # the same (y, x) pixel by pixel, flips included
        assert abs(int(a[0, 0] // 10000) - int(b[0, 0] // 10000)) == 1  # adjacent slices
        assert len(np.unique(a // 10000)) == 1


def test_n2n_denoiser_on_a_real_z_stack(czi_dir: Path, tmp_path: Path) -> None:
    data = open_image(czi_dir / "CD_s_1_t_3_c_2_z_5.czi").data
    train_stack = np.asarray(data[0, 1])  # (Z=5, Y, X), spindle channel
    config = PretrainConfig(method="n2n", epochs=1, steps_per_epoch=3, **TINY)
    result = pretrain([train_stack], config, out=tmp_path / "n2n")
    assert np.isfinite(result.history[0]["loss"])
    model, saved = load_model(tmp_path / "n2n")
    assert saved["head"] == "image" and saved["pretext"]["residual"] is True
    assert saved["architecture"]["out_channels"] == 1 and saved["pretext"]["loss"] == "l2"
    other = np.asarray(data[1, 1]).astype(np.float32)
    denoised = denoise(model, other, config=saved)
    assert denoised.shape == other.shape and np.isfinite(denoised).all()
    # a residual denoiser whose output layer is zero gives the image back
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    np.testing.assert_allclose(denoise(model, other, config=saved), other, rtol=1e-5, atol=1e-2)
    with pytest.raises(ValueError, match="z-stacks"):
        pretrain([train_stack[0]], config)


def test_cancel_keeps_the_last_finished_epoch(membranes, tmp_path: Path) -> None:
    images, _ = membranes
    token = CancelToken()
    events: list[ProgressEvent] = []

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.done == 3:  # the first step of epoch 2
            token.cancel()

    config = PretrainConfig(method="restore", epochs=3, steps_per_epoch=2, head="binary", **TINY)
    result = pretrain(images, config, out=tmp_path / "cancelled", progress=progress, cancel=token)
    assert result.stop_reason == "cancelled" and len(result.history) == 1
    assert events[-1].done == 3 and events[-1].total == 6 and events[-1].stage == "pretrain"
    _, saved = load_model(tmp_path / "cancelled")
    assert saved["training"]["status"] == "cancelled" and saved["training"]["epochs_run"] == 1


def test_settings_are_checked(membranes, tmp_path: Path) -> None:
    images, _ = membranes
    with pytest.raises(ValueError, match="needs labels"):
        pretrain(images, PretrainConfig(method="local-contrastive", **TINY))
    with pytest.raises(ValueError, match="batch_size >= 2"):
        PretrainConfig(method="simclr", batch_size=1).validate()
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth"):
        PretrainConfig(patch=40, depth=4).validate()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        pretrain(images, PretrainConfig(**TINY), out=tmp_path / "taken")
