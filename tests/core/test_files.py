"""The one atomic writer: permissions, races, stale temporaries, kills, refusing disks."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segtune.core.files import (
    OutputError,
    atomic_folder,
    atomic_write,
    atomic_write_bytes,
    remove_stale_temporaries,
    temporary_path,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_kind_of_output_gets_the_users_normal_permissions(tmp_path, umask_022):
    from segtune.core.io import write_labels
    from segtune.core.measure import save_table
    from segtune.core.metrics import save_overlay_png
    from segtune.core.models.store import default_config, save_model
    from segtune.core.models.unet import UNet
    from segtune.core.rois import write_imagej_rois

    labels = np.zeros((32, 32), np.uint16)
    labels[4:12, 4:12] = 1
    labels[20:28, 18:30] = 2
    written = [
        write_labels(tmp_path / "labels.tif", labels),
        save_table(pd.DataFrame({"label": [1, 2]}), tmp_path / "table.csv"),
        save_overlay_png(tmp_path / "overlay.png", np.zeros((8, 8, 3), np.uint8)),
        write_imagej_rois(tmp_path / "rois.zip", labels),
    ]
    model = UNet(in_channels=1, out_channels=1, depth=2, base_channels=4)
    folder = save_model(model, default_config(model.architecture), tmp_path / "model")
    written += [folder / "config.json", folder / "weights.safetensors"]
    for path in written:
        assert _mode(path) == 0o644, path
    assert _mode(folder) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _race(write_as: Callable[[str, threading.Barrier], None]) -> dict[str, object]:
    """Two threads call ``write_as(name, barrier)``; what each ended with: "won" or its FileExistsError."""
    both_written = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def writer(name: str) -> None:
        try:
            write_as(name, both_written)
            outcomes[name] = "won"
        except FileExistsError as e:
            outcomes[name] = e

    threads = [threading.Thread(target=writer, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(
        o if o == "won" else "lost" for o in outcomes.values() if o == "won" or isinstance(o, FileExistsError)
    ) == ["lost", "won"]
    return outcomes


def test_two_writers_racing_without_overwrite_exactly_one_wins(tmp_path):
    target = tmp_path / "out.tif"

    def write_as(name: str, both_written: threading.Barrier) -> None:
        def write(temporary: Path) -> None:
            temporary.write_text(name)
            both_written.wait(timeout=10)  # both have passed the existence check by now

        atomic_write(target, write)

    outcomes = _race(write_as)
    winner = next(n for n, o in outcomes.items() if o == "won")
    loser = next(o for o in outcomes.values() if o != "won")
    assert target.read_text() == winner  # the winner's whole file, not a mix
    assert str(target) in str(loser) and "another writer" in str(loser)
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]  # no temporaries left


def test_two_folder_writers_racing_exactly_one_wins(tmp_path):
    target = tmp_path / "model"

    def write_as(name: str, both_built: threading.Barrier) -> None:
        with atomic_folder(target) as temporary:
            (temporary / "who").write_text(name)
            both_built.wait(timeout=10)

    outcomes = _race(write_as)
    assert (target / "who").read_text() == next(n for n, o in outcomes.items() if o == "won")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from segtune.core.files import atomic_write

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(b"half a file")
            f.flush()
            Path(sys.argv[2]).write_text(str(temporary))
            time.sleep(60)

    atomic_write(sys.argv[1], write)
    """
)


def test_kill_9_during_the_write_leaves_no_final_file_and_the_next_write_cleans_up(tmp_path):
    target = tmp_path / "cells_labels.tif"
    marker = tmp_path.parent / f"{tmp_path.name}.marker"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    process = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert time.monotonic() < deadline and process.poll() is None, "the writer never started writing"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    temporary = Path(marker.read_text())
    assert not target.exists()
    assert temporary.exists() and temporary.parent == tmp_path  # left beside the target ...

    atomic_write_bytes(target, b"whole", overwrite=False)  # ... and the next write removes it
    assert target.read_bytes() == b"whole"
    assert not temporary.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cells_labels.tif"]


def test_only_our_own_stale_temporaries_are_removed(tmp_path):
    target = tmp_path / "a.csv"
    # a live process's temporary (ours), a dead one's, another file's, and a user's dot file
    live = temporary_path(target)
    dead_pid = _dead_pid()
    dead = temporary_path(target, pid=dead_pid)
    other = temporary_path(tmp_path / "b.csv", pid=dead_pid)
    users = tmp_path / ".a.csv.backup"
    for p in (live, dead, other, users):
        p.write_text("x")
    assert remove_stale_temporaries(target) == [dead]
    assert live.exists() and other.exists() and users.exists() and not dead.exists()


def test_a_refusing_disk_is_an_output_error_naming_the_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(OutputError, match=r"cannot write .*out: it is an existing folder"):
        atomic_write_bytes(folder, b"x")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        atomic_write_bytes(blocker / "sub" / "x.csv", b"x")
    with pytest.raises(OutputError, match="it is an existing file, not a folder"):
        with atomic_folder(blocker):
            pass


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_api_raises_one_documented_type_per_kind_of_mistake(tmp_path):
    from segtune.core.io import write_labels
    from segtune.core.measure import save_table
    from segtune.core.models.unet import UNet
    from segtune.core.predict import predict

    (tmp_path / "taken.tif").mkdir()
    with pytest.raises(OutputError, match="taken.tif: it is an existing folder"):
        write_labels(tmp_path / "taken.tif", np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError, match="labels are empty"):
        write_labels(tmp_path / "empty.tif", np.zeros((0, 4), np.uint8))
    (tmp_path / "t.csv").mkdir()
    with pytest.raises(OutputError, match="t.csv: it is an existing folder"):
        save_table(pd.DataFrame({"a": [1]}), tmp_path / "t.csv", overwrite=True)
    with pytest.raises(ValueError, match="G parameters"):
        UNet(base_channels=100000)  # refused before a byte is allocated
    model = UNet(depth=1, base_channels=2)
    config = {"architecture": model.architecture, "head": "binary"}
    for array, message in [
        (np.zeros((0, 0)), "empty"),
        (np.zeros((0, 7)), "empty"),
        (np.array([["a", "b"], ["c", "d"]]), "text"),
        (np.ones((8, 8), complex), "complex"),
        (np.full((8, 8), np.inf), "64 NaN or infinite"),
    ]:
        with pytest.raises(ValueError, match=message):
            predict(model, array, config=config)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
