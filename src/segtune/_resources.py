"""Where the files shipped with the package live (sample data).

``src/segtune/sample_data`` links to the top-level ``sample_data/`` in a checkout and holds
the files themselves in an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

SAMPLE_DATA = Path(__file__).resolve().parent / "sample_data"


def sample_file(name: str) -> Path:
    """The path of a bundled sample file; FileNotFoundError naming it if the install lacks it."""
    path = SAMPLE_DATA / name
    if not path.exists():
        raise FileNotFoundError(f"sample file {path} is missing from the installation")
    return path
