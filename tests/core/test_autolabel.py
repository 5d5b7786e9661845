"""Auto-labels: the filter's hand cases, local Otsu against brute force, the recipe on real nuclei, files and CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from segtune.cli import main
from segtune.core.autolabel import (
    AutolabelSettings,
    autolabel_files,
    autolabel_image,
    dataset_filter,
    diameter_filter,
    local_otsu,
)
from segtune.core.io import open_image, read_labels

# --- dataset filter ---------------------------------------------------------------------------


def test_dataset_filter_drops_lowest_quarter_and_majority_foreground() -> None:
    fractions = [0.20, 0.05, 0.30, 0.01, 0.70, 0.10, 0.15, 0.51]
    reasons = dataset_filter(fractions)
    # floor(0.25 * 8) = 2 lowest: 0.01 (index 3) and 0.05 (index 1); above half: indices 4 and 7
    assert sorted(i for i, r in enumerate(reasons) if "lowest_foreground" in r) == [1, 3]
    assert [i for i, r in enumerate(reasons) if "more_foreground_than_background" in r] == [4, 7]
    assert [i for i, r in enumerate(reasons) if not r] == [0, 2, 5, 6]


def test_dataset_filter_counts_ties_exactly_half_and_small_sets() -> None:
    # ties broken by order: of three equal lowest, the first two go (floor(0.25 * 8) = 2)
    assert dataset_filter([0.1, 0.1, 0.1, 0.2, 0.3, 0.3, 0.4, 0.4]) == [["lowest_foreground"]] * 2 + [[]] * 6
    # exactly half foreground is not "more foreground than background"
    assert dataset_filter([0.5, 0.2, 0.3], lowest_fraction=0.0) == [[], [], []]
    # three images: floor(0.75) = 0 dropped for low foreground
    assert dataset_filter([0.0, 0.2, 0.3]) == [[], [], []]
    # an image can be dropped for both reasons
    assert (
        dataset_filter([0.9, 0.95, 0.97, 0.99])
        == [["lowest_foreground", "more_foreground_than_background"]] + [["more_foreground_than_background"]] * 3
    )
    with pytest.raises(ValueError, match="lowest_fraction"):
        dataset_filter([0.1], lowest_fraction=1.0)


# --- the steps --------------------------------------------------------------------------------


def test_diameter_filter_uses_equivalent_diameter_inclusive() -> None:
    mask = np.zeros((120, 120), bool)
    mask[2:4, 2:4] = True  # area 4: d = 2.26
    mask[10:20, 10:20] = True  # area 100: d = 11.28
    mask[40:100, 40:100] = True  # area 3600: d = 67.7
    mask[30, 5:30] = True  # a 25-pixel line: d = 5.64 exactly at the bound below
    mask[31, 29] = True  # diagonal neighbour: joins the line only under 8-connectivity (area 26)
    d_line = math.sqrt(4 * 26 / math.pi)
    kept = diameter_filter(mask, d_line, 30)
    labels, n = ndi.label(kept)
    assert n == 2
    assert kept[10:20, 10:20].all() and kept[30, 5:30].all() and kept[31, 29]
    assert not kept[2:4, 2:4].any() and not kept[40:100, 40:100].any()
    assert not diameter_filter(mask, d_line + 1e-6, 30)[30].any()


def _brute_force_otsu(values: np.ndarray) -> int:
    """The level t (0..255) maximising between-class variance of {v <= t} vs {v > t}."""
    hist = np.bincount(values, minlength=256).astype(float)
    best, best_t = -1.0, 0
    for t in range(256):
        w0, w1 = hist[: t + 1].sum(), hist[t + 1 :].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0 = (hist[: t + 1] * np.arange(t + 1)).sum() / w0
        m1 = (hist[t + 1 :] * np.arange(t + 1, 256)).sum() / w1
        between = w0 * w1 * (m0 - m1) ** 2
        if between > best:
            best, best_t = between, t
    return best_t


def test_local_otsu_matches_brute_force_in_the_window() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 60, (41, 41)).astype(np.uint8)
    image[10:25, 12:30] += 120  # a bright object: bimodal windows around its edge
    radius = 6
    mask = local_otsu(image, radius)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    for y, x in [(20, 20), (10, 12), (25, 30), (17, 8), (30, 26)]:
        window = image[y - radius : y + radius + 1, x - radius : x + radius + 1][disk]
        threshold = _brute_force_otsu(window)
        # the rank filter may pick a neighbouring level on a flat optimum; agree away from it
        if abs(int(image[y, x]) - threshold) > 1:
            assert mask[y, x] == (image[y, x] > threshold), (y, x, image[y, x], threshold)
    assert mask[10:12, 14:28].all()  # object rows at its edge are above the bimodal local threshold
    assert not mask[5:8, 14:28].any()  # background rows just outside are below it


def test_autolabel_finds_real_nuclei(nuclei_dir: Path) -> None:
    from skimage.transform import downscale_local_mean

    image = np.asarray(open_image(nuclei_dir / "images" / "26.png").data[0, 0, 0], dtype=np.float32)
    truth = read_labels(nuclei_dir / "labels" / "26.png") > 0
    # a quarter of the size puts these ~85 px nuclei in the default 5-30 px diameter range
    image = downscale_local_mean(image, (4, 4))
    truth = downscale_local_mean(truth.astype(float), (4, 4)) > 0.5
    mask = autolabel_image(image)
    f1 = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert f1 > 0.65, f1
    # every object obeys the diameter filter, and holes are filled
    labels, _ = ndi.label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())[1:]
    assert np.sqrt(4 * areas / np.pi).min() >= 5 and np.sqrt(4 * areas / np.pi).max() <= 30 + 1e-9
    assert (ndi.binary_fill_holes(mask) == mask).all()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_diameter"):
        AutolabelSettings(min_diameter=40, max_diameter=30)
    with pytest.raises(ValueError, match="unknown auto-label settings"):
        autolabel_image(np.zeros((8, 8)), diameter=3)
    assert AutolabelSettings(max_diameter=22.4).radius == 22
    assert AutolabelSettings(otsu_radius=9).radius == 9


# --- files and the command line ----------------------------------------------------------------


def _blob_image(n_blobs: int, seed: int, dense: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 5, (96, 96))
    yy, xx = np.mgrid[:96, :96]
    if dense:  # a packed grid of 9 px discs 1 px apart: far more foreground than background
        centres = [(y, x) for y in range(5, 96, 10) for x in range(5, 96, 10)]
    else:
        centres = [(14 + 22 * (i // 4), 14 + 22 * (i % 4)) for i in range(n_blobs)]
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= (4.4 if dense else 6) ** 2] += 100
    return np.clip(image, 0, 65535).astype(np.uint16)


def test_autolabel_files_drops_exactly_the_expected_images(tmp_path: Path) -> None:
    blobs = {"a": 5, "b": 1, "c": 8, "d": 2, "e": 6, "f": 7, "g": 4, "h": None}  # h: dense
    paths = []
    for i, (name, n) in enumerate(blobs.items()):
        path = tmp_path / "in" / f"{name}.tif"
        path.parent.mkdir(exist_ok=True)
        tifffile.imwrite(path, _blob_image(n or 0, seed=i, dense=n is None))
        paths.append(path)
    out = tmp_path / "out"
    events = []
    report = autolabel_files(paths, out, settings=AutolabelSettings(clahe_kernel=48), progress=events.append)
    assert [e.done for e in events] == list(range(1, 9))
    by_name = {p.name: p for p in report.planes}
    for name, n in blobs.items():
        if n is not None:
            # local Otsu splits pure-noise windows too: a stray noise object may survive
            assert n <= by_name[name].objects <= n + 1, (name, by_name[name].objects)
    assert by_name["h"].foreground_fraction > 0.5
    # 8 images: the 2 with fewest blobs (b: 1, d: 2) and the dense one are dropped
    assert {p.name: p.reasons for p in report.dropped} == {
        "b": ["lowest_foreground"],
        "d": ["lowest_foreground"],
        "h": ["more_foreground_than_background"],
    }
    written = sorted(p.name for p in out.glob("*_labels.tif"))
    assert written == [f"{n}_labels.tif" for n in "acefg"]
    labels = read_labels(out / "a_labels.tif")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    assert ndi.label(labels)[1] == 5
    saved = json.loads((out / "autolabel_report.json").read_text())
    assert saved["dropped"] == 3 and saved["settings"]["clahe_kernel"] == 48
    assert "b,b,0,0" in (out / "autolabel_report.csv").read_text().replace(str(paths[1]), "b")
    with pytest.raises(FileExistsError, match="a_labels.tif"):
        autolabel_files(paths, out, settings=AutolabelSettings(clahe_kernel=48))


def test_cli_two_channel_czi_writes_labels_and_the_other_channel(czi_dir: Path, tmp_path: Path, capsys) -> None:
    czi = czi_dir / "CD_s_1_t_3_c_2_z_5.czi"
    out = tmp_path / "auto"
    code = main(
        [
            "autolabel",
            "--images",
            str(czi),
            "--out",
            str(out),
            "--channel",
            "0",
            "--export-channel",
            "1",
            "--diameter",
            "3",
            "30",
            "--window",
            "12",
            "--stretch",
            "5",
            "98",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    # 15 planes (T=3 x Z=5): floor(0.25 * 15) = 3 dropped for low foreground
    assert "auto-labelled 15 image(s): kept 12, dropped 3" in text
    report = json.loads((out / "autolabel_report.json").read_text())
    kept = [p for p in report["images"] if p["kept"]]
    assert len(kept) == 12 and report["settings"]["stretch"] == [5.0, 98.0]
    data = open_image(czi).data
    first = kept[0]
    exported = tifffile.imread(out / first["image_file"])
    np.testing.assert_array_equal(exported, np.asarray(data[first["t"], 1, first["z"]]))
    labels = open_image(out / first["labels_file"])
    assert labels.physical_pixel_sizes.X == pytest.approx(open_image(czi).physical_pixel_sizes.X)
    assert main(["autolabel", "--images", str(czi), "--out", str(out), "--channel", "2"]) == 2
