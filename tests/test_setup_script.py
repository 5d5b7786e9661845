"""scripts/setup.sh and the README say which PyTorch build was installed, truthfully."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_torch_build_names_the_installed_build() -> None:
    said = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "torch_build.py")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert said.startswith(f"torch {torch.__version__}")
    if torch.version.cuda:
        assert f"CUDA {torch.version.cuda}" in said and "CPU-only build is much smaller" in said
    elif not torch.backends.mps.is_built():
        assert "CPU-only build" in said


def test_setup_script_installs_torch_from_the_index_the_user_gives_and_reports_it() -> None:
    script = (REPO / "scripts" / "setup.sh").read_text()
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "setup.sh")], check=True)  # it parses
    assert '--index-url "$TORCH_INDEX_URL"' in script  # the way PyTorch's install page selects the CPU build
    assert 'python -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"' in script  # and PyPI alone still works
    assert "scripts/torch_build.py" in script
    readme = (REPO / "README.md").read_text()
    assert "installs the CPU build" not in readme  # true only where a CPU wheel lies on disk
    assert "TORCH_INDEX_URL" in readme and "python scripts/torch_build.py" in readme
