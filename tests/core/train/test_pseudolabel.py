"""Pseudo-labels: confidence rules by hand, probabilities as one forward pass, files, and a student trained on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segtune.core.io import open_image, read_labels, write_labels
from segtune.core.models.store import default_config
from segtune.core.models.unet import UNet
from segtune.core.normalize import percentile_normalize
from segtune.core.train.pseudolabel import (
    IGNORE,
    model_probabilities,
    pseudo_labels,
    pseudolabel_files,
)


def test_binary_and_three_class_confidence_rules() -> None:
    p = np.array([[0.0, 0.1, 0.1001, 0.5, 0.8999, 0.9, 1.0]], dtype=np.float32)
    assert pseudo_labels(p, "binary", 0.9).tolist() == [0, 0, IGNORE, IGNORE, IGNORE, 1, 1]
    assert pseudo_labels(p, "binary", 0.9, ignore_value=2).tolist() == [0, 0, 2, 2, 2, 1, 1]
    # three classes: foreground = interior + boundary = 1 - p(background)
    background = np.array([0.97, 0.5, 0.02])
    interior = np.array([0.02, 0.3, 0.5])
    probabilities = np.stack([background, interior, 1 - background - interior])
    assert pseudo_labels(probabilities, "three_class", 0.95).tolist() == [0, IGNORE, 1]
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(p, "binary", 0.5)
    with pytest.raises(ValueError, match="ignore_value"):
        pseudo_labels(p, "binary", 0.9, ignore_value=1)


def test_semantic_confidence_rule() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.1], [0.1, 0.3, 0.8]])  # (K=3, 3 pixels)
    assert pseudo_labels(probabilities, "semantic", 0.6).tolist() == [0, IGNORE, 2]
    with pytest.raises(ValueError, match="one of the model's"):
        pseudo_labels(np.ones((4, 2)) / 4, "semantic", 0.2, ignore_value=3)


def _tiny_binary_model(seed: int = 0) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = UNet(depth=2, base_channels=4).eval()
    config = default_config(
        model.architecture, head="binary", normalization={"method": "percentile", "low": 1.0, "high": 99.8}
    )
    return model, config


def test_probabilities_are_one_forward_pass_of_the_normalised_image(membranes_dir: Path) -> None:
    image = np.asarray(open_image(membranes_dir / "images" / "3.png").data[0, 0, 0])[:96, :80]
    model, config = _tiny_binary_model()
    probabilities = model_probabilities(model, config, image, device="cpu")
    with torch.no_grad():
        x = torch.from_numpy(percentile_normalize(image, 1, 99.8)[None, None].astype(np.float32))
        expected = torch.sigmoid(model(x))[0].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    # a model trained at half the size sees the image at half the size; the answer comes back full size
    half = dict(config, input_scale=0.5)
    assert model_probabilities(model, half, image, device="cpu").shape == (1, 96, 80)
    with pytest.raises(ValueError, match="image"):
        model_probabilities(model, dict(config, head="image"), image)


def test_pseudolabel_files_then_a_student_trains_on_labelled_plus_pseudo(membranes_dir: Path, tmp_path: Path) -> None:
    from segtune.core.train.trainer import TrainConfig, train

    # small real crops as files: two labelled, two unlabelled
    crops = []
    for i in range(4):
        image = np.asarray(open_image(membranes_dir / "images" / f"{i}.png").data[0, 0, 0])[:64, :64]
        path = tmp_path / "images" / f"{i}.tif"
        path.parent.mkdir(exist_ok=True)
        write_labels(path, image)  # a uint8 image written losslessly
        crops.append((path, read_labels(membranes_dir / "labels" / f"{i}.png")[:64, :64]))
    teacher, config = _tiny_binary_model()
    events = []
    results = pseudolabel_files(
        teacher,
        [p for p, _ in crops[2:]],
        tmp_path / "pseudo",
        config=config,
        threshold=0.55,
        ignore_value=2,
        device="cpu",
        progress=events.append,
    )
    assert [e.done for e in events] == [1, 2] and [r.labels_file for r in results] == ["2_labels.tif", "3_labels.tif"]
    pseudo = [read_labels(tmp_path / "pseudo" / r.labels_file) for r in results]
    for labels, result, (path, _) in zip(pseudo, results, crops[2:], strict=True):
        assert set(np.unique(labels)) <= {0, 1, 2}
        # what was written is exactly the rule applied to the teacher's probabilities
        probabilities = model_probabilities(teacher, config, read_labels(path), device="cpu")
        np.testing.assert_array_equal(labels, pseudo_labels(probabilities, "binary", 0.55, ignore_value=2))
        assert result.confident_fraction == pytest.approx(float((labels != 2).mean()))
    with pytest.raises(FileExistsError):
        pseudolabel_files(teacher, [crops[2][0]], tmp_path / "pseudo", config=config)
    # the student: hand labels (0/255) plus pseudo-labels (0/1, 2 = ignore)
    images = [read_labels(p) for p, _ in crops]
    labels = [crops[0][1], crops[1][1], *pseudo]
    settings = TrainConfig(
        head="binary",
        patch=32,
        batch_size=2,
        epochs=1,
        steps_per_epoch=2,
        val_fraction=0.0,
        depth=2,
        base_channels=4,
        ignore_value=2,
        device="cpu",
        min_foreground=0.0,
    )
    result = train(images, labels, settings)
    assert result.history and np.isfinite(result.history[0]["train_loss"])
