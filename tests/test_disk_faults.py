"""Disks that say no: read-only, no permission, full, an output name that is a folder.

Each command must stop with one line naming the output and the reason, exit code 2, and leave
nothing behind (no partial file, no temporary). Read-only and full disks are small tmpfs mounts
(root only: skipped elsewhere, with the reason); "no permission" is a folder made immutable with
``chattr +i`` for root (who ignores permission bits), or a folder without write permission.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fuzz_corpus import tiny_model


def _mount_tmpfs(target: Path, options: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the read-only and full-disk cases run where tests run as root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")


@pytest.fixture
def read_only(tmp_path):
    target = tmp_path / "ro"
    _mount_tmpfs(target, "ro,size=1m")
    yield target
    subprocess.run(["umount", str(target)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    target = tmp_path / "full"
    _mount_tmpfs(target, "size=64k")
    filler = target / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * 65536)  # until the disk is full
    yield target
    subprocess.run(["umount", str(target)], check=False)


@pytest.fixture
def no_permission(tmp_path):
    target = tmp_path / "locked"
    target.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"root ignores permission bits and chattr +i fails here ({done.stderr.strip()})")
        yield target
        subprocess.run(["chattr", "-i", str(target)], check=False)
    else:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (256, 256)).astype(np.uint16)  # noise: its mask compresses badly
    tifffile.imwrite(root / "noise.tif", image)
    labels = np.zeros((256, 256), np.uint16)
    labels[20:60, 20:60] = 1
    labels[100:180, 120:200] = 2
    tifffile.imwrite(root / "noise_labels.tif", labels)
    return {"image": root / "noise.tif", "labels": root / "noise_labels.tif", "model": tiny_model(root / "model")}


def _run(argv: list[str]) -> tuple[int, str]:
    from segtune.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, stderr.getvalue()


def _commands(inputs: dict[str, Path], folder: Path) -> dict[str, list[str]]:
    train = [
        "train",
        "--images",
        str(inputs["image"]),
        "--labels",
        str(inputs["labels"]),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
        "--patch",
        "64",
        "64",
        "--base-channels",
        "4",
        "--depth",
        "2",
        "--val-fraction",
        "0",
        "--device",
        "cpu",
        "--no-amp",
        "--out",
        str(folder / "model"),
    ]
    return {
        "predict": ["predict", str(inputs["image"]), "--model", str(inputs["model"]), "--out", str(folder)],
        "measure": ["measure", "--labels", str(inputs["labels"]), "--out", str(folder / "table.csv")],
        "evaluate": [
            "evaluate",
            "--pred",
            str(inputs["labels"]),
            "--truth",
            str(inputs["labels"]),
            "--overlay",
            str(folder),
        ],
        "train": train,
    }


def _assert_refused(code: int, stderr: str, folder: Path, reason: str, before: set[str]) -> None:
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert code == 2, stderr
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert str(folder) in errors[0] and reason in errors[0], errors[0]
    assert {p.name for p in folder.iterdir()} == before  # no partial file, no temporary


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate", "train"])
def test_a_read_only_disk_is_one_line_and_leaves_nothing(inputs, read_only, command):
    code, stderr = _run(_commands(inputs, read_only)[command])
    _assert_refused(code, stderr, read_only, "read-only", set())


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate", "train"])
def test_a_folder_without_permission_is_one_line_and_leaves_nothing(inputs, no_permission, command):
    code, stderr = _run(_commands(inputs, no_permission)[command])
    _assert_refused(code, stderr, no_permission, "permission denied", set())


@pytest.mark.parametrize("command", ["predict", "measure", "evaluate", "train"])
def test_a_full_disk_is_one_line_and_leaves_nothing(inputs, full_disk, command):
    code, stderr = _run(_commands(inputs, full_disk)[command])
    _assert_refused(code, stderr, full_disk, "the disk is full", {"filler"})


def test_an_output_name_that_is_a_folder_is_refused(inputs, tmp_path):
    (tmp_path / "table.csv").mkdir()
    code, stderr = _run(_commands(inputs, tmp_path)["measure"] + ["--overwrite"])
    assert code == 2 and "table.csv: it is an existing folder" in stderr, stderr
    (tmp_path / "noise_labels.tif").mkdir()
    code, stderr = _run(_commands(inputs, tmp_path)["predict"] + ["--overwrite"])
    assert code == 2 and "noise_labels.tif: it is an existing folder" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise_labels.tif", "table.csv"]
    assert not any((tmp_path / "table.csv").iterdir()) and not any((tmp_path / "noise_labels.tif").iterdir())
