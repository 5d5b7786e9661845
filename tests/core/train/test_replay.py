"""Replay: the general crops shipped with a bundled model are mixed into its fine-tuning, found
through a fine-tuned model's lineage, and refused where they do not fit the model's settings."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from segtune.core.models.registry import resolve_model
from segtune.core.models.store import load_model, save_model
from segtune.core.synthetic import synthetic_nuclei
from segtune.core.train.data import Sample
from segtune.core.train.patches import PatchSampler
from segtune.core.train.replay import find_replay, load_replay, save_replay
from segtune.core.train.trainer import TrainConfig, train


def _sample(name: str, side: int = 64) -> Sample:
    labels = np.zeros((1, side, side), np.int32)
    labels[0, 10:30, 10:30] = 1
    return Sample(np.zeros((1, 1, side, side), np.float32), labels, np.ones_like(labels, bool), name)


def test_the_sampler_draws_the_replay_share_of_crops():
    user = [_sample("user", 256)]  # a large user image: by pixels it would take nearly every draw
    replay = [_sample(f"replay {i}") for i in range(4)]
    sampler = PatchSampler(
        user, (32, 32), min_foreground=0.0, rng=np.random.default_rng(0), replay=replay, replay_fraction=0.3
    )
    drawn = Counter(
        sampler.samples[sampler.rng.choice(len(sampler.samples), p=sampler.weights)].name for _ in range(4000)
    )
    share = 1 - drawn["user"] / 4000
    assert abs(share - 0.3) < 0.03
    alone = PatchSampler(user, (32, 32), min_foreground=0.0, replay=replay, replay_fraction=0.0)
    assert [s.name for s in alone.samples] == ["user"]


def test_bundled_nuclei_model_ships_a_replay_set_at_its_own_scale():
    folder = resolve_model("nuclei-2d")
    samples, diameter, normalization = load_replay(folder / "replay.npz")
    _, config = load_model("nuclei-2d", device="cpu")
    assert len(samples) >= 32 and diameter == config["object_diameter"]
    assert normalization == (config["normalization"]["low"], config["normalization"]["high"])
    # real nuclei at the model's size: the median object is about the trained diameter across
    from segtune.core.diameter import labels_diameter

    measured = np.nanmedian([labels_diameter(s.labels[0]) for s in samples])
    assert 0.75 * diameter < measured < 1.33 * diameter
    assert np.mean([np.mean(s.labels > 0) for s in samples]) > 0.1


def test_fine_tuning_a_bundled_model_mixes_in_its_replay_set_when_asked(tmp_path):
    sample = synthetic_nuclei((160, 160), seed=3, diameter=20.0)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", seed=0, replay=0.5)
    result = train([sample.image], [sample.labels], config, model="nuclei-2d", out=tmp_path / "tuned")
    record = result.config["training"]
    assert record["settings"]["replay"] == 0.5
    assert record["data"]["replay"]["crops"] >= 32
    assert record["data"]["replay"]["file"].endswith("nuclei-2d/replay.npz")
    # the fine-tuned folder has no replay of its own; its lineage leads back to the bundled set
    assert not (tmp_path / "tuned" / "replay.npz").exists()
    _, tuned_config = load_model(tmp_path / "tuned", device="cpu")
    found = find_replay(str(tmp_path / "tuned"), tuned_config, diameter=20.0, normalization=(1.0, 99.8), in_channels=1)
    assert found is not None and found[1] == resolve_model("nuclei-2d") / "replay.npz"
    # off by default
    off = train([sample.image], [sample.labels], dataclasses.replace(config, replay=0.0), model="nuclei-2d")
    assert off.config["training"]["settings"]["replay"] == 0.0 and "replay" not in off.config["training"]["data"]
    # a model without a replay set (a new one, nuclei-3d) refuses it in one line
    with pytest.raises(ValueError, match="ships no replay set"):
        train([sample.image], [sample.labels], config)


def test_a_replay_set_made_for_other_settings_is_not_used(tmp_path):
    model, config = load_model("nuclei-2d", device="cpu")
    folder = save_model(model, config, tmp_path / "model")
    crops = [np.zeros((1, 64, 64), np.float32)]
    crop_labels = [np.pad(np.ones((10, 10), np.uint16), 27)]
    save_replay(folder, crops, crop_labels, diameter=20.0, normalization=(1.0, 99.8))
    assert find_replay(str(folder), config, diameter=20.0, normalization=(1.0, 99.8), in_channels=1) is not None
    assert find_replay(str(folder), config, diameter=40.0, normalization=(1.0, 99.8), in_channels=1) is None
    assert find_replay(str(folder), config, diameter=20.0, normalization=(5.0, 98.0), in_channels=1) is None
    assert find_replay(str(folder), config, diameter=20.0, normalization=(1.0, 99.8), in_channels=2) is None
    # no replay anywhere in a new model's lineage
    assert find_replay(None, {"lineage": []}, diameter=20.0, normalization=(1.0, 99.8), in_channels=1) is None


def test_replay_fraction_is_checked():
    with pytest.raises(ValueError, match="replay must be in"):
        TrainConfig(replay=1.0).validate()
