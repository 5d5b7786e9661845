"""The training loop: real short runs, cancel, kill -9, resume, time budget, early stopping, fine-tuning."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from segtune.core.models.store import load_model, save_model
from segtune.core.models.unet import UNet
from segtune.core.progress import CancelToken
from segtune.core.train.augment import AugmentConfig
from segtune.core.train.trainer import CHECKPOINT_DIR, CHECKPOINT_NAME, TrainConfig, read_log, train

TINY = {"depth": 2, "base_channels": 4, "patch": 32, "batch_size": 2, "steps_per_epoch": 3, "device": "cpu"}


def _blobs(shape=(64, 64), n=6, seed=0):
    """A synthetic image of bright discs and their instance labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    yy, xx = np.indices(shape)
    for i in range(1, n + 1):
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(16, 40)] = i
    image = (labels > 0) * 100.0 + rng.normal(20, 5, shape)
    return image.astype(np.float32), labels


def _data(n=3):
    pairs = [_blobs(seed=i) for i in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_real_nuclei_crop_training_reduces_the_loss(nuclei_dir, tmp_path):
    from segtune.core.io import read_labels

    images, labels = [], []
    for name in ("0", "26"):
        image = read_labels(nuclei_dir / "images" / f"{name}.png")
        mask = read_labels(nuclei_dir / "labels" / f"{name}.png")
        images.append(image[:512, :512])
        labels.append(mask[:512, :512])
    config = TrainConfig(
        epochs=4,
        steps_per_epoch=6,
        patch=64,
        batch_size=4,
        depth=2,
        base_channels=8,
        scale=0.25,
        learning_rate=3e-3,
        val_fraction=0.5,
        device="cpu",
        augmentation=AugmentConfig.none(),
    )
    result = train(images, labels, config, out=tmp_path / "m")
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4 and result.stop_reason == "completed"
    assert losses[-1] < 0.8 * losses[0]
    assert result.best_metrics["val_f1"] > 0.3  # the foreground is being found
    model, config_saved = load_model(tmp_path / "m")
    assert config_saved["head"] == "three_class"
    assert config_saved["tile_shape"] == [64, 64]
    assert config_saved["input_scale"] == 0.25
    assert config_saved["auto_diameter"] is True  # prediction zooms new images to the trained size
    assert 15 < config_saved["object_diameter"] < 30  # ~90 px nuclei at a quarter of the size
    assert config_saved["metrics"]["epoch"] == result.best_epoch
    assert config_saved["training"]["status"] == "finished"
    rows = read_log(tmp_path / "m")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["train_loss"]) == pytest.approx(losses[0], rel=1e-4)


def test_same_seed_same_result():
    images, labels = _data()
    config = TrainConfig(epochs=2, **TINY)
    a = train(images, labels, config)
    b = train(images, labels, config)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key


def test_cancel_keeps_the_best_model_saved(tmp_path):
    images, labels = _data()
    token = CancelToken()
    events = []

    def progress(event):
        events.append(event)
        if event.stage == "train" and event.metrics["epoch"] == 3 and event.metrics["step"] == 2:
            token.cancel()

    result = train(images, labels, TrainConfig(epochs=10, **TINY), out=tmp_path / "m", progress=progress, cancel=token)
    assert result.stop_reason == "cancelled"
    assert [h["epoch"] for h in result.history] == [1, 2]
    model, config = load_model(tmp_path / "m")
    assert config["training"]["status"] == "cancelled"
    assert config["metrics"]["epoch"] == result.best_epoch
    for key, value in model.state_dict().items():
        assert torch.equal(value, result.model.state_dict()[key]), key
    assert {e.stage for e in events} == {"train", "validate"}
    validate = [e for e in events if e.stage == "validate"]
    assert validate[0].metrics["epoch"] == 1 and "val_f1" in validate[0].metrics


def test_cancel_before_any_epoch_keeps_the_starting_model(tmp_path):
    images, labels = _data()
    start = UNet(2, 1, 3, depth=2, base_channels=4)
    initial = _weights(start)
    token = CancelToken()
    token.cancel()
    result = train(images, labels, TrainConfig(epochs=3, **TINY), model=start, out=tmp_path / "m", cancel=token)
    assert result.stop_reason == "cancelled" and result.history == []
    model, _ = load_model(tmp_path / "m")
    for key, value in initial.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    images, labels = _data()
    config = TrainConfig(epochs=3, schedule="none", **TINY)
    straight = train(images, labels, config, out=tmp_path / "a")
    token = CancelToken()

    def stop_after_epoch_2(event):
        if event.stage == "validate" and event.metrics["epoch"] == 2:
            token.cancel()

    first = train(images, labels, config, out=tmp_path / "b", progress=stop_after_epoch_2, cancel=token)
    assert len(first.history) == 2
    resumed = train(images, labels, config, out=tmp_path / "b", resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.config["training"]["resumed"]
    assert resumed.config["training"]["fine_tuned"] is False
    assert [int(r["epoch"]) for r in read_log(tmp_path / "b")] == [1, 2, 3]


def _fine_tune_straight_and_resumed(tmp_path, config, again=None, edit_checkpoint=None, edit_folder=None):
    """Fine-tune a small model for 3 epochs straight, and again stopped after epoch 2 and resumed
    (with ``again``'s settings; ``edit_checkpoint`` may first change the checkpoint's state, and
    ``edit_folder`` the interrupted model folder)."""
    from segtune.core.train.checkpoint import load_checkpoint, write_checkpoint

    images, labels = _data()
    torch.manual_seed(0)
    start = UNet(2, 1, 3, depth=2, base_channels=4)
    straight = train(images, labels, config, model=copy.deepcopy(start), out=tmp_path / "a")
    token = CancelToken()

    def stop_after_epoch_2(event):
        if event.stage == "validate" and event.metrics["epoch"] == 2:
            token.cancel()

    out = tmp_path / "b"
    train(images, labels, config, model=copy.deepcopy(start), out=out, progress=stop_after_epoch_2, cancel=token)
    if edit_checkpoint is not None:
        tensors, state = load_checkpoint(out)
        edit_checkpoint(state)
        write_checkpoint(out, tensors, state)
    if edit_folder is not None:
        edit_folder(out)
    # as `segtune train --from M --resume` asks: the starting model is given again
    resumed = train(images, labels, again or config, model=copy.deepcopy(start), out=out, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    return straight, resumed


def test_resuming_a_fine_tune_keeps_pulling_toward_the_starting_weights(tmp_path):
    # L2-SP pulls toward the starting model; before the checkpoint kept those weights, a resumed
    # run pulled toward where it stopped and its third epoch differed from the straight run's
    config = TrainConfig(epochs=3, schedule="none", l2sp=1.0, **TINY)
    straight, resumed = _fine_tune_straight_and_resumed(tmp_path, config)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_a_resumed_fine_tune_that_scores_worse_still_keeps_the_starting_model(tmp_path):
    # a learning rate this large wrecks the network: the held-out score falls below the start's
    settings = {**TINY, "steps_per_epoch": 2, "val_fraction": 0.34}
    config = TrainConfig(epochs=3, schedule="none", learning_rate=5.0, l2sp=0.0, patience=None, **settings)
    straight, resumed = _fine_tune_straight_and_resumed(tmp_path, config)
    assert straight.kept_start and resumed.kept_start
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, straight.model.state_dict()[key]), key
    assert load_model(tmp_path / "b")[1]["training"]["kept_start"]


def _recorded_before_the_fine_tuned_flag(folder):
    from segtune.core.models.store import atomic_write_text, read_config

    config = read_config(folder)
    del config["training"]["fine_tuned"]
    atomic_write_text(folder / "config.json", json.dumps(config))


@pytest.mark.parametrize("edit", [None, _recorded_before_the_fine_tuned_flag])
def test_a_resumed_fine_tune_records_the_same_model_as_a_straight_one(tmp_path, edit):
    # a model that sees images at their own scale (no object diameter, as membranes-2d) stays so;
    # a resumed run once counted as training a new model and recorded the data's diameter
    config = TrainConfig(epochs=3, schedule="none", **TINY)
    straight, resumed = _fine_tune_straight_and_resumed(tmp_path, config, edit_folder=edit)
    assert straight.config.get("object_diameter") is None
    for key in ("object_diameter", "input_scale", "auto_diameter", "lineage"):
        assert resumed.config.get(key) == straight.config.get(key), key
    assert resumed.config["training"]["fine_tuned"] and straight.config["training"]["fine_tuned"]
    assert resumed.config["training"]["baseline"] == straight.config["training"]["baseline"]


def test_resuming_a_fine_tune_checkpointed_before_the_optimizer_choice_continues_with_adamw(tmp_path):
    # checkpoints written before fine-tuning switched to SGD name no optimizer: they hold AdamW's state
    config = TrainConfig(epochs=3, schedule="none", optimizer="adamw", learning_rate=3e-4, l2sp=0.0, **TINY)

    def written_before_the_choice(state):
        del state["train_config"]["optimizer"]

    straight, resumed = _fine_tune_straight_and_resumed(
        tmp_path, config, again=dataclasses.replace(config, optimizer=None), edit_checkpoint=written_before_the_choice
    )
    assert resumed.config["training"]["settings"]["optimizer"] == "adamw"
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]


def test_kill_9_mid_training_leaves_a_loadable_model_and_resume_continues(tmp_path):
    out = tmp_path / "m"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_trainer import _data, TINY
        from segtune.core.train.trainer import TrainConfig, train
        images, labels = _data()
        train(images, labels, TrainConfig(epochs=1000, patience=None, **TINY), out={str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    checkpoint = out / CHECKPOINT_DIR / CHECKPOINT_NAME
    try:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert checkpoint.exists(), proc.stderr.read().decode() if proc.poll() is not None else "no checkpoint in 60 s"
        time.sleep(0.7)  # well inside a later epoch, possibly mid-write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    model, config = load_model(out)
    assert config["training"]["status"] == "running"
    from segtune.core.train.checkpoint import load_checkpoint

    # the checkpoint is written before the log: a kill between the two leaves the log an epoch behind
    done = int(load_checkpoint(out)[1]["epoch"])
    assert done >= 1 and len(read_log(out)) in (done - 1, done)
    images, labels = _data()
    resumed = train(images, labels, TrainConfig(epochs=done + 1, patience=None, **TINY), out=out, resume=True)
    assert [h["epoch"] for h in resumed.history] == list(range(1, done + 2))
    assert resumed.stop_reason == "completed"


def test_time_budget_stops_training_and_keeps_the_best(tmp_path):
    images, labels = _data()
    start = time.monotonic()
    result = train(
        images, labels, TrainConfig(epochs=10_000, max_minutes=3 / 60, patience=None, **TINY), out=tmp_path / "m"
    )
    assert result.stop_reason == "time_budget"
    assert time.monotonic() - start < 3 + 5
    assert result.best_epoch is not None
    _, config = load_model(tmp_path / "m")
    assert config["training"]["stop_reason"] == "time_budget"


def test_a_resumed_run_has_what_its_time_budget_left(tmp_path):
    # the budget is the whole run's, as epochs are: a run stopped by its 6 s budget and resumed with
    # 8 s trains about 2 s more (it once started a fresh 8 s, and stretched its schedule over 14)
    images, labels = _data()
    out = tmp_path / "m"

    def config(seconds):
        return TrainConfig(epochs=10_000, max_minutes=seconds / 60, patience=None, schedule="cosine", **TINY)

    first = train(images, labels, config(6), out=out)
    assert first.stop_reason == "time_budget"
    used = first.history[-1]["elapsed"]
    with pytest.raises(ValueError, match=r"has trained 0\.\d minutes, its whole [0-9.e-]+-minute budget"):
        train(images, labels, config(used / 2), out=out, resume=True)
    resumed = train(images, labels, config(8), out=out, resume=True)
    assert resumed.stop_reason == "time_budget" and len(resumed.history) > len(first.history)
    assert used < resumed.history[-1]["elapsed"] < 10 < used + 8 - 2


def test_early_stopping_restores_the_best_weights():
    images, labels = _data()
    # a learning rate so small that no later epoch beats the first: stop after 1 + patience
    result = train(images, labels, TrainConfig(epochs=20, patience=2, learning_rate=1e-12, monitor="val_loss", **TINY))
    assert result.stop_reason == "early_stopping"
    assert len(result.history) <= 4
    assert result.best_metrics == next(h for h in result.history if h["epoch"] == result.best_epoch)


def test_fine_tune_from_a_saved_model_with_frozen_encoder(tmp_path):
    images, labels = _data()
    base = UNet(2, 1, 1, depth=2, base_channels=4)
    save_model(
        base,
        {"normalization": {"method": "percentile", "low": 2.0, "high": 98.0}, "head": "binary", "object_diameter": 7.0},
        tmp_path / "base",
    )
    before = _weights(load_model(tmp_path / "base")[0])
    result = train(
        images,
        labels,
        TrainConfig(epochs=1, freeze_encoder=True, **TINY),
        model=tmp_path / "base",
        out=tmp_path / "tuned",
    )
    after = result.model.state_dict()
    encoder_keys = [k for k in before if k.startswith("encoder.") and "num_batches" not in k]
    assert encoder_keys and all(torch.equal(before[k], after[k]) for k in encoder_keys)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(p.requires_grad for p in result.model.parameters())  # frozen only while training
    _, config = load_model(tmp_path / "tuned")
    assert config["head"] == "binary"
    assert config["normalization"]["low"] == 2.0  # the starting model's input pipeline is kept
    assert config["object_diameter"] == pytest.approx(7.0, rel=0.01)
    assert config["lineage"][-1]["from"] == str(tmp_path / "base")


def test_heads_and_3d():
    images, labels = _data(2)
    binary = train(images, labels, TrainConfig(epochs=1, head="binary", loss="focal", **TINY))
    assert binary.model.out_channels == 1 and binary.config["classes"] == ["background", "foreground"]
    semantic_labels = [np.minimum(lab, 2) for lab in labels]
    semantic = train(
        images, semantic_labels, TrainConfig(epochs=1, head="semantic", n_classes=3, loss="ce+dice", **TINY)
    )
    assert semantic.model.out_channels == 3 and semantic.config["head"] == "semantic"
    volume_image = np.stack([images[0]] * 8)
    volume_labels = np.stack([labels[0]] * 8)
    config3d = TrainConfig(epochs=1, spatial_dims=3, loss="bce+dice", **{**TINY, "patch": (8, 16, 16)})
    result = train([volume_image, volume_image], [volume_labels, volume_labels], config3d)
    assert result.model.spatial_dims == 3 and np.isfinite(result.history[0]["val_loss"])


def test_ignore_value_is_excluded_from_training():
    images, labels = _data(2)
    ignored = [np.where(np.arange(lab.size).reshape(lab.shape) % 2, 255, lab).astype(np.uint16) for lab in labels]
    result = train(images, ignored, TrainConfig(epochs=1, ignore_value=255, **TINY))
    assert np.isfinite(result.history[0]["train_loss"])
    assert json.loads(json.dumps(result.config))["training"]["settings"]["ignore_value"] == 255


def test_clear_errors(tmp_path):
    images, labels = _data(2)
    with pytest.raises(ValueError, match=r"do not match"):
        train([images[0][:, :-1], images[1]], labels, TrainConfig(epochs=1, **TINY))
    with pytest.raises(ValueError, match="labels are empty"):
        train(images, [np.zeros_like(lab) for lab in labels], TrainConfig(epochs=1, **TINY))
    with pytest.raises(ValueError, match="2 image"):
        train(images, labels[:1], TrainConfig(epochs=1, **TINY))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(images, labels, TrainConfig(epochs=1, **TINY), out=tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(images, labels, TrainConfig(epochs=1, **TINY), out=tmp_path / "m", resume=True)
    with pytest.raises(ValueError, match="not a known loss"):
        train(images, labels, TrainConfig(epochs=1, loss="bce+dcie", **TINY))
