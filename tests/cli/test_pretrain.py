"""The label-efficient paths end to end from the command line, on real data, with tiny networks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segtune.cli import main
from segtune.core.models.store import load_model

TINY = [
    "--epochs",
    "1",
    "--steps-per-epoch",
    "2",
    "--patch",
    "32",
    "--batch-size",
    "2",
    "--depth",
    "2",
    "--base-channels",
    "4",
]


def _membrane_files(membranes_dir: Path, indices) -> tuple[list[str], list[str]]:
    return (
        [str(membranes_dir / "images" / f"{i}.png") for i in indices],
        [str(membranes_dir / "labels" / f"{i}.png") for i in indices],
    )


def test_restore_pretrain_finetune_pseudolabel_and_student(membranes_dir: Path, tmp_path: Path) -> None:
    images, labels = _membrane_files(membranes_dir, [0, 1])
    pretrained, tuned, pseudo, student = (tmp_path / n for n in ("restore", "tuned", "pseudo", "student"))
    assert (
        main(
            [
                "pretrain",
                "--method",
                "restore",
                "--images",
                *images,
                "--out",
                str(pretrained),
                "--head",
                "binary",
                "--stretch",
                "--restore-loss",
                "ssim+l1",
                *TINY,
            ]
        )
        == 0
    )
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
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--patch",
                "32",
                "--batch-size",
                "2",
                "--val-fraction",
                "0.5",
                "--freeze-encoder",
                "--loss",
                "ssim+dice",
            ]
        )
        == 0
    )
    start, _ = load_model(pretrained)
    model, config = load_model(tuned)
    assert config["lineage"][-1]["from"] == str(pretrained)
    assert config["lineage"][-1]["training"]["pretext"] == "restore"
    assert config["normalization"] == {"method": "percentile", "low": 5.0, "high": 98.0, "clip": True}
    for key, value in start.state_dict().items():
        if key.startswith("encoder."):  # frozen during fine-tuning: still the pretrained encoder
            assert torch.equal(model.state_dict()[key], value), key
    unlabelled, _ = _membrane_files(membranes_dir, [2])
    assert (
        main(
            [
                "pseudolabel",
                "--model",
                str(tuned),
                "--images",
                *unlabelled,
                "--out",
                str(pseudo),
                "--threshold",
                "0.6",
                "--ignore-value",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    report = json.loads((pseudo / "pseudolabel_report.json").read_text())
    assert report["ignore_value"] == 2 and report["images"][0]["labels_file"] == "2_labels.tif"
    assert (
        main(
            [
                "train",
                "--images",
                images[0],
                *unlabelled,
                "--labels",
                labels[0],
                str(pseudo / "2_labels.tif"),
                "--ignore-value",
                "2",
                "--head",
                "binary",
                "--out",
                str(student),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--patch",
                "32",
                "--batch-size",
                "2",
                "--val-fraction",
                "0",
                "--depth",
                "2",
                "--base-channels",
                "4",
            ]
        )
        == 0
    )
    assert (student / "weights.safetensors").is_file()


def test_simclr_then_local_contrastive(membranes_dir: Path, tmp_path: Path, capsys) -> None:
    images, labels = _membrane_files(membranes_dir, [4, 5])
    assert (
        main(
            [
                "pretrain",
                "--method",
                "simclr",
                "--images",
                *images,
                "--out",
                str(tmp_path / "global"),
                "--head",
                "binary",
                *TINY,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "pretrain",
                "--method",
                "local-contrastive",
                "--from",
                str(tmp_path / "global"),
                "--images",
                *images,
                "--labels",
                *labels,
                "--out",
                str(tmp_path / "local"),
                "--freeze-encoder",
                *TINY,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "local-contrastive pretraining completed after 1 epoch(s)" in out and "segtune train --from" in out
    _, config = load_model(tmp_path / "local")
    assert config["pretext"]["method"] == "local-contrastive" and config["lineage"][-1]["pretext"] == "simclr"
    assert config["head"] == "binary"  # the global stage's head carries through
    assert main(["pretrain", "--method", "local-contrastive", "--images", *images, "--out", str(tmp_path / "x")]) == 2


def test_n2n_denoiser_writes_denoised_inputs(czi_dir: Path, tmp_path: Path) -> None:
    czi = czi_dir / "CD_s_1_t_3_c_2_z_5.czi"
    assert (
        main(
            [
                "pretrain",
                "--method",
                "n2n",
                "--images",
                str(czi),
                "--channel",
                "1",
                "--out",
                str(tmp_path / "n2n"),
                "--denoise-out",
                str(tmp_path / "denoised"),
                "--device",
                "cpu",
                *TINY,
            ]
        )
        == 0
    )
    from segtune.core.io import open_image

    denoised = open_image(tmp_path / "denoised" / "CD_s_1_t_3_c_2_z_5_denoised.tif")
    assert denoised.data.shape == (3, 1, 5, 170, 240) and denoised.data.dtype == np.float32
    assert np.isfinite(np.asarray(denoised.data)).all()
    assert denoised.physical_pixel_sizes.Z == pytest.approx(open_image(czi).physical_pixel_sizes.Z)
    _, config = load_model(tmp_path / "n2n")
    assert config["head"] == "image" and config["training"]["command"].startswith("segtune")
    with pytest.raises(SystemExit):
        main(["pretrain", "--method", "n2n"])


def test_ctrl_c_stops_after_the_step_and_keeps_the_last_epoch(membranes_dir: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    images, _ = _membrane_files(membranes_dir, [6])
    out = tmp_path / "interrupted"
    args = [
        sys.executable,
        "-m",
        "segtune.cli",
        "pretrain",
        "--method",
        "restore",
        "--images",
        *images,
        "--out",
        str(out),
        "--epochs",
        "1000",
        "--steps-per-epoch",
        "1",
        "--patch",
        "32",
        "--batch-size",
        "2",
        "--depth",
        "2",
        "--base-channels",
        "4",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        log = out / "pretrain_log.csv"

        def epochs_logged() -> int:  # rows after the header; the file may appear before its first row
            return max(0, len(log.read_text().splitlines()) - 1) if log.is_file() else 0

        while epochs_logged() < 1 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert epochs_logged() >= 1, "no epoch finished"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "stopping after this step" in stderr and "holds the model of the last finished epoch" in stdout
    _, config = load_model(out)
    assert config["training"]["status"] == "cancelled" and 1 <= config["training"]["epochs_run"] < 1000


def test_autolabel_one_channel_then_train_on_the_other(czi_dir: Path, tmp_path: Path) -> None:
    czi = czi_dir / "CD_s_1_t_3_c_2_z_5.czi"
    auto = tmp_path / "auto"
    assert (
        main(
            [
                "autolabel",
                "--images",
                str(czi),
                "--out",
                str(auto),
                "--channel",
                "0",
                "--export-channel",
                "1",
                "--diameter",
                "3",
                "30",
                "--window",
                "12",
            ]
        )
        == 0
    )
    images = sorted(str(p) for p in auto.glob("*_c1.tif"))
    labels = sorted(str(p) for p in auto.glob("*_labels.tif"))
    assert len(images) == len(labels) == 12
    assert (
        main(
            [
                "train",
                "--images",
                *images[:4],
                "--labels",
                *labels[:4],
                "--out",
                str(tmp_path / "model"),
                "--head",
                "binary",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
                "--patch",
                "32",
                "--batch-size",
                "2",
                "--val-fraction",
                "0.25",
                "--depth",
                "2",
                "--base-channels",
                "4",
            ]
        )
        == 0
    )
    _, config = load_model(tmp_path / "model")
    assert config["training"]["label_files"] == labels[:4]
