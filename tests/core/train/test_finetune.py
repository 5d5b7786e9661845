"""Fine-tuning guards: the starting model's held-out score, keeping it when training made things
worse, frozen normalisation statistics, L2-SP, and the defaults chosen from the object size."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from segtune.core.metrics import matched_metrics
from segtune.core.models.unet import UNet
from segtune.core.train.trainer import TrainConfig, auto_settings, held_out_summary, train
from segtune.core.train.validation import worse

from .test_trainer import TINY, _data

QUICK = {**TINY, "epochs": 2, "patience": None, "val_fraction": 0.34}


def _start_model() -> UNet:
    torch.manual_seed(0)
    return UNet(2, 1, 3, depth=2, base_channels=4)


def test_fine_tuning_measures_the_starting_model_on_the_same_held_out_data():
    images, labels = _data(3)
    model = _start_model()
    result = train(images, labels, TrainConfig(**QUICK, keep_if_worse=False), model=model)
    base = result.baseline_metrics
    assert set(base) >= {"val_loss", "val_matched_f1", "val_pq", "val_objects"}
    assert base["val_objects"] == result.best_metrics["val_objects"] > 0  # one held-out set for both
    assert result.config["training"]["baseline"] == base
    line = held_out_summary(result)
    assert f"{base['val_matched_f1']:.3f} -> {result.best_metrics['val_matched_f1']:.3f}" in line


def test_a_fine_tune_that_scores_worse_keeps_the_starting_model():
    images, labels = _data(3)
    model = _start_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # a learning rate this large wrecks the network in two steps: held-out loss rises
    config = TrainConfig(**{**QUICK, "learning_rate": 5.0, "steps_per_epoch": 2}, l2sp=0.0)
    result = train(images, labels, config, model=model)
    assert result.kept_start
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, start[key]), key
    assert "starting model was kept" in held_out_summary(result)
    assert result.config["metrics"] == result.baseline_metrics


def test_a_tie_in_matched_f1_is_decided_by_how_well_the_objects_are_drawn_not_by_the_loss():
    # the same objects found (F1 ties) but drawn a third smaller, while the loss fell: that is worse
    truth = np.zeros((40, 40), np.int32)
    truth[5:15, 5:15], truth[20:30, 20:30] = 1, 2
    drawn = np.zeros_like(truth)
    drawn[5:13, 5:13], drawn[20:28, 20:28] = 1, 2
    exact, shrunk = matched_metrics(truth, truth, thresholds=(0.5,)), matched_metrics(drawn, truth, thresholds=(0.5,))
    assert exact["f1_at_0.5"] == shrunk["f1_at_0.5"] == 1.0 and shrunk["pq"] < exact["pq"]
    baseline = {"val_matched_f1": 1.0, "val_pq": exact["pq"], "val_loss": 0.5}
    tuned = {"val_matched_f1": 1.0, "val_pq": shrunk["pq"], "val_loss": 0.3}
    assert worse(tuned, baseline)
    assert not worse(baseline, tuned)
    # matched F1 still comes first, and the loss decides only when both tie
    assert not worse({**tuned, "val_matched_f1": 1.0}, {**baseline, "val_matched_f1": 0.9})
    assert worse({**baseline, "val_loss": 0.6}, baseline | {"val_loss": 0.5})
    # and the line a person reads says what decided
    result = SimpleNamespace(best_metrics={**tuned, "val_objects": 2}, baseline_metrics=baseline, kept_start=True)
    assert held_out_summary(result).endswith(
        f"a tie, so panoptic quality decides: {exact['pq']:.3f} -> {shrunk['pq']:.3f}"
        "; that is worse, so the starting model was kept"
    )


def test_a_model_fine_tuned_from_nuclei_he_2d_still_estimates_dark_nuclei(tmp_path):
    """nuclei-he-2d's objects are darker than the background (config ``dark_objects``: the automatic
    diameter is estimated on the inverted image); a model fine-tuned from it must keep that."""
    from segtune.core.models.store import load_model
    from segtune.core.synthetic import synthetic_nuclei

    sample = synthetic_nuclei((128, 128), seed=3, diameter=20.0)
    dark = (float(sample.image.max()) - sample.image).astype(np.float32)
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, device="cpu", learning_rate=1e-12)
    result = train([dark], [sample.labels], config, model="nuclei-he-2d", out=tmp_path / "tuned")
    _, saved = load_model(tmp_path / "tuned", device="cpu")
    assert saved["dark_objects"] is True and result.config["dark_objects"] is True


def test_frozen_normalisation_keeps_the_running_statistics():
    images, labels = _data(2)
    model = _start_model()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    result = train(images, labels, TrainConfig(**QUICK, keep_if_worse=False), model=model)
    assert result.config["training"]["settings"]["freeze_norm"] is True
    after = result.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in stats.items())
    # a new model learns its statistics
    fresh = train(images, labels, TrainConfig(**QUICK))
    assert fresh.config["training"]["settings"]["freeze_norm"] is False
    assert fresh.baseline_metrics == {} and not fresh.kept_start


def test_l2sp_keeps_the_weights_nearer_the_start():
    images, labels = _data(2)

    def distance(l2sp: float) -> float:
        model = _start_model()
        start = [p.detach().clone() for p in model.parameters()]
        config = TrainConfig(**{**QUICK, "epochs": 3, "learning_rate": 3e-3}, l2sp=l2sp, keep_if_worse=False, seed=1)
        result = train(images, labels, config, model=model)
        return float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(result.model.parameters(), start, strict=True)))

    assert distance(10.0) < 0.5 * distance(0.0)


def test_auto_settings_follow_the_object_size_and_what_is_trained():
    tuned = auto_settings(TrainConfig(), fine_tuning=True, diameter=20.0)
    assert (tuned.patch, tuned.batch_size, tuned.optimizer, tuned.learning_rate, tuned.freeze_norm, tuned.l2sp) == (
        128,
        8,
        "sgd",
        3e-3,
        True,
        1e-3,
    )
    new = auto_settings(TrainConfig(), fine_tuning=False, diameter=48.0)
    assert (new.patch, new.batch_size, new.optimizer, new.learning_rate, new.freeze_norm, new.l2sp) == (
        240,
        4,
        "adamw",
        2e-3,
        False,
        0.0,
    )
    assert auto_settings(TrainConfig(), fine_tuning=False, diameter=None).patch == 256
    assert auto_settings(TrainConfig(spatial_dims=3), fine_tuning=False, diameter=12.0).patch == (32, 96, 96)
    kept = auto_settings(
        TrainConfig(patch=64, batch_size=3, learning_rate=1e-2, freeze_norm=False, l2sp=0.5),
        fine_tuning=True,
        diameter=20.0,
    )
    assert (kept.patch, kept.batch_size, kept.learning_rate, kept.freeze_norm, kept.l2sp) == (64, 3, 1e-2, False, 0.5)


def test_a_new_model_shrinks_large_objects_to_the_default_size():
    rng = np.random.default_rng(0)
    labels = np.zeros((256, 256), np.uint16)
    yy, xx = np.indices(labels.shape)
    for i, (cy, cx) in enumerate([(60, 60), (60, 190), (190, 60), (190, 190)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 32**2] = i  # 64 px nuclei
    image = (labels > 0) * 100.0 + rng.normal(20, 5, labels.shape)
    result = train([image, image], [labels, labels], TrainConfig(**{**QUICK, "epochs": 1}))
    assert result.config["object_diameter"] == pytest_approx(32.0)
    assert result.config["auto_diameter"] is True


def pytest_approx(value: float):
    import pytest

    return pytest.approx(value, rel=0.05)


def test_one_sparse_image_holds_out_a_strip_with_objects_in_it():
    from segtune.core.train.data import make_sample, split_samples

    labels = np.zeros((100, 200), np.uint16)
    for i, x in enumerate(range(10, 160, 20), start=1):  # 8 nuclei, none in the last 20 % of the width
        labels[40:50, x - 4 : x + 4] = i
    sample = make_sample(np.random.default_rng(0).random((100, 200)).astype(np.float32), labels)
    train_part, held_out = split_samples([sample], 0.2)
    assert held_out[0].labels.shape[-1] > 40  # widened past the plain 20 % strip ...
    assert held_out[0].labels.shape[-1] <= 80  # ... but never past 40 % of the image
    assert len(np.unique(held_out[0].labels)) - 1 >= 2  # ceil(0.2 * 8) objects to measure
    assert train_part[0].labels.shape[-1] + held_out[0].labels.shape[-1] == 200
    # dense objects: the plain strip already holds enough
    dense = np.zeros((100, 200), np.uint16)
    for i, x in enumerate(range(10, 200, 8), start=1):  # 24 nuclei, 5 of them in the last 20 %
        dense[40:50, x - 3 : x + 3] = i
    _, held_out = split_samples([make_sample(np.ones((100, 200), np.float32), dense)], 0.2)
    assert held_out[0].labels.shape[-1] == 40


def test_one_image_whose_objects_lie_in_one_half_holds_out_a_strip_that_has_them():
    """A DSB 603 x 1272 image has all its nuclei in its left 55 %: the strip at the far end of X,
    even widened to 40 %, held none, and the held-out score read matched F1 1.000 -> 1.000 on an
    empty region. The strip is now taken along the edge that holds the objects."""
    from segtune.core.train.data import make_sample, split_samples

    labels = np.zeros((60, 200), np.uint16)
    for i, x in enumerate(range(8, 110, 12), start=1):  # 9 nuclei, all in the left 55 %
        labels[25:35, x - 4 : x + 4] = i
    image = np.random.default_rng(0).random((60, 200)).astype(np.float32)
    (train_part,), (held_out,) = split_samples([make_sample(image, labels)], 0.2)
    assert len(np.unique(held_out.labels)) - 1 >= 2  # ceil(0.2 * 9) objects to measure
    assert held_out.labels.shape == (1, 60, 40)  # the plain 20 % strip, at the start of X
    assert train_part.labels.shape == (1, 60, 160)
    np.testing.assert_array_equal(held_out.labels[0], labels[:, :40])  # the two parts tile the image
    np.testing.assert_array_equal(train_part.labels[0], labels[:, 40:])
    # objects only in the middle of X, near the top: no strip along X can hold them, so it is cut along Y
    top = np.zeros((100, 120), np.uint16)
    for i, x in enumerate((52, 60, 68), start=1):
        top[5:13, x - 3 : x + 3] = i
        top[50:58, x - 3 : x + 3] = i + 3 if x != 60 else 0
    (_,), (held_out,) = split_samples([make_sample(np.ones((100, 120), np.float32), top)], 0.2)
    assert held_out.labels.shape == (1, 20, 120) and len(np.unique(held_out.labels)) - 1 == 3
    # one object (a DSB image holds one nucleus at its left edge): it stays in the part that trains
    one = np.zeros((60, 200), np.uint16)
    one[20:30, 0:8] = 1
    (train_part,), (held_out,) = split_samples([make_sample(np.ones((60, 200), np.float32), one)], 0.2)
    assert train_part.labels.max() == 1 and held_out.labels.max() == 0
    # and where held-out data has no objects at all (an empty image), the line says what its 1.000 means
    empty = {"val_matched_f1": 1.0, "val_pq": 1.0, "val_loss": 0.2, "val_objects": 0}
    line = held_out_summary(SimpleNamespace(best_metrics=empty, baseline_metrics=empty, kept_start=False))
    assert line.endswith(
        "(starting model -> trained, held-out data with no objects in it, so it only counts false ones; not trained on)"
    )


def test_a_fine_tuned_bundled_model_still_splits_touching_nuclei(tmp_path):
    """The bundled nuclei models split touching nuclei at distance peaks (config ``split_instances``);
    a model fine-tuned from one must predict the same way (it once lost the setting, and every
    fine-tuned nuclei-2d merged touching nuclei: matched F1 fell on crowded images though the weights
    had barely moved)."""
    from segtune.core.models.store import load_model
    from segtune.core.predict import predict
    from segtune.core.synthetic import synthetic_nuclei

    sample = synthetic_nuclei((160, 160), seed=3, diameter=20.0)
    base_model, base_config = load_model("nuclei-2d", device="cpu")
    assert base_config["split_instances"] is True
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, device="cpu", learning_rate=1e-12)
    result = train([sample.image], [sample.labels], config, model="nuclei-2d", out=tmp_path / "tuned")
    _, saved = load_model(tmp_path / "tuned", device="cpu")
    assert saved["split_instances"] is True and result.config["split_instances"] is True
    # with (nearly) unchanged weights the fine-tuned model's instances are the starting model's
    touching = synthetic_nuclei((256, 256), seed=11, diameter=20.0, touching=0.8)
    before = np.asarray(predict((base_model, base_config), touching.image, axes="YX", instances=True).labels)
    after = np.asarray(predict((result.model, result.config), touching.image, axes="YX", instances=True).labels)
    assert before.max() == after.max() > 0


def test_each_image_is_zoomed_by_its_own_objects_to_the_models_size():
    """Prediction zooms every image by its own object size; training must too. Two images at
    different magnifications (nuclei 64 and 24 px) once shared one factor from the median size,
    so both were taught at a size the model never predicts at (about 23 and 9 px for 16)."""
    from segtune.core.diameter import labels_diameter
    from segtune.core.train.phases import Start, prepare_data

    def discs(radius: int) -> tuple[np.ndarray, np.ndarray]:
        side = 12 * radius
        labels = np.zeros((side, side), np.uint16)
        yy, xx = np.indices(labels.shape)
        for i, (cy, cx) in enumerate([(3, 3), (3, 9), (9, 3), (9, 9)], start=1):
            labels[(yy - cy * radius) ** 2 + (xx - cx * radius) ** 2 < radius**2] = i
        return (labels > 0) * 100.0 + np.random.default_rng(radius).normal(20, 5, labels.shape), labels

    (big, big_labels), (small, small_labels) = discs(32), discs(12)
    config = TrainConfig(**QUICK, object_diameter=16.0, normalization=(1.0, 99.8))
    data = prepare_data(
        [big, small],
        [big_labels, small_labels],
        [None, None],
        ["big", "small"],
        None,
        config,
        Start(None, {}, None, None),
    )
    sizes = [labels_diameter(s.labels[0]) for s in data.train_samples + data.val_samples]
    assert len(sizes) == 2 and all(abs(size - 16.0) < 1.5 for size in sizes), sizes
    assert data.model_diameter == 16.0


def test_fine_tuning_steps_follow_the_gradient_instead_of_moving_every_weight_alike():
    """Adam's first steps move every weight by about the learning rate whatever its gradient: a
    trained model taught one image it already segments changed everywhere, and the source's other
    images lost (README, *Fine-tuning*). The default (SGD) moves such a model far less."""
    from segtune.core.synthetic import synthetic_nuclei

    sample = synthetic_nuclei((128, 128), seed=5, diameter=20.0)
    moved = {}
    for optimizer, learning_rate in ((None, None), ("adamw", 3e-4)):  # the default; AdamW at its former default
        config = TrainConfig(
            epochs=1,
            steps_per_epoch=4,
            batch_size=2,
            patch=64,
            device="cpu",
            keep_if_worse=False,
            optimizer=optimizer,
            learning_rate=learning_rate,
        )
        start = [p.detach().clone() for p in _bundled("nuclei-2d").parameters()]
        result = train([sample.image], [sample.labels], config, model="nuclei-2d")
        moved[optimizer] = float(
            sum(((p.detach() - s) ** 2).sum() for p, s in zip(result.model.parameters(), start, strict=True)) ** 0.5
        )
        if optimizer is None:
            assert result.config["training"]["settings"]["optimizer"] == "sgd"
    assert 0 < moved[None] < 0.5 * moved["adamw"], moved


def _bundled(name: str):
    from segtune.core.models.store import load_model

    return load_model(name, device="cpu")[0]
