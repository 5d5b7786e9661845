"""Two channels in, non-exclusive classes out, in 3D: synthetic nuclei + Golgi, the multilabel head, pairing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from segtune.cli import main
from segtune.core.measure import class_instances, pair_objects
from segtune.core.postprocess import mask_from_probabilities
from segtune.core.synthetic import synthetic_nuclei_golgi
from segtune.core.train.data import make_targets
from segtune.core.train.losses import parse_loss

torch.set_num_threads(1)


def test_generator_places_40_to_90_pairs_each_golgi_beside_its_nucleus() -> None:
    stack = synthetic_nuclei_golgi(seed=3)
    assert stack.image.shape == (2, 32, 128, 128) and stack.image.dtype == np.uint16
    assert 40 <= stack.n_pairs <= 90
    assert not np.any((stack.nuclei > 0) & (stack.golgi > 0))
    assert np.array_equal(stack.classes, (stack.nuclei > 0) * 1 + (stack.golgi > 0) * 2)
    # each Golgi touches or nearly touches the nucleus with its id (gap <= 3 px, 2 px elastic)
    from scipy import ndimage

    for k in np.unique(stack.golgi)[1:40]:
        distance = ndimage.distance_transform_edt(stack.nuclei != k, sampling=(2.0, 1.0, 1.0))
        assert distance[stack.golgi == k].min() <= 3.0 + 2 * 2.0 + 1.5, k
    # the Golgi channel is bright on the Golgi, the nuclear channel on the nuclei
    assert stack.image[1][stack.golgi > 0].mean() > 3 * stack.image[1][stack.classes == 0].mean()
    assert stack.image[0][stack.nuclei > 0].mean() > 3 * stack.image[0][stack.classes == 0].mean()
    again = synthetic_nuclei_golgi(seed=3)
    assert np.array_equal(again.image, stack.image)


def test_multilabel_targets_losses_and_masks() -> None:
    flags = np.array([[0, 1, 2, 3]])
    target = make_targets(flags, "multilabel", n_classes=2)
    assert target.tolist() == [[[0, 1, 0, 1]], [[0, 0, 1, 1]]]
    with pytest.raises(ValueError, match="bits beyond"):
        make_targets(np.array([[4]]), "multilabel", n_classes=2)
    loss = parse_loss("bce+dice", "multilabel")
    t = torch.from_numpy(target)[None].float()
    good, bad = (t * 20 - 10), -(t * 20 - 10)
    assert float(loss(good, t)) < 0.01 < float(loss(bad, t))
    probabilities = torch.sigmoid(good[0]).numpy()
    assert np.array_equal(mask_from_probabilities(probabilities, "multilabel"), flags)


def test_pairing_recovers_the_true_pairs() -> None:
    stack = synthetic_nuclei_golgi((24, 96, 96), n_pairs=30, seed=5)
    table = pair_objects(stack.nuclei, stack.golgi, pixel_sizes=(0.5, 0.25, 0.25), max_distance=3.0)
    assert table["pair_unit"].iloc[0] == "um" and len(table) == len(np.unique(stack.nuclei)) - 1
    paired = table[table["partner"] > 0]
    # the generator gives each Golgi its nucleus's id: pairing must find (nearly) all of them
    assert (paired["partner"] == paired["label"]).sum() >= 0.95 * stack.n_pairs
    assert np.isfinite(paired[["vector_z", "vector_y", "vector_x"]].values).all()
    # from class flags (touching nuclei merge into one object): pairs are still counted closely
    for split in ((), (0,)):  # touching nuclei joined, or split by a watershed
        nuclei, golgi = class_instances(stack.classes, 2, split=split, sampling=(2.0, 1.0, 1.0))
        found = (pair_objects(nuclei, golgi, pixel_sizes=(0.5, 0.25, 0.25), max_distance=3.0)["partner"] > 0).sum()
        assert abs(int(found) - stack.n_pairs) <= 0.1 * stack.n_pairs, split


def test_train_predict_and_measure_pairs_from_the_command_line(tmp_path: Path) -> None:
    """A 2-channel 3D multilabel U-Net trains (loss falls), predicts class flags, and pairs are measured."""
    images, labels = [], []
    for seed in range(2):
        stack = synthetic_nuclei_golgi((16, 64, 64), n_pairs=12, seed=seed)
        images.append(tmp_path / f"stack{seed}.ome.tif")
        labels.append(tmp_path / f"stack{seed}_classes.tif")
        tifffile.imwrite(images[-1], stack.image, metadata={"axes": "CZYX"}, ome=True)
        tifffile.imwrite(labels[-1], stack.classes)
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--3d",
                "--head",
                "multilabel",
                "--classes",
                "2",
                "--images",
                *map(str, images),
                "--labels",
                *map(str, labels),
                "--out",
                str(model),
                "--epochs",
                "4",
                "--steps-per-epoch",
                "6",
                "--patch",
                "16",
                "64",
                "64",
                "--batch-size",
                "2",
                "--depth",
                "2",
                "--base-channels",
                "8",
                "--val-fraction",
                "0",
                "--lr",
                "3e-3",
                "--min-foreground",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    log = pd.read_csv(model / "training_log.csv")
    assert log["train_loss"].iloc[-1] < 0.9 * log["train_loss"].iloc[0]
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model), str(images[0]), "--out", str(out), "--device", "cpu"]) == 0
    (written,) = out.glob("*_labels.tif")
    flags = tifffile.imread(written)
    assert flags.shape[-3:] == (16, 64, 64) and set(np.unique(flags)) <= {0, 1, 2, 3}
    assert (
        main(
            [
                "measure",
                "--labels",
                str(labels[0]),
                "--label-bit",
                "0",
                "--pair-with",
                str(labels[0]),
                "--pair-bit",
                "1",
                "--image",
                str(images[0]),
                "--out",
                str(tmp_path / "pairs.csv"),
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "pairs.csv")
    assert {"partner", "vector_z", "vector_y", "vector_x", "pair_distance"} <= set(table.columns)
    assert (table["partner"] > 0).sum() >= 10  # the ground truth has 12 pairs (or fewer that fitted)
