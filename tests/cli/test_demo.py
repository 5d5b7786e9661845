"""`segtune demo`: the whole workflow on the sample, headless (on a crop, with a few seconds of training)."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest

from segtune.cli import main
from segtune.core.io import open_image, read_labels
from segtune.demo import OUTPUTS, _check_out, run_demo

QUICK = {"patch": 64, "batch_size": 2, "steps_per_epoch": 2}


def test_demo_predicts_finetunes_scores_and_exports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    lines: list[str] = []
    summary = run_demo(out, minutes=0.05, device="cpu", say=lines.append, crop=128, train_overrides=QUICK)
    text = "\n".join(lines)
    for name in OUTPUTS:
        assert (out / name).exists(), name
        assert str(out / name) in text  # it says where everything went
    assert "before" in text and "after" in text and "matched F1 at IoU 0.5" in text
    assert summary["start_model"] == "nuclei-2d" and "bundled model: nuclei-2d" in text

    after = read_labels(out / "nuclei_2d_after_labels.tif")
    assert after.shape == (128, 128)
    assert open_image(out / "nuclei_2d_after_labels.tif").physical_pixel_sizes[1:] == pytest.approx((0.325, 0.325))
    table = pd.read_csv(out / "nuclei_2d_after_measurements.csv")
    assert sorted(table["label"]) == sorted(set(np.unique(after)) - {0})
    assert iio.imread(out / "nuclei_2d_after_overlay.png").shape == (128, 128, 3)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["before"]["matched"]["f1_at_0.5"] == summary["before"]["matched"]["f1_at_0.5"]
    assert set(saved["after"]) == {"pixel", "object", "matched"}
    assert (out / "model" / "weights.safetensors").is_file()

    # running again may replace the earlier demo's results (it marked them as its own) ...
    assert saved["written_by"] == "segtune demo"
    _check_out(out)
    # ... but anybody else's files are left alone
    other = tmp_path / "other"
    other.mkdir()
    (other / "nuclei_2d_after_labels.tif").write_bytes(b"somebody's data")
    with pytest.raises(FileExistsError, match="not from an earlier segtune demo"):
        run_demo(other, minutes=0.05, device="cpu", say=lambda line: None, crop=128, train_overrides=QUICK)
    assert (other / "nuclei_2d_after_labels.tif").read_bytes() == b"somebody's data"


def test_demo_command_refuses_a_zero_budget(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--minutes", "0"]) == 2
    assert "--minutes must be positive" in capsys.readouterr().err


def test_demo_gui_without_a_display_says_so_and_exits_2(tmp_path: Path) -> None:
    """Run as a user would over SSH: a fresh process with no DISPLAY; Qt must not be started
    (it would abort the process), the message must say what to do."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from segtune.cli import main; sys.exit(main(['demo', '--gui']))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "needs a display" in done.stderr and "xvfb-run" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    from segtune._cli.demo import display_problem

    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "darwin") is None
