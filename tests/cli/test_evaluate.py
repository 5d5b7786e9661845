"""Tests of `segtune evaluate`: JSON layout, pairing by sorted paths, table, overlays, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from segtune.cli import main
from segtune.core.io import write_labels
from segtune.core.metrics import evaluate


def _pair(shift: int):
    truth = np.zeros((24, 32), np.uint8)
    truth[2:10, 2:10] = 255
    truth[14:22, 16:28] = 255
    pred = np.zeros((24, 32), np.uint16)
    pred[2 + shift : 10 + shift, 2:10] = 1
    pred[14:22, 16:22] = 2  # the second object split in two
    pred[14:22, 22:28] = 3
    return pred, truth


@pytest.fixture
def files(tmp_path):
    """Two pairs: predictions as OME-TIFF instance labels, truths as 0/255 PNG masks."""
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    arrays = {}
    for name, shift in (("a", 0), ("b", 3)):
        pred, truth = _pair(shift)
        write_labels(tmp_path / "pred" / f"{name}_labels.tif", pred)
        iio.imwrite(tmp_path / "truth" / f"{name}.png", truth)
        arrays[name] = (pred, truth)
    return tmp_path, arrays


def test_json_is_one_object_with_means_and_images_in_sorted_order(files, capsys):
    root, arrays = files
    code = main(
        [
            "evaluate",
            "--pred",
            str(root / "pred" / "b_labels.tif"),
            str(root / "pred" / "a_labels.tif"),
            "--truth",
            str(root / "truth" / "a.png"),
            str(root / "truth" / "b.png"),
            "--json",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)  # exactly one JSON document on stdout
    assert result["n_images"] == 2
    assert [Path(img["pred"]).name for img in result["images"]] == ["a_labels.tif", "b_labels.tif"]
    assert [Path(img["truth"]).name for img in result["images"]] == ["a.png", "b.png"]
    for img, name in zip(result["images"], "ab", strict=True):
        expected = evaluate(*arrays[name])
        assert img["pixel"] == pytest.approx(expected["pixel"])
        assert img["object"] == pytest.approx(expected["object"])
        assert img["matched"]["f1_at_0.5"] == pytest.approx(expected["matched"]["f1_at_0.5"])
        assert img["matched"]["thresholds"]["0.75"] == pytest.approx(expected["matched"]["thresholds"]["0.75"])
    a, b = result["images"]
    for section, key in (
        ("pixel", "precision"),
        ("pixel", "recall"),
        ("pixel", "f1"),
        ("pixel", "iou"),
        ("object", "precision"),
        ("object", "recall"),
        ("object", "f1"),
        ("matched", "f1_at_0.5"),
        ("matched", "ap_at_0.5"),
        ("matched", "mean_iou_matched"),
    ):
        assert result[section][key] == pytest.approx((a[section][key] + b[section][key]) / 2)
    # hand check of pair a: the split object is found once by matching (IoU 0.5 for each half)
    assert a["object"]["tp"] == 2 and a["object"]["fp"] == 0
    assert a["matched"]["thresholds"]["0.5"]["tp"] == 2  # object 1 exact, object 2 half (IoU 0.5)
    assert a["matched"]["thresholds"]["0.55"]["tp"] == 1


def test_folders_and_human_readable_table(files, capsys):
    root, _ = files
    code = main(["evaluate", "--pred", str(root / "pred"), "--truth", str(root / "truth")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["pred", "truth", "px", "P"]
    assert lines[2].startswith("a_labels.tif") and "a.png" in lines[2]
    assert lines[3].startswith("b_labels.tif")
    assert any(line.startswith("mean") for line in lines)
    assert any(line.startswith("objects:") for line in lines) and lines[-1].startswith("legend:")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_overlay_pngs(files, capsys):
    root, arrays = files
    out_dir = root / "overlays"
    args = [
        "evaluate",
        "--pred",
        str(root / "pred" / "b_labels.tif"),
        "--truth",
        str(root / "truth" / "b.png"),
        "--json",
        "--overlay",
        str(out_dir),
    ]
    assert main(args) == 0
    json.loads(capsys.readouterr().out)  # the note about overlays goes to stderr with --json
    rgb = iio.imread(out_dir / "b_labels_overlay.png")
    pred, truth = arrays["b"]
    assert rgb.shape == (24, 32, 3)
    assert rgb[3, 3].tolist() == [0, 0, 255]  # shifted away from the truth: false negative
    assert rgb[11, 3].tolist() == [255, 0, 0]  # shifted onto background: false positive
    assert rgb[6, 6].tolist() == [0, 255, 0]
    assert main(args) == 2  # exists
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_3d_pairs_and_plane_overlays(tmp_path, capsys):
    truth = np.zeros((3, 8, 8), np.uint8)
    truth[0:2, 1:5, 1:5] = 1
    pred = np.roll(truth, 1, axis=0)
    write_labels(tmp_path / "p.tif", pred)
    write_labels(tmp_path / "t.tif", truth)
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "p.tif"),
            "--truth",
            str(tmp_path / "t.tif"),
            "--json",
            "--overlay",
            str(tmp_path / "o"),
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    assert result["pixel"]["iou"] == pytest.approx(16 / 48)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [f"p_overlay_z00{z}.png" for z in range(3)]


def test_errors_exit_2_with_one_line(files, tmp_path, capsys):
    root, _ = files
    code = main(["evaluate", "--pred", str(root / "pred" / "a_labels.tif"), "--truth", str(root / "truth")])
    assert code == 2
    err = capsys.readouterr().err
    assert "1 --pred file(s) but 2 --truth file(s)" in err and len(err.strip().splitlines()) == 1

    small = tmp_path / "small.png"
    iio.imwrite(small, np.zeros((5, 5), np.uint8))
    code = main(["evaluate", "--pred", str(small), "--truth", str(root / "truth" / "a.png"), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "small.png" in captured.err and "`pred` shape (5, 5) vs `truth` shape (24, 32)" in captured.err

    probabilities = tmp_path / "prob.tif"
    import tifffile

    tifffile.imwrite(probabilities, np.full((24, 32), 0.7, np.float32))
    code = main(["evaluate", "--pred", str(probabilities), "--truth", str(root / "truth" / "a.png")])
    assert code == 2 and "threshold it first" in capsys.readouterr().err

    code = main(["evaluate", "--pred", str(tmp_path / "missing.tif"), "--truth", str(root / "truth" / "a.png")])
    assert code == 2 and "missing.tif" in capsys.readouterr().err


def test_command_exit_code_in_a_subprocess(files):
    root, _ = files
    segtune = Path(sys.executable).parent / "segtune"
    command = (
        [str(segtune)]
        if segtune.exists()
        else [sys.executable, "-c", "import sys; from segtune.cli import main; sys.exit(main())"]
    )
    done = subprocess.run(
        [*command, "evaluate", "--pred", str(root / "pred"), "--truth", str(root / "truth" / "a.png"), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "2 --pred file(s) but 1 --truth file(s)" in done.stderr


def test_summary_counts_touching_objects_as_instances_and_explains_the_columns(shared_data, tmp_path, capsys):
    """A DSB 2018 ground truth (instance labels) whose 70 nuclei touch into 40 connected components."""
    truth_path = shared_data / "nuclei_dsb2018" / "labels" / "00ae65c1c6631ae6.png"
    if not truth_path.is_file():
        pytest.skip(f"{truth_path} is absent")
    truth = iio.imread(truth_path)
    ids = np.unique(truth)[1:]
    assert len(ids) == 70
    pred = np.where(np.isin(truth, ids[:3]), 0, truth)  # three nuclei missed
    write_labels(tmp_path / "pred.tif", pred)
    assert main(["evaluate", "--pred", str(tmp_path / "pred.tif"), "--truth", str(truth_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = next(line for line in lines if line.startswith("objects:"))
    assert summary.startswith("objects: 70 true, 67 predicted")
    assert "67 matched one-to-one at IoU >= 0.5, 3 missed, 0 false" in summary
    assert next(line for line in lines if line.startswith("connected components:")).startswith(
        "connected components: 40 true"
    )
    legend = lines[-1]
    for word in (
        "px = pixels",
        "obj = connected components",
        "P = precision",
        "R = recall",
        "F1@.5",
        "AP@.5",
        "mIoU",
        "PQ",
    ):
        assert word in legend
