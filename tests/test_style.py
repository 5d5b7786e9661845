"""The code keeps one format and its lint rules: ``ruff format`` and ``ruff check`` (the version
pinned in the test extra, so that CI formats as the developers do; line length 120, no ignores)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "scripts"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *PATHS], cwd=REPO, capture_output=True, text=True)


def test_code_is_formatted():
    result = _ruff("format", "--check")
    assert result.returncode == 0, f"run `ruff format {' '.join(PATHS)}`:\n{result.stdout}{result.stderr}"


def test_lint_rules_hold():
    result = _ruff("check")
    assert result.returncode == 0, result.stdout + result.stderr
