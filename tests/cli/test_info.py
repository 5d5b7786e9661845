"""`segtune info`, `--version`, placeholders, and the one-line error with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from segtune import __version__
from segtune.cli import main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_info_on_real_czi(czi_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json", str(czi_dir / "CD_s_1_t_3_c_2_z_5.czi")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"] == {"T": 3, "C": 2, "Z": 5, "Y": 170, "X": 240}
    assert info["channel_names"] == ["LED555", "LED470"]
    assert info["physical_pixel_sizes_um"]["Z"] == pytest.approx(0.32)
    assert main(["info", str(czi_dir / "mosaic_test.czi")]) == 0
    assert "Y=624, X=1756" in capsys.readouterr().out


def test_corrupt_file_exits_2_with_one_line_and_no_traceback(czi_dir: Path, tmp_path: Path) -> None:
    data = (czi_dir / "s_1_t_1_c_1_z_1.czi").read_bytes()
    broken = tmp_path / "broken.czi"
    broken.write_bytes(data[: len(data) // 2])
    result = subprocess.run([sys.executable, "-m", "segtune.cli", "info", str(broken)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "broken.czi" in lines[0] and "Traceback" not in result.stderr
