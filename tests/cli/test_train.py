"""`segtune train` and `segtune models` from the command line, on small real-format files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from segtune.cli import main
from segtune.core.models.store import load_model

TINY = [
    "--patch",
    "32",
    "--batch-size",
    "2",
    "--steps-per-epoch",
    "2",
    "--depth",
    "2",
    "--base-channels",
    "4",
    "--device",
    "cpu",
]


def _write_pairs(folder, n=3, shape=(64, 64)):
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    yy, xx = np.indices(shape)
    for i in range(n):
        labels = np.zeros(shape, np.uint8)
        for _ in range(5):
            cy, cx = rng.uniform(8, shape[0] - 8, 2)
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = 255  # binary masks, as the seeds' data
        image = (labels > 0) * 120 + rng.normal(30, 8, shape)
        tifffile.imwrite(folder / "images" / f"img{i}.tif", image.astype(np.uint16))
        tifffile.imwrite(folder / "labels" / f"img{i}.tif", labels)
    return folder / "images", folder / "labels"


def test_models_lists_the_bundled_models(capsys):
    from segtune.core.models import registry

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bundled = registry.list_models()
    assert [m.name for m in bundled] == list(registry.BUNDLED_MODELS)  # every model of the table ships
    assert len(lines) == len(bundled)
    for model, line in zip(bundled, lines, strict=True):
        assert line.split()[0] == model.name and model.description in line


def test_train_writes_a_model_folder_with_a_log_and_resumes(tmp_path, capsys):
    images, labels = _write_pairs(tmp_path)
    out = tmp_path / "model"
    code = main(["train", "--images", str(images), "--labels", str(labels), "--out", str(out), "--epochs", "2", *TINY])
    assert code == 0
    printed = capsys.readouterr()
    assert "completed: 2 epoch(s)" in printed.out
    model, config = load_model(out)
    assert config["head"] == "three_class"
    assert config["training"]["command"].startswith("segtune ")
    assert config["training"]["data"]["images"][0].endswith("img0.tif")
    with open(out / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_f1", "val_iou"} <= set(rows[0])

    # the same command again is refused; --resume with more epochs continues
    assert main(["train", "--images", str(images), "--labels", str(labels), "--out", str(out), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--resume",
            *TINY,
        ]
    )
    assert code == 0
    with open(out / "training_log.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["1", "2", "3"]
    # epochs are the whole run's: resuming a run that has run them all says so
    capsys.readouterr()
    again = ["train", "--images", str(images), "--labels", str(labels), "--out", str(out), "--epochs", "3"]
    assert main([*again, "--resume", *TINY]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "all 3 epochs" in error and str(out) in error


def test_fine_tune_from_a_model_folder(tmp_path):
    images, labels = _write_pairs(tmp_path)
    base = tmp_path / "base"
    assert (
        main(
            [
                "train",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--out",
                str(base),
                "--epochs",
                "1",
                "--head",
                "binary",
                *TINY,
            ]
        )
        == 0
    )
    tuned = tmp_path / "tuned"
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tuned),
            "--from",
            str(base),
            "--epochs",
            "1",
            "--freeze-encoder",
            *TINY,
        ]
    )
    assert code == 0
    _, config = load_model(tuned)
    assert config["head"] == "binary"
    assert config["lineage"][0]["from"] == str(base)
    _, first = load_model(base)  # a new model learns with AdamW, fine-tuning with SGD unless told
    assert (first["training"]["settings"]["optimizer"], config["training"]["settings"]["optimizer"]) == ("adamw", "sgd")
    told = tmp_path / "told"
    args = ["train", "--images", str(images), "--labels", str(labels), "--from", str(base), "--epochs", "1", *TINY]
    assert main([*args, "--out", str(told), "--optimizer", "adamw", "--lr", "3e-4"]) == 0
    settings = load_model(told)[1]["training"]["settings"]
    assert (settings["optimizer"], settings["learning_rate"]) == ("adamw", 3e-4)


def test_a_one_channel_model_fine_tunes_on_an_rgb_png_as_prediction_reads_it(shared_data, tmp_path):
    """``segtune train --from nuclei-he-2d`` on a stained-tissue RGB PNG: the model takes one
    channel, and the image reaches it as the grey mean of its colours, as ``segtune predict``
    gives it (before, training stopped: "the model takes 1 channel(s) but the images have 3")."""
    from segtune.core.train.data import load_pairs

    folder = shared_data / "nuclei_dsb2018"
    image, labels = folder / "images" / "0e21d7b3eea8cdbb.png", folder / "labels" / "0e21d7b3eea8cdbb.png"
    (grey,), _, _ = load_pairs([image], [labels], in_channels=1)
    (colour,), _, _ = load_pairs([image], [labels])
    assert colour.shape[0] in (3, 4)  # a new model still sees the colours
    np.testing.assert_allclose(grey, np.mean(colour[:3], axis=0, dtype=np.float32))

    out = tmp_path / "tuned"
    code = main(
        ["train", "--from", "nuclei-he-2d", "--images", str(image), "--labels", str(labels), "--out", str(out)]
        + ["--epochs", "1", "--steps-per-epoch", "2", "--patch", "64", "--batch-size", "2", "--device", "cpu"]
    )
    assert code == 0
    _, config = load_model(out)
    assert config["architecture"]["in_channels"] == 1
    assert "nuclei-he-2d" in [step.get("from") for step in config["lineage"]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("shape", "do not match"),
        ("empty", "labels are empty"),
        ("count", "1 label file"),
    ],
)
def test_clear_errors(tmp_path, capsys, change, message):
    images, labels = _write_pairs(tmp_path, n=2)
    label_args = [str(labels)]
    if change == "shape":
        tifffile.imwrite(labels / "img1.tif", np.zeros((64, 60), np.uint8))
    elif change == "empty":
        for path in labels.iterdir():
            tifffile.imwrite(path, np.zeros((64, 64), np.uint8))
    else:
        label_args = [str(labels / "img0.tif")]
    code = main(["train", "--images", str(images), "--labels", *label_args, "--out", str(tmp_path / "m"), *TINY])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_bad_loss_is_a_usage_error(tmp_path, capsys):
    images, labels = _write_pairs(tmp_path, n=2)
    code = main(
        [
            "train",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--out",
            str(tmp_path / "m"),
            "--loss",
            "bce+dcie",
            *TINY,
        ]
    )
    assert code == 2
    assert "'dcie' is not a known loss" in capsys.readouterr().err


def test_a_replay_share_outside_0_to_1_is_a_usage_error(tmp_path, capsys):
    images, labels = _write_pairs(tmp_path, n=2)
    args = ["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "m"), *TINY]
    code = main([*args, "--from", "nuclei-2d", "--replay", "1.5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "replay must be in [0, 1), got 1.5" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_model_config_is_json(tmp_path):
    images, labels = _write_pairs(tmp_path, n=2)
    out = tmp_path / "m"
    assert (
        main(
            [
                "train",
                "--images",
                str(images),
                "--labels",
                str(labels),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--contrast-stretch",
                "--diameter",
                "8",
                *TINY,
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["normalization"] == {"method": "percentile", "low": 5.0, "high": 98.0, "clip": True}
    assert config["object_diameter"] == pytest.approx(8.0, rel=0.01)
